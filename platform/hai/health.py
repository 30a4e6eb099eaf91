"""Node health checks: each returns None when healthy, else one line saying what failed.

The paper's validator (Fire-Flyer §VII-B) checks CPU and memory bandwidth, GPU memory and
a full GEMM; these are the short versions an agent can afford at start and then every
few minutes. A failure marks the node unhealthy so it gets no new work.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# Floors far below any server CPU, so only a broken or badly throttled node fails.
MIN_GFLOPS = 0.5
MIN_MEMORY_GBPS = 0.5


def cpu_check() -> str | None:
    a = np.random.default_rng(0).random((256, 256), dtype=np.float32)
    fastest = float("inf")
    for _ in range(10):  # the fastest GEMM, so a neighbour's burst does not fail the node
        began = time.perf_counter()
        a @ a
        fastest = min(fastest, time.perf_counter() - began)
    gflops = 2 * 256**3 / fastest / 1e9
    return None if gflops >= MIN_GFLOPS else f"CPU GEMM at {gflops:.2f} GFLOP/s < {MIN_GFLOPS}"


def memory_check() -> str | None:
    src = np.ones(8 << 20, dtype=np.float64)  # 64 MiB, beyond any cache
    dst = np.zeros_like(src)
    dst.fill(1.0)  # fault the pages in first: the probe measures bandwidth, not page faults
    best = 0.0
    for _ in range(3):  # best of three, so a neighbour's burst does not fail the node
        began = time.perf_counter()
        np.copyto(dst, src)
        best = max(best, 2 * src.nbytes / (time.perf_counter() - began) / 1e9)
    return None if best >= MIN_MEMORY_GBPS else f"memory copy at {best:.2f} GB/s"


def disk_check(path: Path, min_free_bytes: int) -> str | None:
    free = shutil.disk_usage(path).free
    if free < min_free_bytes:
        return f"{path}: {free >> 20} MiB free, below {min_free_bytes >> 20} MiB"
    return None


def gpu_check(expected: int) -> str | None:
    """With CUDA present: all GPUs visible and a small GEMM matching the CPU's answer."""
    import torch

    if not torch.cuda.is_available():
        return None  # virtual GPUs of a local cluster: nothing to probe
    if torch.cuda.device_count() < expected:
        return f"{torch.cuda.device_count()} GPUs visible, {expected} expected"
    a = torch.randn(512, 512)
    for i in range(torch.cuda.device_count()):
        got = (a.to(f"cuda:{i}") @ a.to(f"cuda:{i}")).cpu()
        if not torch.allclose(got, a @ a, rtol=1e-2, atol=1e-2):
            return f"GPU {i}: GEMM result differs from the CPU's"
    return None


def run_checks(state_dir: Path, min_free_bytes: int, gpus: int) -> list[str]:
    checks: list[Callable[[], str | None]] = [
        cpu_check,
        memory_check,
        lambda: disk_check(state_dir, min_free_bytes),
        lambda: gpu_check(gpus),
    ]
    return [line for check in checks if (line := check()) is not None]
