"""DDP section: per-step time of haiscale DDP over hfreduce against torch DDP over gloo.

Both wrap the same MLP with the same bucket size on one node's ranks. Each rank also
times the step under ``no_sync()`` (compute alone) and the bucketed all-reduce alone, so
the share of communication hidden behind backward is
``(compute + communication - step) / communication``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from haiscale.ddp import DistributedDataParallel
from hfreduce.launch import run_ranks

BUCKET_MB = 25
"""The default of both wrappers."""


@dataclass(frozen=True)
class Setup:
    width: int
    depth: int
    batch: int
    """Rows per rank and step."""
    steps: int
    warmup: int = 2

    @property
    def params(self) -> int:
        return self.depth * (self.width * self.width + self.width)


FULL = Setup(width=2048, depth=12, batch=32, steps=6)
"""12 x (2048^2 + 2048) = 50.4M parameters, the size the issue asks for."""
QUICK = Setup(width=256, depth=4, batch=8, steps=3, warmup=1)


def _mlp(setup: Setup) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(setup.depth):
        layers += [nn.Linear(setup.width, setup.width), nn.ReLU()]
    return nn.Sequential(*layers)


def _median_ms(fn: Callable[[], None], setup: Setup) -> float:
    for _ in range(setup.warmup):
        fn()
    times = []
    for _ in range(setup.steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _rank(ours: bool, setup: Setup) -> dict[str, float]:
    """One rank's medians: step, step under no_sync, and the bucketed all-reduce alone."""
    dist.init_process_group("hfreduce" if ours else "gloo", timeout=timedelta(seconds=300))
    torch.manual_seed(0)
    model = _mlp(setup)
    wrapper: nn.Module
    if ours:
        wrapper = DistributedDataParallel(model, bucket_cap_mb=BUCKET_MB)
    else:
        wrapper = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=BUCKET_MB)
    x = torch.randn(setup.batch, setup.width)

    def step() -> None:
        model.zero_grad()
        wrapper(x).square().mean().backward()

    def compute_only() -> None:
        with wrapper.no_sync():
            step()

    flat = torch.zeros(setup.params)
    buckets = flat.split(BUCKET_MB * 2**20 // flat.element_size())

    def communicate() -> None:
        works = [dist.all_reduce(b, async_op=True) for b in buckets]
        for work in works:
            work.wait()

    result = {
        "step": _median_ms(step, setup),
        "compute": _median_ms(compute_only, setup),
        "comm": _median_ms(communicate, setup),
    }
    if ours:
        wrapper.reducer.stop()
    dist.destroy_process_group()
    return result


def _hidden(r: dict[str, float]) -> float:
    share = (r["compute"] + r["comm"] - r["step"]) / r["comm"]
    return min(1.0, max(0.0, share))


def run(quick: bool) -> list[str]:
    setup = QUICK if quick else FULL
    lines = [
        f"DDP: haiscale over hfreduce vs torch DDP over gloo, MLP {setup.params / 1e6:.1f}M "
        f"params, {setup.batch} rows/rank, {BUCKET_MB} MB buckets, median of {setup.steps} steps",
        f"{'ranks':>5} | {'torch+gloo ms':>13} | {'ours ms':>8} | {'speed-up':>8} | "
        f"{'compute ms':>10} | {'comm ms (gloo/ours)':>19} | {'hidden (gloo/ours)':>18}",
    ]
    for world in (2, 4):
        theirs, ours = (
            run_ranks(
                _rank,
                ranks_per_node=world,
                args=(is_ours, setup),
                timeout=600,
                start_method="spawn",
            )[0].value
            for is_ours in (False, True)
        )
        lines.append(
            f"{world:>5} | {theirs['step']:>13.1f} | {ours['step']:>8.1f} | "
            f"{theirs['step'] / ours['step']:>7.2f}x | {ours['compute']:>10.1f} | "
            f"{theirs['comm']:>9.1f}/{ours['comm']:<9.1f} | "
            f"{_hidden(theirs):>8.0%}/{_hidden(ours):<9.0%}"
        )
    return lines
