"""``python -m hai.bench_submit``: jobs submitted per second through the API, before and
after issue 17's submit checks.

Issue 17 made ``Submit`` check more (the entrypoint split like a shell command, NUL
characters, bounded counts, the caller's role). This starts a real ``hai server`` of the
baseline commit (``--baseline``, a ``git worktree`` of it on ``PYTHONPATH``) and one of this
tree, the same way, each on a free port with a new state folder, and submits the same jobs
to each through the gRPC API as a plain user: first from one client, then from several in
parallel threads. Both sides are driven by this tree's client, so only the servers differ.
It prints submits/s and p50/p99 latency of each side with their ratio.

It also runs ``hai.bench``'s scheduling simulation on both trees (the issue asks that it be
unchanged within noise) and prints its utilisation and pass latencies side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.table import Table

from hai.rpc import ApiClient

ROOT = Path(__file__).resolve().parents[2]
"""The repository this module is in: its tree is the "after" side."""
BASELINE = "d197472"
"""The commit before issue 17's submit checks (fs3.retry's fast first try)."""
START_TIMEOUT_S = 60.0


class BenchError(Exception):
    """A side could not be measured; the message is the one line to print."""


@dataclass(frozen=True)
class Submits:
    """What one side's server did with one batch of submits."""

    clients: int
    per_s: float
    p50_ms: float
    p99_ms: float


def spec(i: int) -> dict:
    """A job as users write them: a quoted argument, a few variables, two 8-GPU nodes."""
    return {
        "name": f"bench-{i}",
        "entrypoint": "python -m deepseek.train --config 'configs/v3 small.yaml'",
        "arguments": ["--steps", "1000", "--lr", "3e-4"],
        "environment": {"OMP_NUM_THREADS": "8", "NCCL_DEBUG": "WARN"},
        "nodes": 2,
        "gpus_per_node": 8,
        "priority": "NORMAL",
        "max_run_time": 86400,
    }


def tree_env(tree: Path) -> dict[str, str]:
    """The environment that makes ``python`` import hai (and fs3, ...) from ``tree``.

    PYTHONPATH comes before the editable install's finder, which Python consults last. HAI_
    variables of the caller are left out, so both sides run on the defaults, except that
    the scheduling pass waits an hour: a pass over the queued jobs would share the server's
    CPU with the submits being timed.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAI_")}
    paths = [str(tree), str(tree / "platform"), str(tree / "models")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HAI_SCHEDULER__PASS_INTERVAL_S"] = "3600"
    return env


@contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """A detached ``git worktree`` of ``revision`` in a temporary folder, removed after."""
    if shutil.which("git") is None:
        raise BenchError("the baseline needs git, which is not installed; use --baseline none")
    found = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise BenchError(
            f"no commit {revision!r} in {ROOT} (a shallow clone?); fetch it or use --baseline none"
        )
    with tempfile.TemporaryDirectory(prefix="hai-bench-baseline-") as folder:
        tree = Path(folder) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(tree)]
            + [found.stdout.strip()],
            check=True,
            capture_output=True,
        )
        try:
            yield tree
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                capture_output=True,
            )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(tree: Path) -> Iterator[tuple[str, str]]:
    """A ``hai server`` of ``tree`` on a free port with a new state folder; yields its
    address and the token of a plain user it knows."""
    with (
        tempfile.TemporaryDirectory(prefix="hai-bench-submit-") as folder,
        open(Path(folder) / "server.log", "w+b") as log,
    ):
        state = Path(folder) / "state"
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "hai", "server", "--state-dir", str(state)]
            + ["--port", str(port), "--metrics-port", "0"],
            env=tree_env(tree),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        address = f"127.0.0.1:{port}"
        try:
            admin = ApiClient(address, _admin_token(proc, state, log), timeout_s=30)
            try:
                token = admin.call("AddUser", name="bench", role="user")
            finally:
                admin.close()
            yield address, token
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _admin_token(proc: subprocess.Popen, state: Path, log: IO[bytes]) -> str:
    """Waits for the server to serve (it writes server.json once its port is bound)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (state / "server.json").exists():
        if proc.poll() is not None:
            log.seek(0)
            last = log.read().decode(errors="replace").strip().splitlines()[-1:]
            raise BenchError(f"hai server exited with {proc.returncode}: {' '.join(last)}")
        if time.monotonic() > deadline:
            raise BenchError(f"hai server did not start within {START_TIMEOUT_S:g}s")
        time.sleep(0.05)
    return (state / "token").read_text().strip()


