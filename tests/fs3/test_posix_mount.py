"""POSIX on the FUSE mount where fs3 used to fall short (issue 18): truncate-on-open, ctime,
directory link counts, hard links, fifos and sockets. pjdfstest-style: exact errno values.

The mount and its per-test folder come from test_fuse.py's fixtures (one mount per module).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from fs3.client import FS3FileSystem

from . import test_fuse

mnt, d = test_fuse.mnt, test_fuse.d  # one mount per module, a fresh folder per test
_errno = test_fuse._errno

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


def test_ctime_moves_with_data_and_attributes(d: Path, fs3fs: FS3FileSystem) -> None:
    f = d / "f"
    f.write_bytes(b"x")
    steps = [
        lambda: f.write_bytes(b"yy"),  # open(O_TRUNC) and write
        lambda: os.truncate(f, 1),
        lambda: os.chmod(f, 0o600),
        lambda: os.utime(f, (5, 5)),
        lambda: os.link(f, d / "g"),
        lambda: os.unlink(d / "g"),
        lambda: os.rename(f, d / "h"),
    ]
    seen = [os.stat(f).st_ctime_ns]
    for step in steps:
        time.sleep(0.01)  # ctime has the meta clock's resolution: let it move on
        step()
        now = d / ("h" if (d / "h").exists() else "f")
        seen.append(os.stat(now).st_ctime_ns)
    assert seen == sorted(set(seen)), seen
    info = fs3fs.info(f"/{d.name}/h")
    assert info["ctime"] * 1e9 > seen[-2]  # fsspec shows the rename's ctime too


def test_directory_link_counts(d: Path) -> None:
    assert os.stat(d).st_nlink == 2
    (d / "a").mkdir()
    (d / "b").mkdir()
    (d / "f").write_bytes(b"")
    assert os.stat(d).st_nlink == 4
    os.rename(d / "a", d / "b" / "a")
    assert (os.stat(d).st_nlink, os.stat(d / "b").st_nlink) == (3, 3)
    os.rmdir(d / "b" / "a")
    assert os.stat(d / "b").st_nlink == 2


def test_hard_links(d: Path, fs3fs: FS3FileSystem) -> None:
    f, g = d / "f", d / "sub" / "g"
    g.parent.mkdir()
    f.write_bytes(b"data")
    os.link(f, g)
    assert os.stat(f).st_ino == os.stat(g).st_ino
    assert os.stat(f).st_nlink == os.stat(g).st_nlink == 2
    with open(g, "ab") as out:
        out.write(b"+more")
    assert f.read_bytes() == b"data+more"  # one file, two names
    assert _errno(os.link, f, g) == errno.EEXIST
    assert _errno(os.link, d / "sub", d / "dirlink") == errno.EPERM
    assert _errno(os.link, d / "nope", d / "x") == errno.ENOENT
    os.unlink(f)
    assert os.stat(g).st_nlink == 1
    assert g.read_bytes() == b"data+more"
    assert fs3fs.cat_file(f"/{d.name}/sub/g") == b"data+more"
    assert fs3fs.info(f"/{d.name}/sub/g")["nlink"] == 1
    fs3fs.link(f"/{d.name}/sub/g", f"/{d.name}/again")  # the fsspec client links too
    assert (d / "again").read_bytes() == b"data+more"
    assert os.stat(g).st_nlink == 2
    os.rename(g, d / "again")  # two names of one file: nothing happens
    assert g.exists() and (d / "again").exists()


def test_fifos_and_sockets(d: Path) -> None:
    os.mkfifo(d / "p", 0o640)
    st = os.stat(d / "p")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
    # The kernel serves a fifo's data itself: a writer and a reader on this host meet.
    writer = subprocess.Popen(["sh", "-c", "echo through > p"], cwd=d)
    assert (d / "p").read_bytes() == b"through\n"
    assert writer.wait(timeout=30) == 0
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(d / "s"))
        assert stat.S_ISSOCK(os.stat(d / "s").st_mode)
    assert _errno(os.mkfifo, d / "p") == errno.EEXIST
    assert _errno(os.mknod, d / "c", stat.S_IFCHR | 0o600, os.makedev(1, 3)) == errno.EPERM
    assert _errno(os.mknod, d / "b", stat.S_IFBLK | 0o600, os.makedev(7, 0)) == errno.EPERM
    os.unlink(d / "p")
    os.unlink(d / "s")
    assert sorted(os.listdir(d)) == []


def test_open_file_outlives_its_last_link(d: Path, fs3fs: FS3FileSystem) -> None:
    (d / "f").write_bytes(b"kept")
    os.link(d / "f", d / "g")
    with open(d / "f", "rb") as held:
        os.unlink(d / "f")
        assert os.fstat(held.fileno()).st_nlink == 1
        os.unlink(d / "g")
        assert os.fstat(held.fileno()).st_nlink == 0
        assert held.read() == b"kept"
    assert os.listdir(d) == [] and fs3fs.ls(f"/{d.name}") == []
