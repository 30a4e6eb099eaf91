"""The hai command line forwards to the cores (here: the benchmark commands)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HAI = Path(sys.executable).with_name("hai")


def test_bench_allreduce_forwards_its_arguments() -> None:
    result = subprocess.run(
        [str(HAI), "bench", "allreduce", "--max-size", "4096", "--layouts", "1x2", "--iters", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "1x2 ranks" in line]
    assert len(lines) == 1 and lines[0].split()[0:2] == ["4", "KiB"]


def test_bench_passes_the_exit_status_through() -> None:
    result = subprocess.run(
        [str(HAI), "bench", "allreduce", "--no-such-option"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-option" in result.stderr
