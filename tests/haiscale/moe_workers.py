"""The rank function for the expert-parallel tests, and the MoE layer they share.

A layer of E Linear experts; each token picks K of them and sums their outputs with its
weights. ``moe_one_process`` runs every expert in one process; ``expert_parallel`` runs
the same layer with the experts spread over the ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from haiscale.moe import ExpertParallel

EXPERTS, HIDDEN, TOKENS, CHOICES = 4, 6, 10, 2
ROUTES = ("random", "all to rank 0")


def make_experts() -> nn.ModuleList:
    torch.manual_seed(0)
    return nn.ModuleList(nn.Linear(HIDDEN, HIDDEN) for _ in range(EXPERTS))


def batch(rank: int, route: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A rank's tokens (N, H), chosen experts (N, K) and weights (N, K)."""
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(TOKENS, HIDDEN, generator=g)
    experts = EXPERTS if route == "random" else CHOICES  # rank 0 holds experts 0 and 1
    ids = torch.stack([torch.randperm(experts, generator=g)[:CHOICES] for _ in range(TOKENS)])
    return x, ids, torch.rand(TOKENS, CHOICES, generator=g)


def moe_one_process(
    experts: nn.ModuleList, x: torch.Tensor, ids: torch.Tensor, w: torch.Tensor
) -> torch.Tensor:
    rows = [
        sum(w[i, k] * experts[int(ids[i, k])](x[i]) for k in range(CHOICES)) for i in range(TOKENS)
    ]
    return torch.stack(rows)


def moe_expert_parallel(
    ep: ExpertParallel, experts: nn.ModuleList, x: torch.Tensor, ids: torch.Tensor, w: torch.Tensor
) -> torch.Tensor:
    received, counts, context = ep.dispatch(x, ids)
    chunks = received.split(counts.tolist())
    outputs = torch.cat([experts[ep.first_expert + j](c) for j, c in enumerate(chunks)])
    return (ep.combine(outputs, context) * w[..., None]).sum(1)


def expert_parallel() -> dict:
    """Per route: this rank's output, its tokens' gradient and its experts' gradients."""
    dist.init_process_group("gloo")
    ep = ExpertParallel(EXPERTS)
    experts = make_experts()
    mine = [
        p
        for e in range(ep.first_expert, ep.first_expert + ep.local_experts)
        for p in experts[e].parameters()
    ]
    out: dict = {"first_expert": ep.first_expert}
    for route in ROUTES:
        x, ids, w = batch(dist.get_rank(), route)
        x.requires_grad_()
        y = moe_expert_parallel(ep, experts, x, ids, w)
        grads = torch.autograd.grad(y.square().sum(), [x, *mine], materialize_grads=True)
        out[route] = {"y": y.detach(), "x_grad": grads[0], "expert_grads": grads[1:]}
    # One choice per token, experts left out: combine gives back exactly the tokens.
    received, _, context = ep.dispatch(x, ids[:, 0])
    out["round_trip"] = ep.combine(received, context).detach()
    out["tokens"] = x.detach()
    try:
        ExpertParallel(3)
    except ValueError as exc:
        out["uneven"] = str(exc)
    dist.destroy_process_group()
    return out
