"""Checkpoint stall: how long training is blocked by ``AsyncCheckpointer.save`` (the host copy)
against a synchronous ``torch.save`` of the same state to the same storage.

Storages: the local disk, and a local fs3 cluster (3 storage processes, 3 replicas). With a
GPU the state also lives on it, so our stall includes the device-to-host copy.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import fsspec
import torch

from fs3.cluster import LocalCluster
from haiscale.checkpoint import AsyncCheckpointer

_TENSOR_MIB = 16  # a few hundred layers' worth of 16 MiB tensors: a mid-size model's state


def _state(mib: int, device: str) -> dict:
    n = _TENSOR_MIB * 2**20 // 4
    model = {f"layer{i}.weight": torch.randn(n, device=device) for i in range(mib // _TENSOR_MIB)}
    return {"model": model, "step": 100}


def _time_torch_save(url: str, state: dict, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with fsspec.open(f"{url}/sync.pt", "wb") as f:
            torch.save(state, f)
        times.append(time.perf_counter() - start)
    fsspec.core.url_to_fs(url)[0].rm(f"{url}/sync.pt")
    return statistics.median(times) * 1e3


def _time_ours(url: str, state: dict, repeats: int) -> tuple[float, float, float]:
    """Median stall, the first stall (host buffer allocated) and the median background write."""
    stalls, writes = [], []
    with AsyncCheckpointer(f"{url}/async", keep=1) as ckpt:
        for step in range(repeats + 1):
            start = time.perf_counter()
            ckpt.save(step, state)
            stalls.append(time.perf_counter() - start)
            ckpt.wait()  # apart from the stall: the next save would wait for this write
            writes.append(time.perf_counter() - start)
    ckpt.store.fs.rm(ckpt.store.root, recursive=True)
    return statistics.median(stalls[1:]) * 1e3, stalls[0] * 1e3, statistics.median(writes) * 1e3


def _rows(storage: str, url: str, mib: int, repeats: int) -> list[str]:
    rows = []
    for device in ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]:
        state = _state(mib, device)
        sync_ms = _time_torch_save(url, state, repeats)
        stall_ms, first_ms, write_ms = _time_ours(url, state, repeats)
        rows.append(
            f"{storage:<17} {device:<5} {sync_ms:>13.0f} {stall_ms:>14.1f} "
            f"{first_ms:>14.1f} {write_ms:>11.0f} {stall_ms / sync_ms:>10.3f}x"
        )
    return rows


def run(quick: bool) -> list[str]:
    mib, repeats = (32, 2) if quick else (512, 3)
    lines = [
        f"checkpoint stall, {mib} MiB state: AsyncCheckpointer.save vs synchronous torch.save "
        f"(median of {repeats}; target ratio <= 0.2)",
        f"{'storage':<17} {'state':<5} {'torch.save ms':>13} {'ours: stall ms':>14} "
        f"{'first stall ms':>14} {'bg write ms':>11} {'stall ratio':>11}",
    ]
    with tempfile.TemporaryDirectory(prefix="haiscale-bench-") as tmp:
        lines += _rows("local disk", f"{tmp}/local", mib, repeats)
        cluster = LocalCluster(Path(tmp) / "fs3")
        try:
            cluster.start()
            lines += _rows("fs3 (3 replicas)", f"fs3://{cluster.address}/bench", mib, repeats)
        finally:
            cluster.stop()
    return lines
