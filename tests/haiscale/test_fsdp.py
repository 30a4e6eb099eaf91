"""haiscale FSDP on 2 CPU ranks (gloo and hfreduce): training equals single-process
training on the concatenated batch, full and sharded state dicts round-trip, each rank
holds about half the parameter, gradient and optimiser bytes, and bf16 compute trains."""

from __future__ import annotations

import pytest
import torch

from hfreduce.launch import run_ranks

from . import fsdp_workers

WORLD = 2
# (backend, wrap policy given as, backward prefetch)
SETUPS = [("gloo", "set", "pre"), ("hfreduce", "callable", "post")]


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, torch.Tensor], int]:
    return fsdp_workers.train_single(WORLD)


@pytest.fixture(scope="module", params=SETUPS, ids=lambda s: f"{s[0]}-{s[2]}")
def ranks(request, tmp_path_factory) -> list[dict]:
    folder = str(tmp_path_factory.mktemp("fsdp"))
    outcomes = run_ranks(
        fsdp_workers.train_fsdp,
        nodes=1,
        ranks_per_node=WORLD,
        args=(*request.param, folder),
        timeout=120,
        start_method="spawn",
    )
    return [o.value for o in outcomes]


def assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-5, msg=name)


def test_each_block_is_a_unit(ranks):
    assert [r["units"] for r in ranks] == [3, 3]  # the root and two blocks


def test_next_unit_is_gathered_ahead(ranks, request):
    prefetch = request.node.callspec.params["ranks"][2]
    for r in ranks:
        assert r["prefetched"] == {"forward": True, "backward": prefetch == "pre"}


def test_training_equals_single_process(ranks, reference):
    for r in ranks:
        assert_same(r["state"], reference[0])
    assert ranks[0]["rank0_only"].keys() == reference[0].keys()
    assert ranks[1]["rank0_only"] == {}


def test_summoned_parameters_equal_single_process(ranks, reference):
    for r in ranks:
        summoned = {n.replace("module.", ""): p for n, p in r["summoned"].items()}
        assert_same(summoned, {n: p for n, p in reference[0].items() if "running" not in n})


def test_summon_writes_back(ranks, reference):
    for r in ranks:
        torch.testing.assert_close(r["written_back"], reference[0]["0.bias"] + 1.0)


def test_state_dicts_round_trip(ranks):
    for r in ranks:
        assert_same(r["sharded_loaded"], r["state"])
        assert_same(r["full_loaded"], r["state"])


def test_each_rank_holds_about_half(ranks, reference):
    unsharded = reference[1]
    for r in ranks:
        assert r["bytes"] <= 0.55 * unsharded, (r["bytes"], unsharded)


def test_bf16_compute_trains_with_fp32_masters(ranks):
    for r in ranks:
        losses = r["mixed"]["losses"]
        assert losses[-1] < 0.8 * losses[0], losses
        assert r["mixed"]["out_dtype"] == torch.bfloat16
        assert r["mixed"]["dtypes"] == {torch.float32}
