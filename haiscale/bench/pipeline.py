"""Pipeline bubble: the share of a training step each stage sits idle, measured for GPipe,
1F1B and interleaved 1F1B, beside the theory (p-1)/(m+p-1) for p stages and m micro-batches
(interleaving with v chunks per rank divides the idle time by v: (p-1)/(v*m+p-1)).

A stage's busy time is measured around its own forward and backward passes; the step time is
barrier to barrier. Two kinds of stage:

- "device": each stage sleeps a fixed time per micro-batch (forward 1 unit, backward 2), like
  a GPU kernel that leaves the host free. This machine has fewer cores than the ranks we want,
  so sleeping is how every stage gets a device of its own; the bubble is then the schedule's
  plus our send/recv overhead.
- "matmul": real CPU compute (one thread per rank), at p = 2 only; it shares the cores with
  everything else on the machine, so expect noise.
"""

from __future__ import annotations

import os
import statistics
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from haiscale.pipeline import GPipe, Interleaved1F1B, PipeDream, partition
from hfreduce.launch import run_ranks

SCHEDULES = ("gpipe", "1f1b", "interleaved")
_ROWS = 4  # rows per micro-batch


class _Busy:
    """Seconds a rank spent in its stages' forward and backward passes."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.backward_started = 0.0


class _Mark(torch.autograd.Function):
    """Identity whose backward records when a stage's backward starts (``end=False``, at the
    stage output) or adds the time since then (``end=True``, at the stage input)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, busy: _Busy, end: bool) -> torch.Tensor:
        ctx.busy, ctx.end = busy, end
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        now = time.perf_counter()
        if ctx.end:
            ctx.busy.seconds += now - ctx.busy.backward_started
        else:
            ctx.busy.backward_started = now
        return grad, None, None


class _Timed(nn.Module):
    def __init__(self, module: nn.Module, busy: _Busy) -> None:
        super().__init__()
        self.module, self.busy = module, busy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        y = self.module(_Mark.apply(x, self.busy, True))
        self.busy.seconds += time.perf_counter() - start
        return _Mark.apply(y, self.busy, False)


class _Sleep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, seconds: float) -> torch.Tensor:
        ctx.seconds = seconds
        time.sleep(seconds)
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        time.sleep(2 * ctx.seconds)  # backward costs about twice the forward
        return grad, None


class _Device(nn.Module):
    """A stage whose work happens elsewhere: a small layer plus a fixed sleep."""

    def __init__(self, width: int, seconds: float) -> None:
        super().__init__()
        self.linear, self.seconds = nn.Linear(width, width), seconds

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Sleep.apply(self.linear(x), self.seconds)


def _model(kind: str, stages: int, unit: float, width: int) -> nn.Sequential:
    if kind == "device":
        return nn.Sequential(*[_Device(width, unit) for _ in range(stages)])
    return nn.Sequential(*[nn.Linear(width, width) for _ in range(stages)])


def _schedule(name: str, kind: str, micro: int, unit: float, width: int, busy: _Busy):
    rank, size = dist.get_rank(), dist.get_world_size()
    chunks = 2 if name == "interleaved" else 1
    # Interleaving splits each rank's work into two chunks of half the size.
    stages = partition(_model(kind, size * chunks, unit / chunks, width), rank, size, None, chunks)
    if name == "interleaved":
        return Interleaved1F1B([_Timed(s, busy) for s in stages], micro)
    if name == "gpipe":
        return GPipe(_Timed(stages, busy), micro)
    return PipeDream(_Timed(stages, busy), micro)


def _bubble(name: str, kind: str, micro: int, steps: int, unit: float, width: int) -> float:
    """This rank's median idle share of a step."""
    busy = _Busy()
    pipe = _schedule(name, kind, micro, unit, width, busy)
    rows = _ROWS if kind == "device" else width // 8
    x = torch.randn(rows * micro, width, requires_grad=True)  # so stage 0's backward is timed
    y = torch.randn(rows * micro, width)
    shares = []
    for step in range(steps + 1):  # the first step connects the ranks: not timed
        busy.seconds = 0.0
        dist.barrier()
        start = time.perf_counter()
        pipe.forward_backward(x, criterion=nn.functional.mse_loss, labels=(y,))
        dist.barrier()
        if step:
            shares.append(1 - busy.seconds / (time.perf_counter() - start))
    return statistics.median(shares)


