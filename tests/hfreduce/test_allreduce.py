"""hfreduce.all_reduce across real processes: results, bad calls, dead and hung ranks.

Chunks are 4 KiB here so that "many chunks" costs little; every layout runs the inter-node
path over loopback when it has more than one virtual node.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import torch

import hfreduce
from hfreduce import ReduceOp
from hfreduce.arena import SHM_DIR, SHM_PREFIX, sweep_stale_segments
from hfreduce.launch import RankOutcome, run_ranks

CHUNK = 4096
ENV = {"HFREDUCE_CHUNK_BYTES": str(CHUNK), "HFREDUCE_TIMEOUT": "60"}
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int64]
# (rtol, atol). Half types are summed in float32 within a node, but each node's partial
# sum is rounded once before it crosses the network: with inputs ~N(0,1) over <= 4 ranks
# partial sums reach ~8, where one float16 ulp is 0.008 and one bfloat16 ulp 0.06.
TOLERANCE = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (2e-3, 8e-3),
    torch.bfloat16: (1.6e-2, 6e-2),
    torch.float64: (1e-12, 1e-12),
}


def _sizes(dtype: torch.dtype) -> list[int]:
    per_chunk = CHUNK // dtype.itemsize
    return [0, 1, 7, per_chunk - 1, per_chunk, per_chunk + 1, 5 * per_chunk + 3]


CASES = [
    (case, dtype, op, n)
    for case, (dtype, op, n) in enumerate(
        (dtype, op, n) for dtype in DTYPES for op in ReduceOp for n in _sizes(dtype)
    )
]


def _input(rank: int, dtype: torch.dtype, n: int, case: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(case * 1000 + rank)
    if dtype.is_floating_point:
        return torch.randn(n, generator=g).to(dtype)
    return torch.randint(-1000, 1000, (n,), generator=g, dtype=dtype)


def _expected(dtype: torch.dtype, op: ReduceOp, n: int, case: int, world: int) -> torch.Tensor:
    xs = torch.stack([_input(r, dtype, n, case).to(torch.float64) for r in range(world)])
    if op == ReduceOp.MAX:
        return xs.max(0).values.to(dtype)
    if op == ReduceOp.MIN:
        return xs.min(0).values.to(dtype)
    total = xs.sum(0)
    if op == ReduceOp.AVG:
        total = total / world if dtype.is_floating_point else torch.trunc(total / world)
    return total.to(dtype)


def _assert_matches(got: torch.Tensor, want: torch.Tensor, label: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, label
    if want.dtype.is_floating_point:
        rtol, atol = TOLERANCE[want.dtype]
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=label)
    else:
        assert torch.equal(got, want), label


@pytest.fixture(autouse=True)
def no_shm_leak():
    """Whatever a test does to its ranks, no hfreduce segment stays in /dev/shm."""
    before = set(SHM_DIR.glob(f"{SHM_PREFIX}*"))
    yield
    assert set(SHM_DIR.glob(f"{SHM_PREFIX}*")) - before == set()


# -- results --------------------------------------------------------------------------


def _all_cases() -> dict:
    comm = hfreduce.init()
    results = {}
    for case, dtype, op, n in CASES:
        x = _input(comm.rank, dtype, n, case)
        comm.all_reduce(x, op)
        results[case] = x
    # A non-contiguous tensor (a transposed view) is reduced in place too.
    base = torch.arange(12.0).reshape(3, 4) * (comm.rank + 1)
    view = base.t()
    comm.all_reduce(view)
    results["transposed"] = base
    hfreduce.destroy()
    return results


@pytest.mark.parametrize(
    ("nodes", "per_node"), [(1, 1), (1, 2), (1, 4), (2, 1), (2, 2), (3, 1)], ids=str
)
def test_every_dtype_op_and_size_matches_torch(nodes: int, per_node: int) -> None:
    world = nodes * per_node
    outcomes = run_ranks(_all_cases, nodes=nodes, ranks_per_node=per_node, env=ENV, timeout=150)
    for case, dtype, op, n in CASES:
        want = _expected(dtype, op, n, case, world)
        for o in outcomes:
            _assert_matches(o.value[case], want, f"rank {o.rank} {dtype} {op.name} n={n}")
    want = torch.arange(12.0).reshape(3, 4) * sum(range(1, world + 1))
    for o in outcomes:
        assert torch.equal(o.value["transposed"], want)


def _async_calls() -> list[torch.Tensor]:
    comm = hfreduce.init()
    tensors = [torch.full((3000 * (k + 1),), float(comm.rank + k)) for k in range(4)]
    works = [comm.all_reduce(t, async_op=True) for t in tensors]
    chained = works[0].get_future().then(lambda f: f.value()[0].sum().item())
    tail = torch.ones(5)
    comm.all_reduce(tail)  # synchronous, queued behind the asynchronous ones
    assert all(w.is_completed() for w in works)
    for w in works:
        w.wait()
    hfreduce.destroy()
    return [*tensors, tail, torch.tensor(chained.wait())]


def test_async_calls_complete_in_order_with_futures() -> None:
    outcomes = run_ranks(_async_calls, nodes=2, ranks_per_node=2, env=ENV, timeout=120)
    world = 4
    for o in outcomes:
        *tensors, tail, chained = o.value
        for k, t in enumerate(tensors):
            assert torch.equal(t, torch.full_like(t, float(sum(r + k for r in range(world)))))
        assert torch.equal(tail, torch.full((5,), 4.0))
        assert chained.item() == pytest.approx(3000 * sum(range(world)))


@pytest.mark.slow
def test_over_two_gibibytes() -> None:
    def big() -> bool:
        comm = hfreduce.init()
        n = (2 << 30) // 4 + 1024  # just over 2 GiB of float32
        x = torch.full((n,), float(comm.rank + 1))
        comm.all_reduce(x)
        ok = bool((x == 3.0).all())
        hfreduce.destroy()
        return ok

    outcomes = run_ranks(big, nodes=1, ranks_per_node=2, timeout=170)
    assert [o.value for o in outcomes] == [True, True]


# -- bad calls --------------------------------------------------------------------------


def _mismatch(kind: str) -> tuple[str, torch.Tensor]:
    comm = hfreduce.init()
    rank, world, per_node = comm.rank, comm.world_size, comm.topology.local_size
    n, dtype, op = 5000, torch.float32, ReduceOp.SUM
    if kind == "local numel" and rank == 1:
        n += 1
    if kind == "cross-node numel" and rank >= per_node:
        n -= 3
    if kind == "dtype" and rank == world - 1:
        dtype = torch.float64
    if kind == "op" and rank == world - 1:
        op = ReduceOp.MAX
    try:
        comm.all_reduce(torch.ones(n, dtype=dtype), op)
        message = "no error"
    except hfreduce.MismatchError as exc:
        message = str(exc)
    after = torch.full((20000,), float(rank))  # the communicator must still work
    comm.all_reduce(after)
    hfreduce.destroy()
    return message, after


@pytest.mark.parametrize(
    ("kind", "nodes", "per_node"),
    [
        ("local numel", 1, 2),
        ("local numel", 2, 2),
        ("cross-node numel", 2, 2),
        ("dtype", 2, 2),
        ("op", 1, 4),
        ("op", 3, 1),
    ],
)
def test_mismatched_calls_raise_everywhere_then_recover(kind: str, nodes: int, per_node: int):
    outcomes = run_ranks(
        _mismatch, nodes=nodes, ranks_per_node=per_node, args=(kind,), env=ENV, timeout=120
    )
    world = nodes * per_node
    for o in outcomes:
        message, after = o.value
        assert "every rank must pass the same size, dtype and op" in message, (o.rank, message)
        assert torch.equal(after, torch.full((20000,), float(sum(range(world)))))


def test_use_before_init_and_unsupported_input() -> None:
    hfreduce.destroy()
    with pytest.raises(hfreduce.NotInitializedError, match="before hfreduce.init"):
        hfreduce.all_reduce(torch.ones(3))

    def probe() -> list[str]:
        comm = hfreduce.init()
        errors = []
        for tensor, op in [
            (torch.ones(3, dtype=torch.bool), ReduceOp.SUM),
            (torch.ones(3, dtype=torch.complex64), ReduceOp.SUM),
            (torch.ones(3, device="meta"), ReduceOp.SUM),
            (torch.ones(3), "PRODUCT"),
        ]:
            try:
                comm.all_reduce(tensor, op)
                errors.append("accepted")
            except hfreduce.UnsupportedError as exc:
                errors.append(str(exc))
        hfreduce.destroy()
        return errors

    errors = run_ranks(probe, nodes=1, ranks_per_node=2, env=ENV, timeout=60)[0].value
    assert "dtype torch.bool is not supported" in errors[0]
    assert "dtype torch.complex64 is not supported" in errors[1]
    assert "device meta is not supported" in errors[2]
    assert "reduce op 'PRODUCT' is not supported" in errors[3]


# -- dead and hung ranks -----------------------------------------------------------------


def _die_mid_call(victim: int) -> str:
    comm = hfreduce.init()
    x = torch.ones(8 << 20)  # 32 MiB: long enough to be killed in the middle
    if comm.rank == victim:
        threading.Thread(target=comm.all_reduce, args=(x,), daemon=True).start()
        time.sleep(0.05)
        os._exit(3)
    try:
        comm.all_reduce(x)
        for _ in range(3):
            comm.all_reduce(x)
    except hfreduce.HfreduceError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _survivors(outcomes: list[RankOutcome], victim: int) -> list[RankOutcome]:
    assert outcomes[victim].exitcode == 3
    return [o for o in outcomes if o.rank != victim]


@pytest.mark.parametrize(("nodes", "per_node"), [(1, 2), (2, 2), (3, 1)], ids=str)
def test_a_rank_dying_mid_call_fails_every_other_rank(nodes: int, per_node: int) -> None:
    victim = 1
    started = time.monotonic()
    outcomes = run_ranks(
        _die_mid_call,
        nodes=nodes,
        ranks_per_node=per_node,
        args=(victim,),
        env={**ENV, "HFREDUCE_TIMEOUT": "20"},
        timeout=60,
        check=False,
    )
    assert time.monotonic() - started < 45
    for o in _survivors(outcomes, victim):
        assert o.error is None, o.error
        assert o.value.startswith("PeerLostError"), (o.rank, o.value)
        assert f"rank {victim}" in o.value, (o.rank, o.value)


def _hang(victim: int) -> str:
    comm = hfreduce.init()
    if comm.rank == victim:
        time.sleep(8)  # alive but never calls
        return "slept"
    try:
        comm.all_reduce(torch.ones(1000))
    except hfreduce.HfreduceError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


@pytest.mark.parametrize(("nodes", "per_node"), [(1, 2), (2, 2)], ids=str)
def test_a_hung_rank_times_out_with_its_name(nodes: int, per_node: int) -> None:
    victim = 1
    outcomes = run_ranks(
        _hang,
        nodes=nodes,
        ranks_per_node=per_node,
        args=(victim,),
        env={**ENV, "HFREDUCE_TIMEOUT": "2"},
        timeout=60,
    )
    for o in outcomes:
        if o.rank == victim:
            continue
        assert o.value.split(":")[0] in ("CollectiveTimeoutError", "PeerLostError"), o.value
        assert f"rank {victim}" in o.value, (o.rank, o.value)


def test_stale_segments_of_dead_processes_are_swept(tmp_path: Path) -> None:
    dead = tmp_path / f"{SHM_PREFIX}999999999-abc"
    alive = tmp_path / f"{SHM_PREFIX}{os.getpid()}-abc"
    other = tmp_path / "someone-else"
    for path in (dead, alive, other):
        path.write_bytes(b"x")
    assert sweep_stale_segments(tmp_path) == [dead.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name])
