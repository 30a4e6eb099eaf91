"""Rank functions of the FSDP tests (spawned ranks import them by name), and the model and
data both the ranks and the single-process reference use."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import hfreduce  # noqa: F401 (registers the "hfreduce" backend)
from haiscale.fsdp import BackwardPrefetch, FullyShardedDataParallel

STEPS = 4
BATCH = 8  # per rank


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.norm = nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.net(x))


def make_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), Block(), Block(), nn.Linear(16, 4))


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(BATCH, 8, generator=g), torch.randn(BATCH, 4, generator=g)


def held_bytes(params: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the parameters, their gradients and the optimiser state."""
    tensors = [*params, *(p.grad for p in params if p.grad is not None)]
    tensors += [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


def train_single(world: int) -> tuple[dict[str, torch.Tensor], int]:
    """The reference: one process, each step on the batches of all ``world`` ranks."""
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(STEPS):
        xs, ys = zip(*(batch(step, r) for r in range(world)), strict=True)
        opt.zero_grad()
        nn.functional.mse_loss(model(torch.cat(xs)), torch.cat(ys)).backward()
        opt.step()
    return model.state_dict(), held_bytes(list(model.parameters()), opt)


def _wrap(model: nn.Module, policy: str, prefetch: str, **kw) -> FullyShardedDataParallel:
    wrap = {Block} if policy == "set" else (lambda m: isinstance(m, Block))
    return FullyShardedDataParallel(
        model, auto_wrap_policy=wrap, backward_prefetch=BackwardPrefetch(prefetch), **kw
    )


def watch_prefetch(fsdp: FullyShardedDataParallel) -> dict[str, bool]:
    """Records whether the second block's all-gather is under way while the first block
    runs forward, and the first block's while the second computes its gradients."""
    first, second = fsdp.module[1], fsdp.module[2]
    seen: dict[str, bool] = {}

    def busy(unit: FullyShardedDataParallel) -> bool:
        return unit._pending_gather is not None or unit._gathered

    first.module.register_forward_pre_hook(lambda *_: seen.update(forward=busy(second)))
    second.module.net[2].register_full_backward_pre_hook(
        lambda *_: seen.update(backward=busy(first))
    )
    return seen


def train_fsdp(backend: str, policy: str, prefetch: str, folder: str) -> dict:
    """STEPS steps of FSDP training, then everything the tests check about the result."""
    dist.init_process_group(backend, timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    fsdp = _wrap(make_model(), policy, prefetch)
    opt = torch.optim.Adam(fsdp.parameters(), lr=1e-2)
    for step in range(STEPS):
        x, y = batch(step, rank)
        opt.zero_grad()
        nn.functional.mse_loss(fsdp(x), y).backward()
        opt.step()
        if step == 0:  # the units' order is known after the first forward
            prefetched = watch_prefetch(fsdp)
    units = sum(isinstance(m, FullyShardedDataParallel) for m in fsdp.modules())
    out: dict = {"prefetched": prefetched, "units": units}
    buffers = sum(u._full_buffer.untyped_storage().nbytes() for u in fsdp._units)
    out["bytes"] = held_bytes(list(fsdp.parameters()), opt) + buffers
    out["state"] = fsdp.state_dict()
    out["rank0_only"] = fsdp.state_dict(rank0_only=True)
    path = Path(folder) / f"shard{rank}.pt"
    torch.save(fsdp.sharded_state_dict(), path)
    fresh = _wrap(make_model(seed=1), policy, prefetch)
    fresh.load_sharded_state_dict(torch.load(path))
    out["sharded_loaded"] = fresh.state_dict()
    fresh = _wrap(make_model(seed=2), policy, prefetch)
    fresh.load_state_dict(out["state"])
    out["full_loaded"] = fresh.state_dict()
    with fsdp.summon_full_params():
        out["summoned"] = {
            n: p.detach().clone()
            for n, p in fsdp.module.named_parameters()
            if not n.endswith("flat_param")
        }
        fsdp.module[0].bias.add_(1.0)  # written back to the shards on exit
    out["written_back"] = fsdp.state_dict()["0.bias"]
    out["mixed"] = train_mixed(prefetch)
    dist.destroy_process_group()
    return out


def train_mixed(prefetch: str) -> dict:
    """bf16 compute with fp32 shards: losses on one fixed batch and the dtypes involved."""
    fsdp = _wrap(make_model(), "set", prefetch, mixed_precision=torch.bfloat16)
    opt = torch.optim.Adam(fsdp.parameters(), lr=1e-2)
    x, y = batch(0, dist.get_rank())
    losses, out_dtype = [], None
    for _ in range(8):
        opt.zero_grad()
        pred = fsdp(x)
        out_dtype = pred.dtype
        loss = nn.functional.mse_loss(pred.float(), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    state = [v for s in opt.state.values() for v in s.values() if v.is_floating_point()]
    dtypes = {p.dtype for p in fsdp.parameters()} | {p.grad.dtype for p in fsdp.parameters()}
    return {"losses": losses, "out_dtype": out_dtype, "dtypes": dtypes | {v.dtype for v in state}}
