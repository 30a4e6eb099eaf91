"""Rank functions of the haiscale DDP tests, and the single-process training they are
compared with. Ranks are spawned (DDP teardown once hung in a rank forked from a
long-running test process), so they import these functions by name."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

import hfreduce  # noqa: F401 (registers the "hfreduce" backend)
from haiscale.ddp import DistributedDataParallel

ROWS = 4
"""Rows of one piece of a step's batch: each rank trains on one piece per micro-batch."""
STEPS = 3
TINY_BUCKET_MB = 0.0005
"""About 520 bytes: the tiny model's gradients fall into several buckets of uneven size."""


class TinyNet(nn.Module):
    """A small MLP; with ``extra`` a second head that forward uses only on request, with
    ``spare`` one that no forward ever uses."""

    def __init__(self, seed: int, extra: bool = False, spare: bool = False) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh())
        self.head = nn.Linear(16, 4)
        self.extra = nn.Linear(16, 4) if extra else None
        self.spare = nn.Linear(16, 4) if spare else None
        # Differs by seed, so a rank that skipped the broadcast would train differently.
        self.register_buffer("shift", torch.randn(4))

    def forward(self, x: torch.Tensor, use_extra: bool = False) -> torch.Tensor:
        h = self.body(x)
        out = self.head(h) + self.shift
        return out + self.extra(h) if use_extra else out


