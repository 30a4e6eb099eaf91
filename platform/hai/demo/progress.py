"""Live progress of the demo: a table that redraws on a terminal, log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from hai.demo.scenario import Scenario, priority_name


def _job_line(scenario: Scenario) -> list[tuple[str, ...]]:
    rows = []
    for job in scenario.jobs:
        runs = job.detail["runs"]
        run = runs[-1] if runs else None
        where = ",".join(run["nodes"]) if run else "-"
        steps = job.metrics.of("step")
        loss = f"{steps[-1]['loss']:.3f}" if steps else "-"
        priority = priority_name(job.detail["job"]["priority"])
        step = str(job.metrics.last_step)
        attempt = str(run["attempt"]) if run else "-"
        rows.append((str(job.id), job.name, priority, job.state, attempt, where, step, loss))
    return rows


COLUMNS = ("job", "name", "priority", "state", "run", "nodes", "step", "loss")


class Progress:
    """Shows the scenario's jobs as it runs; use as a context manager around ``run``."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.live = None
        self._last: dict[str, tuple[str, ...]] = {}
        self._started = time.monotonic()

    def __enter__(self) -> Progress:
        if self.stream.isatty():
            from rich.console import Console
            from rich.live import Live

            self.live = Live(console=Console(file=self.stream), refresh_per_second=4)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def update(self, scenario: Scenario) -> None:
        rows = _job_line(scenario)
        if self.live is not None:
            from rich.table import Table

            table = Table(*COLUMNS, title=f"hai demo ({time.monotonic() - self._started:.0f} s)")
            for row in rows:
                table.add_row(*row)
            self.live.update(table)
            return
        for row in rows:
            job, state, step = row[0], row[3], int(row[6])
            before = self._last.get(job)
            # A line when a job changes state or passes another 10 steps.
            if before is None or before[3] != state or step // 10 > int(before[6]) // 10:
                line = (
                    f"hai demo: job {job} {row[1]} ({row[2]}): {state}, run {row[4]} on "
                    f"{row[5]}, step {step}, loss {row[7]}"
                )
                print(line, file=self.stream, flush=True)
                self._last[job] = row
