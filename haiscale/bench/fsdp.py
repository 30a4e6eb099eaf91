"""FSDP per-rank memory and step time: haiscale's FullyShardedDataParallel against torch's
FSDP2 (``torch.distributed.fsdp.fully_shard``), both on gloo, same model and data.

The model is a stack of MLP blocks, each block one unit (one ``fully_shard`` call for
torch), trained with Adam. Memory is counted two ways: the bytes of the tensors a rank
holds after a step (parameter shard, its gradient, Adam's two moments, and any gathered
buffer still alive), and the process's peak RSS above what it had before building the model
(both sides build the full model on every rank before sharding, as the tests do).
"""

from __future__ import annotations

import resource
import statistics
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from haiscale.fsdp import FullyShardedDataParallel
from hfreduce.launch import run_ranks


class _Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(nn.functional.gelu(self.up(x)))


def _model(dim: int, blocks: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[_Block(dim) for _ in range(blocks)])


def _local(t: torch.Tensor) -> torch.Tensor:
    """The part of a (possibly DTensor) tensor this rank stores."""
    return t.to_local() if hasattr(t, "to_local") else t


def _held_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    params = list(model.parameters())
    tensors = [*params, *(p.grad for p in params if p.grad is not None)]
    tensors += [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v)]
    held = sum(_local(t).numel() * _local(t).element_size() for t in tensors)
    if isinstance(model, FullyShardedDataParallel):
        held += sum(u._full_buffer.untyped_storage().nbytes() for u in model._units)
    return held


def _wrap(model: nn.Sequential, impl: str) -> nn.Module:
    if impl == "haiscale":
        return FullyShardedDataParallel(model, auto_wrap_policy={_Block})
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for block in model:
        fully_shard(block, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rank(impl: str, dim: int, blocks: int, batch: int, steps: int) -> tuple[float, int, float]:
    """Median step seconds, held bytes after the last step, peak RSS growth in MiB."""
    dist.init_process_group("gloo", timeout=timedelta(seconds=300))
    base = _rss_mib()
    model = _wrap(_model(dim, blocks), impl)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(dist.get_rank())
    x, y = torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g)
    times = []
    for _ in range(steps + 1):  # the first step allocates optimiser state: not timed
        dist.barrier()
        start = time.perf_counter()
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - start)
    held = _held_bytes(model, opt)
    dist.destroy_process_group()
    return statistics.median(times[1:]), held, _rss_mib() - base


def _row(impl: str, world: int, dim: int, blocks: int, batch: int, steps: int) -> str:
    outcomes = run_ranks(
        _rank,
        nodes=1,
        ranks_per_node=world,
        args=(impl, dim, blocks, batch, steps),
        timeout=600,
        start_method="spawn",
    )
    step_s = max(o.value[0] for o in outcomes)
    held = max(o.value[1] for o in outcomes) / 2**20
    rss = max(o.value[2] for o in outcomes)
    return f"{impl:<18} {world:>5} {step_s * 1e3:>12.0f} {held:>17.1f} {rss:>18.0f}"


def run(quick: bool) -> list[str]:
    dim, blocks, batch, steps = (64, 2, 8, 2) if quick else (1024, 4, 64, 5)
    params = blocks * (8 * dim * dim + 5 * dim)
    unsharded = 4 * params * 4 / 2**20  # fp32 parameter, gradient and two Adam moments
    lines = [
        f"FSDP on gloo, {blocks} MLP blocks of width {dim} ({params / 1e6:.1f}M parameters, "
        f"one unit each), Adam, batch {batch} per rank; median of {steps} steps; worst rank; "
        f"unsharded parameter+gradient+Adam state = {unsharded:.1f} MiB",
        f"{'implementation':<18} {'ranks':>5} {'step ms':>12} {'held state MiB':>17} "
        f"{'peak RSS +MiB':>18}",
    ]
    for world in (2, 4):
        for impl in ("haiscale", "torch fully_shard"):
            lines.append(_row(impl, world, dim, blocks, batch, steps))
    return lines
