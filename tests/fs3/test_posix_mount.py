"""POSIX on the FUSE mount where fs3 used to fall short (issue 18): truncate-on-open, ctime,
directory link counts, hard links, fifos and sockets. pjdfstest-style: exact errno values.

The mount and its per-test folder come from test_fuse.py's fixtures (one mount per module).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fs3.client import FS3FileSystem

from . import test_fuse

mnt, d = test_fuse.mnt, test_fuse.d  # one mount per module, a fresh folder per test

pytestmark = pytest.mark.fuse


@pytest.mark.parametrize(
    "between", ["", "stat f >/dev/null;", "ls -l f >/dev/null;"], ids=["plain", "stat", "ls"]
)
def test_append_after_truncate_on_open(d: Path, fs3fs: FS3FileSystem, between: str) -> None:
    # Issue 18's shell line: a stat between the truncate and the append (the conformance
    # suite's, or ls's) cached the old length, and the append wrote past it: "\0\0\0\0x".
    line = f"printf test > f; : > f; {between} echo x >> f"
    subprocess.run(["sh", "-c", line], cwd=d, check=True, timeout=60)
    assert fs3fs.cat_file(f"/{d.name}/f") == b"x\n"  # what the cluster holds
    assert (d / "f").read_bytes() == b"x\n"
