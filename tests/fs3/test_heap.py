"""fs3.heap: with the freed memory kept, recycled large buffers stop page-faulting in."""

from __future__ import annotations

import subprocess
import sys

_FAULTS_OF_RECYCLED_BUFFERS = """
import resource, sys
from fs3.heap import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
for _ in range(3):  # warm up: the heap grows to its size once
    bytearray(40 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    bytearray(40 << 20)  # zero-filled: every page is touched
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_OF_RECYCLED_BUFFERS, mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(out.stdout)


def test_kept_memory_is_reused_without_page_faults() -> None:
    default, kept = _faults("default"), _faults("keep")
    # By default a block above glibc's highest mmap threshold (32 MiB) is a fresh mapping
    # every time: 10240 faults of 4 KiB pages apiece.
    assert default > 20 * 5000
    assert kept < default / 20