def piece_loss(
    model: nn.Module, step: int, index: int, pieces: int, use_extra: bool
) -> torch.Tensor:
    """The loss of piece ``index`` of step ``step``'s batch, divided by ``pieces``: summed
    over every piece it is the mean loss of the whole batch."""
    g = torch.Generator().manual_seed(1000 + step)
    x, y = torch.randn(pieces * ROWS, 8, generator=g), torch.randn(pieces * ROWS, 4, generator=g)
    rows = slice(index * ROWS, (index + 1) * ROWS)
    return nn.functional.mse_loss(model(x[rows], use_extra=use_extra), y[rows]) / pieces


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Sgd:
    """SGD with momentum, as torch.optim.SGD computes it. torch.optim's first use imports
    torch._dynamo, seconds per rank on a busy 2-core machine. Zeroes gradients in place,
    so later steps accumulate straight into DDP's buckets."""

    def __init__(self, params: list[nn.Parameter], lr: float = 0.1, momentum: float = 0.9):
        self.params, self.lr, self.momentum = params, lr, momentum
        self.velocity: dict[nn.Parameter, torch.Tensor] = {}

    def zero_grad(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            v = self.velocity.get(p)
            v = p.grad.clone() if v is None else v.mul_(self.momentum).add_(p.grad)
            self.velocity[p] = v
            p.sub_(self.lr * v)


def train_reference(
    model: TinyNet, world: int, micro: int = 1, extra_rank: int | None = None
) -> dict[str, torch.Tensor]:
    """STEPS steps in one process on the whole batch that ``world`` ranks share."""
    opt = Sgd(list(model.parameters()))
    pieces = world * micro
    for step in range(STEPS):
        opt.zero_grad()
        loss = sum(
            piece_loss(model, step, i, pieces, use_extra=i // micro == extra_rank)
            for i in range(pieces)
        )
        loss.backward()
        opt.step()
    return state_of(model)


def train_rank(
    ddp: DistributedDataParallel, micro: int = 1, extra_rank: int | None = None, steps: int = STEPS
) -> dict[str, torch.Tensor]:
    """This rank's side of train_reference: its own pieces, all but the last micro-batch
    of each step under no_sync."""
    rank, world = dist.get_rank(), dist.get_world_size()
    opt = Sgd(list(ddp.parameters()))
    for step in range(steps):
        opt.zero_grad()
        for m in range(micro):
            sync = ddp.no_sync() if m < micro - 1 else contextlib.nullcontext()
            with sync:
                # Scaled by world: DDP averages over ranks, the reference sums pieces.
                loss = world * piece_loss(
                    ddp, step, rank * micro + m, world * micro, rank == extra_rank
                )
                loss.backward()
        opt.step()
    return state_of(ddp.module)


def watch_grads(ddp: DistributedDataParallel) -> tuple[list[bool], list]:
    """Hooks run after DDP's own on every parameter, each recording whether the
    parameter's ``.grad`` already lives in its bucket then, i.e. during backward rather
    than at its end (autograd's own buffer is freed as soon as it was copied). Returns
    the records and the hooks' handles."""
    flats = {p: b.flat for b in ddp.reducer.buckets for p in b.params}
    seen: list[bool] = []

    def check(param: nn.Parameter) -> None:
        storage = param.grad.untyped_storage().data_ptr()
        seen.append(storage == flats[param].untyped_storage().data_ptr())

    return seen, [p.register_post_accumulate_grad_hook(check) for p in flats]


def watch_spinning(group: dist.ProcessGroup) -> list[float]:
    """Records, for every all-reduce an hfreduce group runs from now on, how long its
    waits on peers spin before they sleep."""
    communicator = group.communicator
    spins: list[float] = []
    run = communicator._pipeline.run

    def recording_run(flat: torch.Tensor, op: object) -> None:
        spins.append(communicator.arena.spin_s)
        run(flat, op)

    communicator._pipeline.run = recording_run
    return spins


def _error_of(fn: Callable[[], object]) -> str | None:
    try:
        fn()
    except RuntimeError as exc:
        return str(exc)
    return None


def scenarios(backend: str) -> dict:
    """Every DDP case on one process group; each model starts from this rank's own seed,
    so only the construction broadcast makes the ranks agree."""
    # A short timeout: a stuck call fails with a message instead of waiting 30 minutes.
    dist.init_process_group(backend, timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    out: dict = {}

    ddp = DistributedDataParallel(TinyNet(seed=rank), bucket_cap_mb=TINY_BUCKET_MB)
    out["bucket_sizes"] = [b.flat.numel() for b in ddp.reducer.buckets]
    seen, handles = watch_grads(ddp)
    spins = watch_spinning(dist.group.WORLD) if backend == "hfreduce" else []
    out["train"] = train_rank(ddp)
    # Buckets are reduced beside backward: their waits must leave the cores to it.
    out["spins"] = spins
    out["grads_in_bucket"] = len(seen) == STEPS * len(list(ddp.parameters())) and all(seen)
    for handle in handles:
        handle.remove()
    ddp.reducer.stop()

    ddp = DistributedDataParallel(TinyNet(seed=rank))
    out["accumulate"] = train_rank(ddp, micro=2)
    ddp.reducer.stop()

    ddp = DistributedDataParallel(
        TinyNet(seed=rank, extra=True, spare=True),
        bucket_cap_mb=TINY_BUCKET_MB,
        find_unused_parameters=True,
    )
    out["unused"] = train_rank(ddp, extra_rank=0)
    out["spare_grad_is_none"] = ddp.module.spare.weight.grad is None
    ddp.reducer.stop()

    ddp = DistributedDataParallel(TinyNet(seed=rank, spare=True))
    out["error"] = _error_of(lambda: train_rank(ddp, steps=1))
    ddp.reducer.stop()

    ddp = DistributedDataParallel(TinyNet(seed=rank, spare=True), find_unused_parameters=True)
    x = torch.randn(ROWS, 8)
    # `spare` is not in forward's graph, so it was marked unused before its gradient came.
    out["late_error"] = _error_of(lambda: (ddp(x).sum() + ddp.module.spare.weight.sum()).backward())
    ddp.reducer.stop()
    # Detached: the next backward leaves this rank's own gradient.
    ddp.module.zero_grad()
    ddp(torch.full((ROWS, 8), float(rank))).sum().backward()
    out["grad_after_stop"] = ddp.module.head.weight.grad.clone()

    dist.destroy_process_group()
    return out
