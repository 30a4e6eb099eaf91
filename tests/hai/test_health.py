"""The node health probes, run for real: healthy here, and each failure is one clear line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from hai import health


def test_probes_pass_on_this_machine(tmp_path: Path) -> None:
    assert health.cpu_check() is None
    assert health.memory_check() is None
    assert health.disk_check(tmp_path, 1 << 20) is None
    assert health.run_checks(tmp_path, 1 << 20, gpus=0) == []


def test_probes_fail_below_their_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    # Raising the floor past any machine turns the measured figure into the message.
    monkeypatch.setattr(health, "MIN_GFLOPS", 1e9)
    monkeypatch.setattr(health, "MIN_MEMORY_GBPS", 1e9)
    assert (health.cpu_check() or "").startswith("CPU GEMM at ")
    assert (health.memory_check() or "").startswith("memory copy at ")


def test_full_disk_names_the_path(tmp_path: Path) -> None:
    line = health.disk_check(tmp_path, 1 << 60)
    assert line is not None and line.startswith(f"{tmp_path}: ") and "MiB free" in line
    # Free space moves between the two reads (other processes write): compare the rest.
    (again,) = health.run_checks(tmp_path, 1 << 60, gpus=0)
    free = re.compile(r"\d+ MiB free")
    assert free.sub("N MiB free", again) == free.sub("N MiB free", line)


def test_gpu_check() -> None:
    if not torch.cuda.is_available():
        assert health.gpu_check(8) is None  # virtual GPUs of a local cluster
        return
    count = torch.cuda.device_count()
    assert health.gpu_check(count) is None
    assert health.gpu_check(count + 1) == f"{count} GPUs visible, {count + 1} expected"
