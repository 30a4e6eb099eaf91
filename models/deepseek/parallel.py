"""How `deepseek.train` spreads a model over its ranks: haiscale wrappers applied from outside.

The model modules stay single-process code; `parallelize` takes a built
`DeepseekForCausalLM` and applies, in STYLE.md's order:

1. expert parallelism (`ep` > 1): every MoE layer keeps only this rank's share of its
   routed experts and reaches the others through `haiscale.moe.ExpertParallel`; routers,
   shared experts and everything else stay replicated;
2. data parallelism: `haiscale.ddp.DistributedDataParallel` (`parallel: ddp`) or
   `haiscale.fsdp.FullyShardedDataParallel` with one unit per decoder block
   (`parallel: fsdp`).

Pipeline parallelism is refused: `haiscale.pipeline` runs an `nn.Sequential` whose stages
pass one activation tensor on, and this model is not one (see `PIPELINE_REFUSAL`).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from deepseek.block import Block
from deepseek.config import ModelConfig
from deepseek.errors import ConfigError
from deepseek.model import CausalLM
from deepseek.moe import Experts, grouped_mm
from deepseek.v4.block import V4Block
from deepseek.v4.config import V4Config
from haiscale.ddp import DistributedDataParallel
from haiscale.fsdp import FullyShardedDataParallel
from haiscale.moe import ExpertParallel

PARALLEL_MODES = ("ddp", "fsdp", "pp")
BACKENDS = ("auto", "hfreduce", "gloo", "nccl")
PIPELINE_REFUSAL = (
    "parallel=pp: DeepseekForCausalLM cannot be cut into haiscale.pipeline stages: every "
    "MoE block adds a balance loss that a stage cannot pass on with its activation, and the "
    "MTP modules reuse the first stage's embedding and the last stage's head; use ddp or fsdp"
)


def check_degrees(parallel: str, ep: int, world: int, model: ModelConfig | V4Config) -> None:
    """Raises ConfigError, naming every number, unless the layout fits the world and model."""
    if parallel == "pp":
        raise ConfigError(PIPELINE_REFUSAL)
    if ep == 1:
        return
    experts = model.n_routed_experts
    if not experts:
        raise ConfigError(f"ep={ep}: the model has no routed experts; use ep=1")
    if world % ep or experts % ep:
        raise ConfigError(
            f"ep={ep} must divide both the world size ({world} ranks) and the routed experts "
            f"per MoE layer ({experts}); choose a common divisor"
        )
    if parallel != "ddp":
        raise ConfigError(
            f"ep={ep} with parallel={parallel}: expert parallelism runs under ddp only "
            "(FSDP would shard and average each rank's own experts like replicated weights)"
        )


def init_process_group(backend: str) -> str:
    """Initialises torch.distributed from the environment with `backend` and returns the
    backend's name ("auto": nccl when CUDA is present, else hfreduce).

    Raises:
        ConfigError: nccl without a GPU, or an unknown backend.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "hfreduce"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ConfigError("backend=nccl needs CUDA and this machine has none; use hfreduce")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    if backend == "hfreduce":
        import hfreduce  # noqa: F401 (importing it registers the "hfreduce" backend)
    dist.init_process_group(backend)
    return backend


def destroy_process_group() -> None:
    """Destroys the default process group, once the objects that still hold it are gone.

    FSDP units point back at their root, so a wrapped model (or a traceback through a
    failed wrap) is freed only by the garbage collector; if it still held the group when
    the interpreter shut down, gloo's worker threads would be torn down half way and abort
    the process (about 1 exit in 12 on 2 ranks). Collecting first frees the group here.
    """
    gc.collect()
    dist.destroy_process_group()


class LossOutputs(nn.Module):
    """The model with `(loss, ce_loss)` as its output. FSDP hooks its backward onto the
    tensors a wrapped module returns, and `CausalLMOutput` (a dataclass) hides them."""

    def __init__(self, lm: CausalLM) -> None:
        super().__init__()
        self.lm = lm

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.lm(input_ids, labels=labels)
        return out.loss, out.ce_loss


