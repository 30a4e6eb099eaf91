"""DDP section: per-step time of haiscale DDP over hfreduce against torch DDP over gloo.

Both wrap copies of the same MLP with the same bucket size on one node's ranks, in the
same processes, their steps taken in turn so both see the same load. Each rank also
times the same step of the bare model (compute alone) and each backend's bucketed
all-reduce alone, so the share of communication hidden behind backward is
``(compute + communication - step) / communication``.

Every timed call starts on all ranks together, after a barrier that is not timed:
without it a wrapper's step also timed the wait for the slowest rank to finish whatever
ran before (the bare model's step, which has no collective to line the ranks up). The
order of the calls turns by one every step, so none always follows the same neighbour.
Each rank also reports the CPU time (user + system, all threads) of each call: with
more busy threads than cores, the step time follows the CPU time summed over ranks, the
all-reduce's own CPU work cannot hide behind a backward that needs the same cores, and
the hidden share reads 0%.

The ranks' C library is told to keep freed memory (glibc ``mallopt``, what
``MALLOC_TRIM_THRESHOLD_``/``MALLOC_MMAP_THRESHOLD_`` set, and what jemalloc or tcmalloc,
which CPU training set-ups often preload, do anyway). By default glibc hands a freed
gradient-sized block back to the kernel whenever the free space at the top of its heap
passes a threshold, and the next step page-faults it in again: up to 49k faults and
150 ms of system time per rank and step at 50M parameters. Whether that happens depends
on where the other allocations of the process lie, here the other wrapper's and the bare
model's, so in one process it fell on one side and in the next on the other (in a
process of its own, torch DDP faulted in 16k-49k pages a step, ours 7k-19k); with the
memory kept, both sides and the bare model measure their own work.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from fs3.heap import keep_freed_memory
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


FULL = Setup(width=2048, depth=12, batch=32, steps=8)
"""12 x (2048^2 + 2048) = 50.4M parameters, the size the issue asks for."""
QUICK = Setup(width=256, depth=4, batch=8, steps=3, warmup=1)


def _mlp(setup: Setup) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(setup.depth):
        layers += [nn.Linear(setup.width, setup.width), nn.ReLU()]
    return nn.Sequential(*layers)


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process so far, all of its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _medians(
    fns: dict[str, Callable[[], None]], barrier: Callable[[], object], setup: Setup
) -> dict[str, tuple[float, float]]:
    """(median wall ms, median CPU ms of this process) of each of ``fns``, called in turn
    step after step, so that a change in the machine's load (other jobs on it) falls on
    all of them alike. Each call starts after ``barrier``; the order turns every step."""
    names = list(fns)
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(setup.warmup + setup.steps):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            barrier()
            start, cpu_start = time.perf_counter(), _cpu_s()
            fns[name]()
            if i >= setup.warmup:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(_cpu_s() - cpu_start)
    return {
        name: (1000 * statistics.median(wall[name]), 1000 * statistics.median(cpu[name]))
        for name in fns
    }


def _step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad()
        model(x).square().mean().backward()

    return step


def _all_reduce(numel: int, group: dist.ProcessGroup | None) -> Callable[[], None]:
    """The all-reduce of ``numel`` gradients in BUCKET_MB buckets, with no compute."""
    flat = torch.zeros(numel)
    buckets = flat.split(BUCKET_MB * 2**20 // flat.element_size())

    def communicate() -> None:
        works = [dist.all_reduce(b, group=group, async_op=True) for b in buckets]
        for work in works:
            work.wait()

    return communicate


def _rank(setup: Setup) -> dict[str, tuple[float, float]]:
    """One rank's (wall ms, CPU ms) medians: a step of each wrapper, the same step of the
    bare model (compute alone) and each backend's bucketed all-reduce alone."""
    keep_freed_memory()
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    hfreduce_group = dist.new_group(backend="hfreduce")
    ours = DistributedDataParallel(
        _mlp(setup), process_group=hfreduce_group, bucket_cap_mb=BUCKET_MB
    )
    theirs = nn.parallel.DistributedDataParallel(_mlp(setup), bucket_cap_mb=BUCKET_MB)
    x = torch.randn(setup.batch, setup.width)
    medians = _medians(
        {
            "compute": _step(_mlp(setup), x),
            "ours": _step(ours, x),
            "theirs": _step(theirs, x),
            "ours comm": _all_reduce(setup.params, hfreduce_group),
            "theirs comm": _all_reduce(setup.params, None),
        },
        dist.barrier,
        setup,
    )
    ours.reducer.stop()
    dist.destroy_process_group()
    return medians


def _hidden(step: float, compute: float, comm: float) -> float:
    return min(1.0, max(0.0, (compute + comm - step) / comm))


def run(quick: bool) -> list[str]:
    setup = QUICK if quick else FULL
    lines = [
        f"DDP: haiscale over hfreduce vs torch DDP over gloo, MLP {setup.params / 1e6:.1f}M "
        f"params, {setup.batch} rows/rank, {BUCKET_MB} MB buckets, median of {setup.steps} steps, "
        "freed memory kept by malloc",
        f"{'ranks':>5} | {'torch+gloo ms':>13} | {'ours ms':>8} | {'speed-up':>8} | "
        f"{'compute ms':>10} | {'comm ms (gloo/ours)':>19} | {'hidden (gloo/ours)':>18} | "
        "CPU ms/rank (gloo/ours/compute)",
    ]
    for world in (2, 4):
        outcomes = run_ranks(
            _rank, ranks_per_node=world, args=(setup,), timeout=600, start_method="spawn"
        )
        r = {name: wall for name, (wall, _) in outcomes[0].value.items()}
        cpu = {
            name: statistics.mean(o.value[name][1] for o in outcomes) for name in outcomes[0].value
        }
        hidden = [_hidden(r[who], r["compute"], r[f"{who} comm"]) for who in ("theirs", "ours")]
        lines.append(
            f"{world:>5} | {r['theirs']:>13.1f} | {r['ours']:>8.1f} | "
            f"{r['theirs'] / r['ours']:>7.2f}x | {r['compute']:>10.1f} | "
            f"{r['theirs comm']:>9.0f}/{r['ours comm']:<9.0f} | "
            f"{hidden[0]:>8.0%}/{hidden[1]:<9.0%} | "
            + f"{cpu['theirs']:.0f}/{cpu['ours']:.0f}/{cpu['compute']:.0f}".center(31)
        )
    return lines
