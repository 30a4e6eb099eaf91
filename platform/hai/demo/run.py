"""``hai demo``: the whole stack on one machine, from data to a preempted and resumed job.

Starts a local fs3 cluster and platform (:mod:`hai.demo.stack`), plays the scenario
(:mod:`hai.demo.scenario`) with live progress, then prints the summary, writes it as
JSON beside the loss-curve picture, and stops every process it started.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

from hai.demo.hosts import HostsStack
from hai.demo.progress import Progress
from hai.demo.report import Summary, plot, summarize, summary_rows
from hai.demo.scenario import CHECKPOINT_URL, DemoOptions, Scenario
from hai.demo.stack import DemoStack


class _Interrupts:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt, and are remembered: one that lands inside
    a blocking gRPC call can be lost there, so the scenario's wait loop asks again."""

    def __init__(self) -> None:
        self.received = threading.Event()

    def __call__(self, signum: int, frame: object) -> None:
        self.received.set()
        raise KeyboardInterrupt(f"signal {signum}")


def run_demo(
    root: Path,
    options: DemoOptions,
    nodes: int = 2,
    gpus_per_node: int = 2,
    port: int | None = None,
    keep: bool = False,
    out: TextIO = sys.stdout,
    hosts: bool = False,
) -> Summary:
    """Runs the demo in ``root``; returns its summary (also in ``root/demo/summary.json``).
    With ``hosts`` its services run on test hosts and a storage host is cut off midway
    (:mod:`hai.demo.hosts`).

    Raises:
        DemoError: the folder, port or a job failed; the message says which and why.
        KeyboardInterrupt: Ctrl-C or SIGTERM; everything started is stopped first.
    """
    started = time.monotonic()
    interrupts = _Interrupts()
    previous = {sig: signal.signal(sig, interrupts) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        kind = HostsStack if hosts else DemoStack
        with kind(root, nodes, gpus_per_node, port, keep) as stack:
            print(
                f"hai demo: fs3 at {stack.fs3.address}, platform at "  # type: ignore[union-attr]
                f"{stack.platform.address}, state in {stack.root}",
                file=out,
                flush=True,
            )  # type: ignore[union-attr]
            progress = Progress()
            disturb = stack.disturb if isinstance(stack, HostsStack) else None
            scenario = Scenario(
                stack,
                options,
                on_change=progress.update,
                disturb=disturb,
                interrupted=interrupts.received.is_set,
            )
            try:
                with progress:
                    outcome = scenario.run()
                summary = summarize(outcome, time.monotonic() - started)
                if isinstance(stack, HostsStack):
                    summary.cut_off = stack.cut_report(scenario.fs, CHECKPOINT_URL)
            finally:
                scenario.close()
            picture = plot(outcome, stack.work_dir / "loss.png")
            (stack.work_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=1))
            _print_summary(summary, picture, stack, out)
            return summary
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _print_summary(summary: Summary, picture: Path, stack: DemoStack, out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("", "", title="hai demo: summary", show_header=False)
    for name, value in summary_rows(summary):
        table.add_row(name, value)
    console = Console(file=out, width=110)
    console.print(table)
    console.print(f"loss curve: {picture}")
    hai = stack.hai_dir
    if isinstance(stack, HostsStack):
        console.print(f"every process stopped and the test hosts removed; logs in {hai}")
    elif stack.keep:
        console.print(
            f"clusters kept running; look around with\n"
            f"  HAI_STATE_DIR={hai} hai ls --all; HAI_STATE_DIR={hai} hai logs 1\n"
            f"  FS3_CLUSTER={stack.fs3.address} hai fs3 ls -lR fs3:///checkpoints\n"  # type: ignore[union-attr]
            f"and stop them with `hai demo --down {stack.root}`"
        )
    else:
        console.print(
            f"every process stopped; logs in {hai}/logs, `hai demo --keep` leaves the "
            "clusters up for hai ls / hai logs / hai fs3 ls"
        )
