"""Expert parallelism over 2 gloo ranks computes what one process with every expert does:
outputs, token gradients and expert gradients, also when one rank receives nothing."""

from __future__ import annotations

import pytest
import torch

from hfreduce.launch import run_ranks

from . import moe_workers
from .moe_workers import ROUTES, batch, make_experts, moe_one_process

WORLD = 2


@pytest.fixture(scope="module")
def outcomes() -> list:
    return run_ranks(
        moe_workers.expert_parallel,
        nodes=1,
        ranks_per_node=WORLD,
        timeout=120,
        start_method="spawn",
    )


@pytest.mark.parametrize("route", ROUTES)
def test_matches_every_expert_in_one_process(outcomes: list, route: str) -> None:
    experts = make_experts()
    inputs = [batch(rank, route) for rank in range(WORLD)]
    for x, _, _ in inputs:
        x.requires_grad_()
    ys = [moe_one_process(experts, *b) for b in inputs]
    params = list(experts.parameters())
    loss = sum(y.square().sum() for y in ys)
    grads = torch.autograd.grad(loss, [x for x, _, _ in inputs] + params, materialize_grads=True)
    x_grads, expert_grads = grads[:WORLD], grads[WORLD:]
    for o in outcomes:
        got = o.value[route]
        torch.testing.assert_close(got["y"], ys[o.rank].detach())
        torch.testing.assert_close(got["x_grad"], x_grads[o.rank])
        # Each Linear has a weight and a bias; this rank's experts' come first-to-last.
        first = 2 * o.value["first_expert"]
        for got_grad, want in zip(
            got["expert_grads"], expert_grads[first : first + 4], strict=True
        ):
            torch.testing.assert_close(got_grad, want)


def test_shares_round_trip_and_uneven_splits(outcomes: list) -> None:
    assert [o.value["first_expert"] for o in outcomes] == [0, 2]
    for o in outcomes:
        assert torch.equal(o.value["round_trip"], o.value["tokens"])
    assert "num_experts=3 does not split over 2" in outcomes[0].value["uneven"]