def submit_batch(address: str, token: str, jobs: int, clients: int, first: int) -> Submits:
    """Submits ``jobs`` jobs from ``clients`` threads, each with its own channel."""
    latencies: list[float] = []
    lock = threading.Lock()
    share = [range(first + k, first + jobs, clients) for k in range(clients)]
    channels = [ApiClient(address, token, timeout_s=30) for _ in range(clients)]

    def work(client: ApiClient, numbers: range) -> None:
        mine = []
        for i in numbers:
            began = time.perf_counter()
            client.call("Submit", spec=spec(i))
            mine.append(time.perf_counter() - began)
        with lock:
            latencies.extend(mine)

    threads = [
        threading.Thread(target=work, args=pair) for pair in zip(channels, share, strict=True)
    ]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    for client in channels:
        client.close()
    if len(latencies) != jobs:
        raise BenchError(f"{jobs - len(latencies)} of {jobs} submits failed; see the traceback")
    ms = sorted(x * 1e3 for x in latencies)
    p99 = statistics.quantiles(ms, n=100)[98] if len(ms) > 1 else ms[0]
    return Submits(clients, jobs / wall, statistics.median(ms), p99)


def measure_submits(tree: Path, jobs: int, clients: int) -> list[Submits]:
    """One server of ``tree``: a warm-up, then ``jobs`` submits from 1 and from ``clients``."""
    with server(tree) as (address, token):
        submit_batch(address, token, min(jobs, 20), 1, 0)  # connections, imports, first inserts
        return [
            submit_batch(address, token, jobs, n, (k + 1) * jobs)
            for k, n in enumerate(sorted({1, clients}))
        ]


def medians(rounds: list[list[Submits]]) -> list[Submits]:
    """Each batch's figures as the median over the rounds."""
    return [
        Submits(
            batch[0].clients,
            statistics.median(b.per_s for b in batch),
            statistics.median(b.p50_ms for b in batch),
            statistics.median(b.p99_ms for b in batch),
        )
        for batch in zip(*rounds, strict=True)
    ]


# Run in a subprocess on each tree: hai.bench's simulation and pass timing, as JSON.
_POLICY = """
import json, statistics, sys
from hai.bench import pass_latency, policies, summarize
from hai.sim import simulate
from hai.workload import generate
jobs, nodes, pending, reps = map(int, sys.argv[1:5])
trace = generate(jobs, nodes, 1.3, 0)
out = {name: summarize(simulate(trace, nodes, config))
       for name, config in policies(1800.0).items()}
out["pass_10k_ms"] = statistics.median(pass_latency(nodes, pending, reps, 0)) * 1e3
print(json.dumps(out))
"""


def measure_policy(tree: Path, jobs: int, nodes: int, pending: int, reps: int) -> dict:
    """``hai.bench``'s figures of ``tree``'s scheduler, from a subprocess."""
    args = [sys.executable, "-c", _POLICY, str(jobs), str(nodes), str(pending), str(reps)]
    done = subprocess.run(args, env=tree_env(tree), capture_output=True, text=True)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:]
        raise BenchError(f"hai.bench of {tree} failed: {' '.join(last)}")
    return json.loads(done.stdout)


