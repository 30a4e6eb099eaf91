"""Rank functions for the pipeline tests. Ranks are spawned, so each imports its
function from this module by name."""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from haiscale.pipeline import GPipe, Interleaved1F1B, PipeDream, make_subgroups, partition

STEPS = 3
BATCH = 10  # 5 rows per DP rank: unequal micro-batches, hence unequal shares of the loss
LR = 0.1
# (name, schedule, micro-batches, model chunks per rank, GPipe checkpoint mode, groups):
# "pp" runs 2-stage pipelines on make_subgroups' groups, 2 DP ranks averaging gradients;
# "world" runs one 4-stage pipeline on the default group.
CONFIGS = [
    ("gpipe", "gpipe", 4, 1, "never", "pp"),
    ("gpipe-except-last", "gpipe", 4, 1, "except_last", "pp"),
    ("gpipe-always", "gpipe", 3, 1, "always", "pp"),
    ("1f1b", "1f1b", 4, 1, "never", "pp"),
    ("interleaved", "interleaved", 4, 2, "never", "pp"),
    ("1f1b-4-stages", "1f1b", 3, 1, "never", "world"),
    ("interleaved-4-stages", "interleaved", 4, 2, "never", "world"),
]


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16),
        nn.Tanh(),
        nn.Linear(16, 16),
        nn.Tanh(),
        nn.Linear(16, 16),
        nn.Tanh(),
        nn.Linear(16, 4),
        nn.Tanh(),
    )


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, BATCH, 8, generator=g), torch.randn(STEPS, BATCH, 4, generator=g)


def _sgd(model: nn.Module) -> None:
    """Plain SGD by hand: torch.optim refuses a stage without parameters (a lone Tanh)."""
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
            p.grad = None


def train_single() -> tuple[nn.Sequential, list[torch.Tensor], list[torch.Tensor]]:
    """The reference: the whole model, one process, the full batch each step."""
    model, (xs, ys) = make_model(), make_data()
    losses, outputs = [], []
    for x, y in zip(xs, ys, strict=True):
        out = model(x)
        loss = nn.functional.mse_loss(out, y)
        loss.backward()
        _sgd(model)
        losses.append(loss.detach())
        outputs.append(out.detach())
    return model, losses, outputs


def _schedule(kind: str, model: nn.Module, micro: int, model_chunks: int, ckpt: str, group):
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    stage = partition(model, rank, size, num_model_chunks=model_chunks)
    if kind == "gpipe":
        return GPipe(stage, micro, process_group=group, checkpoint=ckpt)
    if kind == "1f1b":
        return PipeDream(stage, micro, process_group=group)
    return Interleaved1F1B(stage, micro, process_group=group)


def _train(pipe: nn.Module, dp_group=None) -> dict:
    """STEPS steps of ``pipe``; with ``dp_group`` each DP rank takes its share of the
    batch and gradients are averaged across the group."""
    xs, ys = make_data()
    if dp_group is not None:
        share = BATCH // dist.get_world_size(dp_group)
        rows = slice(dist.get_rank(dp_group) * share, (dist.get_rank(dp_group) + 1) * share)
        xs, ys = xs[:, rows], ys[:, rows]
    losses, outputs = [], []
    for x, y in zip(xs, ys, strict=True):
        loss, out = pipe.forward_backward(x, criterion=nn.functional.mse_loss, labels=(y,))
        if dp_group is not None:
            for p in pipe.parameters():
                dist.all_reduce(p.grad, group=dp_group)
                p.grad /= dist.get_world_size(dp_group)
        _sgd(pipe)
        losses.append(loss)
        outputs.append(out)
    params = [p.detach().clone() for p in pipe.parameters()]
    return {"params": params, "losses": losses, "outputs": outputs}


def train_all() -> dict:
    """make_subgroups(pp_size=2) on 4 ranks, then every configuration of CONFIGS in turn."""
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    try:
        make_subgroups(pp_size=3)
        bad_size = "no error"
    except ValueError as exc:
        bad_size = str(exc)
    dp, pp = make_subgroups(pp_size=2)
    results = {
        "bad_size": bad_size,
        "dp": dist.get_process_group_ranks(dp),
        "pp": dist.get_process_group_ranks(pp),
    }
    for name, kind, micro, chunks, ckpt, groups in CONFIGS:
        group, dp_group = (pp, dp) if groups == "pp" else (None, None)
        pipe = _schedule(kind, make_model(), micro, chunks, ckpt, group)
        results[name] = _train(pipe, dp_group)
    dist.destroy_process_group()
    return results
