"""haiscale DDP trains the same weights as one process on the whole batch, over gloo and
hfreduce, with several uneven buckets, gradient accumulation and unused parameters."""

from __future__ import annotations

import pytest
import torch

from hfreduce.launch import run_ranks

from . import ddp_workers
from .ddp_workers import TinyNet, train_reference

# Small chunks: the tiny buckets still span several pipeline steps of hfreduce.
ENV = {"HFREDUCE_CHUNK_BYTES": "4096"}


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.parametrize(
    ("backend", "nodes", "per_node"),
    [("gloo", 1, 2), ("hfreduce", 1, 2), ("hfreduce", 2, 2)],
    ids=["gloo-1x2", "hfreduce-1x2", "hfreduce-2x2"],
)
def test_ddp_matches_one_process(backend: str, nodes: int, per_node: int) -> None:
    world = nodes * per_node
    outcomes = run_ranks(
        ddp_workers.scenarios,
        nodes=nodes,
        ranks_per_node=per_node,
        args=(backend,),
        env=ENV,
        timeout=120,
        start_method="spawn",
    )
    start = TinyNet(seed=0).state_dict()
    trained = train_reference(TinyNet(seed=0), world)
    accumulated = train_reference(TinyNet(seed=0), world, micro=2)
    unused = train_reference(TinyNet(seed=0, extra=True, spare=True), world, extra_rank=0)
    assert not torch.allclose(trained["head.weight"], start["head.weight"])  # it did train
    # Only rank 0 uses `extra`; the others all-reduce zeros for it, and it still trains.
    assert not torch.allclose(unused["extra.weight"], TinyNet(0, extra=True).extra.weight)
    for o in outcomes:
        sizes = o.value["bucket_sizes"]
        assert len(sizes) >= 3 and len(set(sizes)) > 1, sizes
        _assert_same(o.value["train"], trained)
        assert o.value["grads_in_bucket"]  # autograd's buffers freed during backward
        assert not any(o.value["spins"]), o.value["spins"]
        assert len(o.value["spins"]) >= (3 if backend == "hfreduce" else 0)
        _assert_same(o.value["accumulate"], accumulated)
        _assert_same(o.value["unused"], unused)
        assert torch.equal(o.value["unused"]["spare.weight"], unused["spare.weight"])
        assert o.value["spare_grad_is_none"]
        assert o.value["error"] is not None
        assert "'spare.weight'" in o.value["error"] and "'spare.bias'" in o.value["error"]
        assert "find_unused_parameters=True" in o.value["error"]
        assert "'spare.weight' got a gradient after it was marked unused" in o.value["late_error"]
    # Rank r fed rows of r: ranks still in sync would all hold the same gradient.
    assert not torch.equal(
        outcomes[0].value["grad_after_stop"], outcomes[1].value["grad_after_stop"]
    )
