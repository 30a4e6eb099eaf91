"""Rank functions for the GPU tests. They live in a module of their own because CUDA
ranks are spawned, not forked, and a spawned rank imports its function by name."""

from __future__ import annotations

import os

import torch

import hfreduce

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def cuda_cases(sizes: list[int]) -> dict:
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    torch.cuda.set_device(device)
    comm = hfreduce.init()
    results = {}
    for dtype in DTYPES:
        for n in sizes:
            g = torch.Generator().manual_seed(n * 10 + comm.rank)
            x = torch.randn(n, generator=g).to(dtype).to(device)
            comm.all_reduce(x)
            results[(dtype, n)] = x.cpu()
    # Asynchronous calls on CUDA tensors, waited on through their futures.
    ys = [torch.full((5000 * (k + 1),), float(comm.rank + k), device=device) for k in range(3)]
    works = [comm.all_reduce(y, async_op=True) for y in ys]
    for w in works:
        w.get_future().wait()
    results["async"] = [y.cpu() for y in ys]
    hfreduce.destroy()
    return results


def input_for(rank: int, dtype: torch.dtype, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(n * 10 + rank)
    return torch.randn(n, generator=g).to(dtype)
