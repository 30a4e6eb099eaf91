"""Rank functions for the pipeline tests. Ranks are spawned, so each imports its
function from this module by name."""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from haiscale.pipeline import GPipe, Interleaved1F1B, PipeDream, make_subgroups, partition

STEPS = 3
BATCH = 10  # micro-batches of 3, 3, 2, 2 rows: unequal shares of the loss
LR = 0.1
# (name, schedule, micro-batches, model chunks per rank, GPipe checkpoint mode)
CONFIGS = [
    ("gpipe", "gpipe", 4, 1, "never"),
    ("gpipe-except-last", "gpipe", 4, 1, "except_last"),
    ("gpipe-always", "gpipe", 3, 1, "always"),
    ("1f1b", "1f1b", 4, 1, "never"),
    ("interleaved", "interleaved", 4, 2, "never"),
]


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
        nn.Linear(16, 4),
    )  # fmt: skip


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(STEPS, BATCH, 8, generator=g), torch.randn(STEPS, BATCH, 4, generator=g)


def train_single() -> tuple[nn.Sequential, list[torch.Tensor], list[torch.Tensor]]:
    """The reference: the whole model, one process, the full batch each step."""
    model, (xs, ys) = make_model(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    losses, outputs = [], []
    for x, y in zip(xs, ys, strict=True):
        opt.zero_grad()
        out = model(x)
        loss = nn.functional.mse_loss(out, y)
        loss.backward()
        opt.step()
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
    opt = torch.optim.SGD(pipe.parameters(), lr=LR)
    losses, outputs = [], []
    for x, y in zip(xs, ys, strict=True):
        opt.zero_grad()
        loss, out = pipe.forward_backward(x, criterion=nn.functional.mse_loss, labels=(y,))
        if dp_group is not None:
            for p in pipe.parameters():
                dist.all_reduce(p.grad, group=dp_group)
                p.grad /= dist.get_world_size(dp_group)
        opt.step()
        losses.append(loss)
        outputs.append(out)
    params = [p.detach().clone() for p in pipe.parameters()]
    return {"params": params, "losses": losses, "outputs": outputs}


def train_all() -> dict[str, dict]:
    """Every configuration of CONFIGS, trained on the default group in turn."""
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    results = {
        name: _train(_schedule(kind, make_model(), micro, chunks, ckpt, None))
        for name, kind, micro, chunks, ckpt in CONFIGS
    }
    dist.destroy_process_group()
    return results


def train_subgroups() -> dict:
    """make_subgroups(pp_size=2) on 4 ranks, then 1F1B per pipeline with DP averaging."""
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    try:
        make_subgroups(pp_size=3)
        bad_size = "no error"
    except ValueError as exc:
        bad_size = str(exc)
    dp, pp = make_subgroups(pp_size=2)
    result = {
        "bad_size": bad_size,
        "dp": dist.get_process_group_ranks(dp),
        "pp": dist.get_process_group_ranks(pp),
        **_train(_schedule("1f1b", make_model(), 2, 1, "never", pp), dp_group=dp),
    }
    dist.destroy_process_group()
    return result