def _round_trip(repeats: int = 200) -> float:
    """Median seconds for a small message from rank 0 to rank 1 and back: the latency each
    stage-to-stage hand-over adds to the bubble."""
    x, times = torch.zeros(16), []
    for _ in range(repeats):
        start = time.perf_counter()
        if dist.get_rank() == 0:
            dist.isend(x, 1).wait()
            dist.irecv(x, 1).wait()
        elif dist.get_rank() == 1:
            dist.irecv(x, 0).wait()
            dist.isend(x, 0).wait()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(cases: list[tuple[str, str, int]], steps: int, unit: float, width: int) -> dict:
    """Rank function: the idle share of each ``(schedule, kind, micro-batches)`` case, and
    the send/recv round trip between ranks 0 and 1."""
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    shares = [_bubble(name, kind, m, steps, unit, width) for name, kind, m in cases]
    result = {"shares": shares, "round_trip": _round_trip()}
    dist.destroy_process_group()
    return result


def _theory(p: int, m: int, chunks: int = 1) -> float:
    return (p - 1) / (chunks * m + p - 1)


def _cases(p: int, micro: list[int], kinds: list[str]) -> list[tuple[str, str, int]]:
    # Interleaved 1F1B needs a micro-batch count that is a multiple of p.
    return [
        (name, kind, m)
        for kind in kinds
        for m in micro
        for name in SCHEDULES
        if name != "interleaved" or m % p == 0
    ]


def _table(p: int, cases: list[tuple[str, str, int]], shares: list[float]) -> list[str]:
    got = dict(zip(cases, shares, strict=True))
    lines = []
    for kind, m in dict.fromkeys((kind, m) for _, kind, m in cases):
        cells = []
        for name in SCHEDULES:
            share = got.get((name, kind, m))
            cells.append(f"{share:>11.1%}" if share is not None else f"{'-':>11}")
        theory = f"{_theory(p, m):>7.1%} {_theory(p, m, 2):>7.1%}"
        lines.append(f"{kind:<7}{p:>3}{m:>4}  {theory}  " + " ".join(cells))
    return lines


def run(quick: bool) -> list[str]:
    unit = 0.002 if quick else 0.02  # seconds of forward per micro-batch and stage
    steps = 1 if quick else 3
    micro = [1, 4] if quick else [1, 2, 4, 8]
    layouts = [(2, ["device", "matmul"])] if quick else [(2, ["device", "matmul"]), (4, ["device"])]
    width = 256 if quick else 1024
    lines = [
        "pipeline bubble: idle share of a step per stage (mean over stages), measured vs theory",
        f"device stages: {unit * 1e3:.0f} ms forward + {2 * unit * 1e3:.0f} ms backward per "
        f"micro-batch (sleep); matmul stages: Linear({width}, {width}) on {width // 8} rows",
        f"{'stage':<7}{'p':>3}{'m':>4}  {'theory':>7} {'v=2':>7}  "
        + " ".join(f"{name:>11}" for name in SCHEDULES),
    ]
    round_trips = []
    for p, kinds in layouts:
        cases = _cases(p, micro, kinds)
        outcomes = run_ranks(
            measure,
            ranks_per_node=p,
            args=(cases, steps, unit, width),
            timeout=600,
            start_method="spawn",
        )
        per_rank = [o.value["shares"] for o in outcomes]
        lines += _table(p, cases, [statistics.mean(s) for s in zip(*per_rank, strict=True)])
        round_trips.append(f"{outcomes[0].value['round_trip'] * 1e3:.2f} ms at p={p}")
    lines.append("theory: (p-1)/(m+p-1) for GPipe and 1F1B; v=2 is interleaved 1F1B, 2 chunks")
    lines.append(
        f"gloo send/recv round trip, rank 0 <-> 1 (median): {', '.join(round_trips)}; "
        f"machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    return lines
