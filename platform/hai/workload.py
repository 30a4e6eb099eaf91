"""A synthetic job trace fitted to published GPU-cluster statistics, for the simulator.

No public trace can ship here: Philly and Helios are CC BY 4.0 but too large to vendor
(0.98 GB and 36 MB zipped, and neither is reachable from this machine), and the small
Alibaba v2023 file has no licence and is nearly all 1-GPU pods. So, as
/work/shared/reference/scheduler.md recommends, this generator keeps the Helios job schema
(user, gpu count, submit time, duration) and draws from distributions matched to what the
Helios paper (Hu et al., SC'21) and the Philly study (Jeon et al., ATC'19) report, rounded
to whole 8-GPU nodes as HAI-Platform allocates them:

* Job size: most GPU jobs are small, a few percent use 8+ nodes and hold much of the
  GPU time (Helios Fig. 3: ~half of GPU time from jobs of >= 64 GPUs).
* Duration: log-normal with a heavy tail; median in the tens of minutes, p99 in days
  (Helios Fig. 4 / Philly Fig. 2).
* Arrivals: Poisson, scaled so the offered load is ``load`` times the cluster's capacity.
* Users: Zipf-like, a few heavy users submit most jobs (Helios §3.3).
* Priorities: mostly the two lowest levels, as the default quota puts most work there.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

# (nodes, probability): Helios GPU-demand classes rounded to 8-GPU nodes.
NODE_COUNTS = ((1, 0.55), (2, 0.17), (4, 0.13), (8, 0.09), (16, 0.04), (32, 0.015), (64, 0.005))
# (level, probability).
PRIORITIES = ((10, 0.45), (20, 0.30), (30, 0.12), (40, 0.09), (50, 0.04))
# Log-normal duration: median 30 min (e^7.5 s); sigma 1.3 puts p99 near 10 h and the
# mean near 70 min (Helios reports most GPU time in jobs of hours).
DURATION_MU = 7.5
DURATION_SIGMA = 1.3
MAX_DURATION_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class TraceJob:
    id: int
    user: str
    submit: float
    nodes: int
    duration: float
    priority: int


def _choose(rng: random.Random, table: tuple[tuple[int, float], ...]) -> int:
    values, weights = zip(*table, strict=True)
    return rng.choices(values, weights)[0]


def mean_node_seconds() -> float:
    """Expected nodes x duration of one job (the duration cap is ignored: it moves <1%)."""
    mean_nodes = sum(n * p for n, p in NODE_COUNTS)
    return mean_nodes * math.exp(DURATION_MU + DURATION_SIGMA**2 / 2)


def generate(jobs: int, cluster_nodes: int, load: float = 1.2, seed: int = 0) -> list[TraceJob]:
    """``jobs`` submissions whose offered load is ``load`` x the cluster's node-seconds."""
    rng = random.Random(seed)
    rate = load * cluster_nodes / mean_node_seconds()
    users = [f"user{i:03d}" for i in range(200)]
    user_weights = [1.0 / (i + 1) for i in range(len(users))]
    now = 0.0
    trace = []
    for i in range(jobs):
        now += rng.expovariate(rate)
        nodes = min(_choose(rng, NODE_COUNTS), cluster_nodes)
        duration = min(rng.lognormvariate(DURATION_MU, DURATION_SIGMA), MAX_DURATION_S)
        trace.append(
            TraceJob(
                i,
                rng.choices(users, user_weights)[0],
                now,
                nodes,
                max(duration, 30.0),
                _choose(rng, PRIORITIES),
            )
        )
    return trace