class ExpertParallelExperts(nn.Module):
    """This rank's share of one layer's routed experts, with `Experts.forward`'s contract:
    tokens go to the rank of each chosen expert and come back weighted."""

    def __init__(self, experts: Experts, ep: ExpertParallel) -> None:
        super().__init__()
        mine = slice(ep.first_expert, ep.first_expert + ep.local_experts)
        self.ep = ep
        self.gate_up_proj = nn.Parameter(experts.gate_up_proj.detach()[mine].clone())
        self.down_proj = nn.Parameter(experts.down_proj.detach()[mine].clone())

    def forward(
        self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        received, counts, context = self.ep.dispatch(x, indices)
        gate, up = grouped_mm(received, self.gate_up_proj.transpose(1, 2), counts).chunk(2, -1)
        out = grouped_mm(F.silu(gate) * up, self.down_proj.transpose(1, 2), counts)
        back = self.ep.combine(out, context)  # (N, k, hidden)
        return (back * weights[..., None].to(back.dtype)).sum(1).to(x.dtype)


def _is_block(module: nn.Module) -> bool:
    # Exactly the decoder blocks: an MTPLayer (a Block subclass) stays in the root unit,
    # because the model applies its shared_head norm outside its forward, after a unit has
    # released its parameters.
    return type(module) in (Block, V4Block)


@contextlib.contextmanager
def _detached(owners: list[nn.Module], name: str) -> Iterator[None]:
    """Takes submodule `name` out of each owner for the duration of the block."""
    taken = [owner._modules.pop(name) for owner in owners]
    try:
        yield
    finally:
        for owner, module in zip(owners, taken, strict=True):
            owner._modules[name] = module


@dataclass
class Parallelized:
    """A model laid out over the ranks, and what the training loop must do differently."""

    model: CausalLM
    """The plain model; with FSDP its blocks are units."""
    module: nn.Module
    """What the step calls: `module(input_ids, labels) -> (loss, ce_loss)`."""
    world: int = 1
    fsdp: FullyShardedDataParallel | None = None
    expert_params: list[nn.Parameter] = field(default_factory=list)
    """This rank's routed-expert weights (ep > 1): reduced by `finish_gradients`, not DDP."""
    expert_group: dist.ProcessGroup | None = None
    """The expert-parallel ranks (None: the world)."""
    replica_group: dist.ProcessGroup | None = None
    """The ranks holding the same experts as this one (None when ep equals the world)."""
    decay_masks: list[torch.Tensor] = field(default_factory=list)
    """With FSDP, per flat shard: True where an element belongs to a matrix."""

    def update_expert_bias(self) -> torch.Tensor | None:
        """`CausalLM.update_expert_bias` with each layer's expert loads summed over
        the world, so every rank moves its routing bias alike (see `MoE.update_bias`)."""
        return self.model.update_expert_bias(self._sum_over_world)

    def _sum_over_world(self, load: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(load)
        return load

    @property
    def sharded_checkpoint(self) -> bool:
        """Every rank writes its own state (FSDP shards, expert shares), not only rank 0."""
        return self.fsdp is not None or bool(self.expert_params)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: weight decay on matrices only, not on norms and biases. FSDP's
        flat shards mix both, so their decay comes from `decay_fsdp_shards` instead."""
        if self.fsdp is not None:
            return [{"params": list(self.fsdp.parameters()), "weight_decay": 0.0}]
        params = list(self.model.parameters())
        return [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]

    @torch.no_grad()
    def decay_fsdp_shards(self, lr: float, weight_decay: float) -> None:
        """AdamW's decoupled decay (p ← p·(1 − lr·wd), before the update) on the matrix
        elements of FSDP's shards; call right before `optimizer.step()`."""
        if self.fsdp is None or weight_decay == 0:
            return
        for p, mask in zip(self.fsdp.parameters(), self.decay_masks, strict=True):
            p.copy_(torch.where(mask, p * (1 - lr * weight_decay), p))

    def finish_gradients(self) -> None:
        """Turns the expert gradients into DDP's average over all ranks. Each rank's experts
        got the gradient of every token routed to them in its expert-parallel group (summed
        over that group's losses); replicas of the same experts add theirs, and the sum is
        divided by the world size as DDP divides the others."""
        grads = [p.grad for p in self.expert_params if p.grad is not None]
        if not grads:
            return
        if self.replica_group is not None:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, group=self.replica_group)
            for g, reduced in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
                g.copy_(reduced.view_as(g))
        for g in grads:
            g.div_(self.world)

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Scales every gradient so that the global norm over the whole model is at most
        `max_norm`; returns that norm. Sharded pieces (FSDP shards, expert shares) add their
        squared norms over the ranks first, so every rank applies the same factor."""
        if self.fsdp is None and not self.expert_params:
            return torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if self.fsdp is not None:
            replicated, sharded, group = [], list(self.fsdp.parameters()), None
        else:
            experts = {id(p) for p in self.expert_params}
            replicated = [p for p in self.model.parameters() if id(p) not in experts]
            sharded, group = self.expert_params, self.expert_group
        device = sharded[0].device
        shard_sq = _squared_norm(sharded, device)
        dist.all_reduce(shard_sq, group=group)
        total = (_squared_norm(replicated, device) + shard_sq).sqrt()
        # torch.nn.utils.clip_grad_norm_'s factor.
        factor = (max_norm / (total + 1e-6)).clamp(max=1.0)
        for p in [*replicated, *sharded]:
            if p.grad is not None:
                p.grad.mul_(factor)
        return total

    def state_dict(self) -> dict[str, Any]:
        """The model state to checkpoint: FSDP's shards of this rank, or the plain model's
        (with ep > 1 holding this rank's experts only)."""
        if self.fsdp is not None:
            return self.fsdp.sharded_state_dict()
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.fsdp is not None:
            self.fsdp.load_sharded_state_dict(state)
        else:
            self.model.load_state_dict(state)


def _squared_norm(params: list[nn.Parameter], device: torch.device) -> torch.Tensor:
    grads = [p.grad.float() for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    return torch.stack([g.square().sum() for g in grads]).sum()


def _expert_groups(ep: int, world: int) -> tuple[dist.ProcessGroup | None, dist.ProcessGroup]:
    """(expert-parallel group, replica group) of this rank: consecutive ranks share their
    experts out (the all-to-alls stay inside a node when ep ≤ ranks per node); ranks ep
    apart hold the same experts. Collective: every rank creates every group."""
    rank = dist.get_rank()
    groups = {}
    for k in range(world // ep):
        groups["ep", k] = dist.new_group(list(range(k * ep, (k + 1) * ep)))
    for j in range(ep):
        groups["replica", j] = dist.new_group(list(range(j, world, ep)))
    return groups["ep", rank // ep], groups["replica", rank % ep]


def _apply_expert_parallel(model: CausalLM, ep: int, world: int) -> Parallelized:
    """Gives every MoE layer this rank's share of its routed experts; DDP still to come."""
    expert_group = replica_group = None
    if ep < world:
        expert_group, replica_group = _expert_groups(ep, world)
    layers = model.moe_layers()
    for layer in layers:
        layer.experts = ExpertParallelExperts(
            layer.experts, ExpertParallel(layer.experts.num_experts, expert_group)
        )
    experts = [p for layer in layers for p in layer.experts.parameters()]
    return Parallelized(
        model,
        model,
        world,
        expert_params=experts,
        expert_group=expert_group,
        replica_group=replica_group,
    )


def parallelize(model: CausalLM, *, parallel: str, ep: int, world: int) -> Parallelized:
    """Lays `model` out over the default process group (nothing to do for one process).

    Collective: every rank calls it with the same arguments, after `check_degrees`.
    """
    if world == 1:
        return Parallelized(model, LossOutputs(model))
    if parallel == "fsdp":
        twin = copy.deepcopy(model)
        fsdp = FullyShardedDataParallel(LossOutputs(model), auto_wrap_policy=_is_block)
        return Parallelized(model, fsdp, world, fsdp, decay_masks=_decay_masks(twin))
    plan = _apply_expert_parallel(model, ep, world) if ep > 1 else Parallelized(model, model, world)
    # DDP broadcasts rank 0's parameters and all-reduces every gradient over the world; the
    # expert shares differ per rank, so they are out of the model while it is wrapped.
    with _detached(model.moe_layers() if ep > 1 else [], "experts"):
        # Buffers stay per rank: the routing bias moves identically everywhere because
        # update_expert_bias sums loads over the world, and load counts must not be
        # overwritten by rank 0.
        plan.module = DistributedDataParallel(LossOutputs(model), broadcast_buffers=False)
    return plan


def _decay_masks(twin: CausalLM) -> list[torch.Tensor]:
    """Which elements of each FSDP flat shard belong to a matrix: an FSDP wrap of a copy
    of the model whose matrices are ones and everything else zeros lays its shards out as
    the real wrap does. The copy is dropped once the masks (1/N of the model as bools) are
    read."""
    with torch.no_grad():
        for p in twin.parameters():
            p.fill_(1.0 if p.ndim >= 2 else 0.0)
    wrapped = FullyShardedDataParallel(LossOutputs(twin), auto_wrap_policy=_is_block)
    return [p.detach() > 0.5 for p in wrapped.parameters()]


def agree(values: list[torch.Tensor], flag: bool, world: int) -> tuple[list[float], bool]:
    """`values` (scalars) averaged over the ranks, and whether any rank raised `flag`, in one
    all-reduce (a sum: any raised flag makes it positive), so every rank decides alike."""
    if world == 1:
        return [v.item() for v in values], flag
    flags = torch.tensor(float(flag), device=values[0].device)
    packed = torch.stack([*(v.detach().float() for v in values), flags])
    dist.all_reduce(packed)
    *means, raised = (packed / world).tolist()
    return means, raised > 0


def allreduce_bandwidth(numel: int, device: torch.device, calls: int = 5) -> dict[str, float]:
    """Times all-reduces of `numel` fp32 values over the default group, after a warm-up
    call (hfreduce and NCCL set up buffers and connections on the first), each started
    together after a barrier; `seconds` is the median call. Returns bytes, seconds and
    algbw_gbps (bytes / seconds / 1e9, the algorithm bandwidth nccl-tests reports)."""
    flat = torch.zeros(numel, dtype=torch.float32, device=device)
    dist.all_reduce(flat)
    times = []
    for _ in range(calls):
        dist.barrier()
        _sync(device)
        started = time.perf_counter()
        dist.all_reduce(flat)
        _sync(device)
        times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    nbytes = numel * flat.element_size()
    return {"bytes": nbytes, "seconds": seconds, "algbw_gbps": nbytes / seconds / 1e9}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
