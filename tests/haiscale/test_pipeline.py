"""Pipeline schedules train the same weights as one process on the full batch."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from haiscale.pipeline import GPipe, partition
from haiscale.pipeline.orders import gpipe_order, interleaved_order, one_f_one_b_order
from hfreduce.launch import run_ranks

from . import pipeline_workers as workers

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def reference():
    return workers.train_single()


@pytest.fixture(scope="module")
def four_ranks() -> list[dict]:
    outcomes = run_ranks(workers.train_all, ranks_per_node=4, timeout=120, start_method="spawn")
    return [o.value for o in outcomes]


def _check_stage_params(reference_model, params: list[torch.Tensor], rank, size, model_chunks):
    stage = partition(reference_model, rank, size, num_model_chunks=model_chunks)
    chunks = stage if isinstance(stage, list) else [stage]
    expected = [p for chunk in chunks for p in chunk.parameters()]
    assert len(params) == len(expected)
    for got, want in zip(params, expected, strict=True):
        torch.testing.assert_close(got, want, **TOL)


def test_subgroups_layout(four_ranks):
    assert [r["pp"] for r in four_ranks] == [[0, 1], [0, 1], [2, 3], [2, 3]]
    assert [r["dp"] for r in four_ranks] == [[0, 2], [1, 3], [0, 2], [1, 3]]
    assert all("pp_size 3 does not divide the world size 4" in r["bad_size"] for r in four_ranks)


@pytest.mark.parametrize("config", workers.CONFIGS, ids=[c[0] for c in workers.CONFIGS])
def test_schedule_matches_single_process(four_ranks, reference, config):
    name, _, _, model_chunks, _, groups = config
    # Two 2-stage pipelines, each on half the batch, or one 4-stage pipeline.
    size, last_stages = (2, [1, 3]) if groups == "pp" else (4, [3])
    model, losses, outputs = reference
    for rank, result in enumerate(four_ranks):
        _check_stage_params(model, result[name]["params"], rank % size, size, model_chunks)
        if rank not in last_stages:
            assert result[name]["losses"] == result[name]["outputs"] == [None] * workers.STEPS
    last = [four_ranks[r][name] for r in last_stages]
    # Each DP rank's mean loss covers its half: the halves' mean is the full batch's.
    got_losses = torch.stack([torch.stack(r["losses"]) for r in last]).mean(0)
    torch.testing.assert_close(got_losses, torch.stack(losses), **TOL)
    got_outputs = torch.cat([torch.stack(r["outputs"]) for r in last], dim=1)
    torch.testing.assert_close(got_outputs, torch.stack(outputs), **TOL)


def test_partition_splits_layers_and_rejects_bad_balance():
    model = workers.make_model()
    stage = partition(model, 1, 2, balance=[3, 5])
    assert list(stage) == list(model)[3:]
    chunks = partition(model, 0, 2, balance=[1, 2, 3, 2], num_model_chunks=2)
    assert [list(c) for c in chunks] == [list(model)[:1], list(model)[3:6]]
    with pytest.raises(ValueError, match="sums to 6 but the model has 8 layers"):
        partition(model, 0, 2, balance=[3, 3])
    with pytest.raises(ValueError, match="has 2 entries but the pipeline has 4 stages"):
        partition(model, 0, 2, balance=[3, 5], num_model_chunks=2)
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        partition(model, 2, 2)


@pytest.fixture
def one_rank(tmp_path):
    """A one-rank gloo group in this process: a pipeline of one stage."""
    dist.init_process_group(
        "gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


def test_one_stage_gpipe_is_gradient_accumulation(one_rank, reference):
    pipe = GPipe(workers.make_model(), chunks=4, checkpoint="except_last")
    result = workers._train(pipe)
    model, losses, outputs = reference
    for got, want in zip(result["params"], model.parameters(), strict=True):
        torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(torch.stack(result["losses"]), torch.stack(losses), **TOL)


def test_schedules_reject_bad_arguments(one_rank):
    x, y = torch.zeros(3, 8), torch.zeros(3, 4)
    with pytest.raises(ValueError, match="checkpoint='sometimes'; choose one of"):
        GPipe(workers.make_model(), 2, checkpoint="sometimes")
    with pytest.raises(ValueError, match=r"chunks \(micro-batches per step\) must be at least 1"):
        GPipe(workers.make_model(), 0)
    pipe = GPipe(workers.make_model(), 4)
    with pytest.raises(ValueError, match="x is a batch of 3; it needs at least chunks=4 rows"):
        pipe.forward_backward(x, criterion=torch.nn.functional.mse_loss, labels=(y,))
    with pytest.raises(ValueError, match="the last pipeline stage needs a criterion"):
        pipe.forward_backward(torch.zeros(4, 8))


def _runs_to_completion(orders: list[list[tuple[str, int, int]]], micro: int) -> bool:
    """Simulate ranks running their orders with asynchronous sends: an action waits
    only for what it receives. False when the ranks deadlock."""
    size, chunks = len(orders), 1 + max(c for order in orders for _, c, _ in order)
    stages = size * chunks
    done: set[tuple[str, int, int]] = set()
    pos = [0] * size
    progress = True
    while progress:
        progress = False
        for rank, order in enumerate(orders):
            while pos[rank] < len(order):
                op, chunk, m = order[pos[rank]]
                s = chunk * size + rank
                needs = [("F", s - 1, m)] if op == "F" and s > 0 else []
                if op == "B":
                    needs = [("F", s, m)] + ([("B", s + 1, m)] if s < stages - 1 else [])
                if not all(n in done for n in needs):
                    break
                done.add((op, s, m))
                pos[rank] += 1
                progress = True
    return len(done) == 2 * stages * micro


@pytest.mark.parametrize("size,micro", [(2, 1), (2, 4), (4, 3), (4, 8)])
def test_orders_cover_every_pass_without_deadlock(size, micro):
    gpipe = [gpipe_order(micro)] * size
    one_f_one_b = [one_f_one_b_order(micro, size, r) for r in range(size)]
    for orders in (gpipe, one_f_one_b):
        assert all(sorted(o) == sorted(gpipe_order(micro)) for o in orders)
        assert _runs_to_completion(orders, micro)
    # 1F1B keeps at most size - rank micro-batches in flight.
    for rank, order in enumerate(one_f_one_b):
        live = [
            sum(op == "F" for op, _, _ in order[:i]) - sum(op == "B" for op, _, _ in order[:i])
            for i in range(len(order))
        ]
        assert max(live) <= min(size - rank, micro)


@pytest.mark.parametrize("size,micro,chunks", [(2, 2, 2), (2, 4, 2), (4, 8, 2), (4, 4, 3)])
def test_interleaved_order_is_complete_and_deadlock_free(size, micro, chunks):
    orders = [interleaved_order(micro, size, r, chunks) for r in range(size)]
    expected = sorted((op, c, m) for op in "FB" for c in range(chunks) for m in range(micro))
    assert all(sorted(o) == expected for o in orders)
    assert _runs_to_completion(orders, micro)


def test_interleaved_rejects_micro_batches_not_a_multiple_of_size():
    with pytest.raises(ValueError, match=r"micro-batches \(3\) to be a multiple"):
        interleaved_order(3, 2, 0, chunks=2)
