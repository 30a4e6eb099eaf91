"""Rank functions for tests whose ranks are spawned, not forked (CUDA needs it, and so
does DDP, whose teardown once hung in a rank forked from a long-running test process).
A spawned rank imports its function by name, hence this module of their own."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

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


def train_ddp(backend: str) -> dict[str, torch.Tensor]:
    """Four DDP steps of a small MLP on ``backend``; returns the final weights."""
    # A short timeout: a stuck call fails with a message instead of waiting 30 minutes.
    dist.init_process_group(backend, timeout=timedelta(seconds=60))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    # Tiny buckets: several all-reduces overlap with the backward pass.
    ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.004)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(100 + dist.get_rank())
    for _ in range(4):
        x, y = torch.randn(16, 32, generator=g), torch.randn(16, 4, generator=g)
        opt.zero_grad()
        torch.nn.functional.mse_loss(ddp(x), y).backward()
        opt.step()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dist.destroy_process_group()
    return state