def _ratio(after: float, before: float | None) -> str:
    return f"{after / before:.2f}x" if before else "-"


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def submit_table(before: list[Submits] | None, after: list[Submits], label: str) -> Table:
    table = Table(title=f"hai.bench_submit: {label}")
    for column in ("clients", "metric", "before", "after", "after/before"):
        table.add_column(column, justify="left" if column in ("clients", "metric") else "right")
    for k, ours in enumerate(after):
        theirs = before[k] if before else None
        for metric, field, fmt in (
            ("submits/s", "per_s", ".0f"),
            ("p50 ms", "p50_ms", ".2f"),
            ("p99 ms", "p99_ms", ".2f"),
        ):
            old = getattr(theirs, field) if theirs else None
            new = getattr(ours, field)
            table.add_row(
                str(ours.clients), metric, _cell(old, fmt), _cell(new, fmt), _ratio(new, old)
            )
    return table


def policy_table(before: dict | None, after: dict, label: str) -> Table:
    table = Table(title=f"hai.bench (scheduling policy): {label}")
    for column in ("policy", "metric", "before", "after", "after/before"):
        table.add_column(column, justify="left" if column in ("policy", "metric") else "right")
    for name, ours in after.items():
        if name == "pass_10k_ms":
            continue
        theirs = before.get(name) if before else None
        for metric, field, fmt in (
            ("GPU util %", "util", ".2f"),
            ("pass p50 ms", "pass_p50_ms", ".3f"),
        ):
            scale = 100 if field == "util" else 1
            old = theirs[field] * scale if theirs else None
            new = ours[field] * scale
            table.add_row(name, metric, _cell(old, fmt), _cell(new, fmt), _ratio(new, old))
    old = before["pass_10k_ms"] if before else None
    new = after["pass_10k_ms"]
    table.add_row(
        "pending queue", "pass median ms", _cell(old, ".2f"), _cell(new, ".2f"), _ratio(new, old)
    )
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hai.bench_submit", description=__doc__)
    parser.add_argument("--jobs", type=int, default=500, help="submits per batch")
    parser.add_argument("--clients", type=int, default=8, help="threads of the parallel batch")
    parser.add_argument(
        "--baseline",
        default=BASELINE,
        help="commit to compare with ('none': this tree only) [default: %(default)s]",
    )
    parser.add_argument("--rounds", type=int, default=3, help="batches per side, alternating")
    parser.add_argument("--policy-jobs", type=int, default=6000, help="hai.bench's trace jobs")
    parser.add_argument("--policy-nodes", type=int, default=1250, help="hai.bench's nodes")
    parser.add_argument("--policy-pending", type=int, default=10_000, help="hai.bench's queue")
    parser.add_argument(
        "--quick", action="store_true", help="smoke-sized: 50 jobs, 1 round, a small trace"
    )
    args = parser.parse_args(argv)
    if min(args.jobs, args.clients, args.rounds) < 1:
        parser.error("--jobs, --clients and --rounds must be at least 1")
    if args.quick:
        args.jobs, args.rounds = 50, 1
        args.policy_jobs, args.policy_nodes, args.policy_pending = 200, 64, 500
    sizes = (args.policy_jobs, args.policy_nodes, args.policy_pending, 5)

    console = Console(width=120)
    trees = {"after": ROOT}
    try:
        with ExitStack() as stack:
            if args.baseline != "none":
                trees = {"before": stack.enter_context(worktree(args.baseline)), **trees}
            # Rounds alternate the sides, so a slow spell of a shared machine hits both.
            rounds: dict[str, list[list[Submits]]] = {side: [] for side in trees}
            for k in range(args.rounds):
                for side, tree in trees.items():
                    console.log(f"round {k + 1}/{args.rounds}: submits to {side}")
                    rounds[side].append(measure_submits(tree, args.jobs, args.clients))
            policy = {}
            for side, tree in trees.items():
                console.log(f"hai.bench on {side}")
                policy[side] = measure_policy(tree, *sizes)
    except BenchError as err:
        raise SystemExit(f"hai.bench_submit: {err}") from None
    submits = {side: medians(each) for side, each in rounds.items()}
    label = f"before = {args.baseline}, after = this tree"
    title = f"{args.jobs} submits per batch, medians of {args.rounds} rounds, {label}"
    console.print(submit_table(submits.get("before"), submits["after"], title))
    console.print(policy_table(policy.get("before"), policy["after"], label))


if __name__ == "__main__":
    main()
