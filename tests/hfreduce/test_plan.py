"""How a call's tensor is cut: chunks tile it, a small first chunk across nodes, and the
slices and tree halves of each chunk tile that chunk."""

from __future__ import annotations

import pytest
import torch

from hfreduce.kernels import ReduceOp
from hfreduce.plan import FIRST_CHUNK_BYTES, CallPlan


def _plan(numel: int, multi_node: bool, chunk_elems: int = 1 << 20, local_rank: int = 0):
    return CallPlan(
        call=0,
        base=0,
        numel=numel,
        dtype=torch.float32,
        op=ReduceOp.SUM,
        chunk_elems=chunk_elems,
        local_rank=local_rank,
        local_size=2,
        world_size=4,
        multi_node=multi_node,
    )


@pytest.mark.parametrize("numel", [0, 1, 1000, FIRST_CHUNK_BYTES // 4 + 1, (5 << 20) + 3])
@pytest.mark.parametrize("multi_node", [False, True])
def test_chunks_tile_the_tensor(numel: int, multi_node: bool) -> None:
    plan = _plan(numel, multi_node)
    chunks = [plan.chunk(i) for i in range(plan.nchunks)]
    assert chunks[0][0] == 0 and chunks[-1][1] == numel
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:], strict=False))
    assert all(hi - lo <= plan.chunk_elems for lo, hi in chunks)
    assert numel == 0 or all(hi > lo for lo, hi in chunks)


def test_only_calls_across_nodes_start_with_a_short_chunk() -> None:
    numel = (5 << 20) + 3
    first = FIRST_CHUNK_BYTES // 4
    assert _plan(numel, multi_node=True).chunk(0) == (0, first)
    assert _plan(numel, multi_node=True).chunk(1) == (first, first + (1 << 20))
    assert _plan(numel, multi_node=True).nchunks == 6  # the rest in 5 chunks, the last short
    assert _plan(numel, multi_node=False).chunk(0) == (0, 1 << 20)
    # A chunk size below the first chunk's cap is used as it is.
    assert _plan(numel, multi_node=True, chunk_elems=1024).chunk(0) == (0, 1024)


def test_slices_and_halves_tile_each_chunk() -> None:
    plan = _plan((5 << 20) + 3, multi_node=True)
    for i in range(plan.nchunks):
        lo, hi = plan.chunk(i)
        slices = [_plan(plan.numel, True, local_rank=r).my_slice(i) for r in range(2)]
        assert slices[0][0] == 0 and slices[0][1] == slices[1][0] and slices[1][1] == hi - lo
        halves = [plan.half(i, tree) for tree in (0, 1)]
        assert halves[0][0] == slices[0][0] and halves[0][1] == halves[1][0]
        assert halves[1][1] == slices[0][1]
