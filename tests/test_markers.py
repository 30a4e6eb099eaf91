"""Marker handling in conftest: a test that needs something the machine lacks is skipped,
so each test below can only run (and pass) where its need is met."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from hai.doctor import find_postgres_bindir


@pytest.mark.gpu
def test_gpu_marker_runs_only_with_cuda() -> None:
    assert torch.cuda.is_available()
    assert torch.ones(1, device="cuda").item() == 1


@pytest.mark.postgres
def test_postgres_marker_runs_only_with_server_binaries() -> None:
    assert find_postgres_bindir() is not None


@pytest.mark.fuse
def test_fuse_marker_runs_only_with_fuse() -> None:
    assert os.path.exists("/dev/fuse") and shutil.which("fusermount3")
