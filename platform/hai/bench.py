"""``python -m hai.bench``: the scheduling policy on a simulated Fire-Flyer 2 cluster.

Runs one synthetic trace (:mod:`hai.workload`) through :mod:`hai.sim` three times, with the
FIFO baseline (no preemption, no backfill), our priority policy with preemption, and ours
with same-priority time-slicing, and prints utilisation, job completion times, queueing
delay, preemptions and scheduling pass latency side by side. A separate measurement times
one pass over 10,000 pending jobs on a full cluster, the issue's 100 ms target.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from rich.console import Console
from rich.table import Table

from hai.config import PolicyConfig
from hai.policy import NodeView, PendingView, RunningView, schedule
from hai.sim import SimResult, simulate
from hai.workload import TraceJob, generate

NO_QUOTAS = {50: None, 40: None, 30: None, 20: None, 10: None}
HIGH = 40
"""Jobs at this level and above count as high priority in the JCT columns."""


def policies(time_slice_s: float) -> dict[str, PolicyConfig]:
    return {
        "FIFO (no preemption)": PolicyConfig(
            order="fifo", preemption=False, backfill=False, default_quotas=NO_QUOTAS
        ),
        "priority + preemption (ours)": PolicyConfig(min_run_s=600.0, default_quotas=NO_QUOTAS),
        "ours + time-slicing": PolicyConfig(
            min_run_s=600.0, time_slice_s=time_slice_s, default_quotas=NO_QUOTAS
        ),
    }


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


def summarize(result: SimResult) -> dict[str, float]:
    jct = [done - t.submit for t, done in result.jobs]
    high = [done - t.submit for t, done in result.jobs if t.priority >= HIGH]
    wait = [done - t.submit - t.duration for t, done in result.jobs]
    high_wait = [done - t.submit - t.duration for t, done in result.jobs if t.priority >= HIGH]
    lat = result.pass_latencies_s
    return {
        "util": result.utilisation,
        "jct_mean_h": statistics.fmean(jct) / 3600,
        "jct_p95_h": _p95(jct) / 3600,
        "jct_high_p95_h": _p95(high) / 3600,
        "wait_mean_h": statistics.fmean(wait) / 3600,
        "wait_high_mean_h": statistics.fmean(high_wait) / 3600,
        "preemptions": result.preemptions,
        "pass_p50_ms": statistics.median(lat) * 1e3,
        "pass_max_ms": max(lat) * 1e3,
    }


def pass_latency(cluster_nodes: int, pending: int, reps: int, seed: int) -> list[float]:
    """Times passes over ``pending`` queued jobs on a cluster full of running ones."""
    rng = random.Random(seed)
    views = [NodeView(f"n{i}", "default") for i in range(cluster_nodes)]
    running, i = [], 0
    while i + 8 <= cluster_nodes:
        size = rng.choice((1, 2, 4, 8))
        running.append(
            RunningView(
                len(running),
                f"user{rng.randrange(200):03d}",
                "default",
                rng.choice((10, 20, 30)),
                [f"n{j}" for j in range(i, i + size)],
                started_at=rng.uniform(0, 1000),
            )
        )
        i += size
    queue = [
        PendingView(
            100_000 + k,
            f"user{rng.randrange(200):03d}",
            "default",
            rng.choice((10, 20, 30, 40, 50)),
            rng.choice((1, 2, 4, 8, 16, 64)),
            queued_at=float(k),
        )
        for k in range(pending)
    ]
    config = PolicyConfig(min_run_s=600.0, time_slice_s=1800.0, default_quotas=NO_QUOTAS)
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        schedule(views, queue, running, {}, 5000.0, config)
        times.append(time.perf_counter() - began)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hai.bench", description=__doc__)
    parser.add_argument("--nodes", type=int, default=1250, help="cluster nodes (8 GPUs each)")
    parser.add_argument("--jobs", type=int, default=6000, help="jobs in the trace")
    parser.add_argument("--load", type=float, default=1.3, help="offered load / capacity")
    parser.add_argument("--time-slice", type=float, default=1800.0, help="seconds")
    parser.add_argument("--pending", type=int, default=10_000, help="queue for the latency test")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    console = Console(width=200)
    trace: list[TraceJob] = generate(args.jobs, args.nodes, args.load, args.seed)
    table = Table(
        title=f"hai.bench: {args.jobs} jobs (synthetic, Helios-fitted) at load {args.load} "
        f"on {args.nodes} nodes x 8 GPUs"
    )
    for column in (
        "policy",
        "GPU util",
        "mean JCT h",
        "p95 JCT h",
        f"p95 JCT h (prio>={HIGH})",
        "mean queueing h",
        f"mean queueing h (prio>={HIGH})",
        "preemptions",
        "pass p50 ms",
        "pass max ms",
    ):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, config in policies(args.time_slice).items():
        began = time.perf_counter()
        s = summarize(simulate(trace, args.nodes, config))
        console.log(f"{name}: simulated in {time.perf_counter() - began:.1f}s")
        table.add_row(
            name,
            f"{s['util']:.1%}",
            f"{s['jct_mean_h']:.2f}",
            f"{s['jct_p95_h']:.2f}",
            f"{s['jct_high_p95_h']:.2f}",
            f"{s['wait_mean_h']:.2f}",
            f"{s['wait_high_mean_h']:.2f}",
            str(int(s["preemptions"])),
            f"{s['pass_p50_ms']:.1f}",
            f"{s['pass_max_ms']:.1f}",
        )
    console.print(table)
    times = pass_latency(args.nodes, args.pending, args.reps, args.seed)
    console.print(
        f"one pass over {args.pending} pending jobs on a full {args.nodes}-node cluster: "
        f"median {statistics.median(times) * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms "
        f"(target <= 100 ms)"
    )


if __name__ == "__main__":
    main()
