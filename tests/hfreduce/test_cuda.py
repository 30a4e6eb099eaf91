"""hfreduce on CUDA tensors: pinned staging, side-stream copies, same results as on CPU.

Skipped without a GPU; two ranks may share one GPU, since no NCCL is involved.
"""

from __future__ import annotations

import pytest
import torch

from hfreduce.launch import run_ranks

from . import rank_workers

CHUNK = 1 << 16
ENV = {"HFREDUCE_CHUNK_BYTES": str(CHUNK)}
SIZES = [0, 1, 7, CHUNK // 4 - 1, CHUNK // 4 + 1, 5 * CHUNK // 4 + 3]


@pytest.mark.gpu
@pytest.mark.parametrize(("nodes", "per_node"), [(1, 2), (2, 1)], ids=str)
def test_cuda_tensors_match_torch_sum(nodes: int, per_node: int) -> None:
    outcomes = run_ranks(
        rank_workers.cuda_cases,
        nodes=nodes,
        ranks_per_node=per_node,
        args=(SIZES,),
        env=ENV,
        start_method="spawn",
        timeout=300,
    )
    world = nodes * per_node
    for dtype in rank_workers.DTYPES:
        for n in SIZES:
            total = sum(rank_workers.input_for(r, dtype, n).double() for r in range(world))
            want = torch.as_tensor(total).to(dtype)
            for o in outcomes:
                torch.testing.assert_close(o.value[(dtype, n)], want, rtol=2e-2, atol=6e-2)
    for o in outcomes:
        for k, y in enumerate(o.value["async"]):
            assert torch.equal(y, torch.full_like(y, float(sum(r + k for r in range(world)))))
