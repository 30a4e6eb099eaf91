"""The FUSE mount: POSIX behaviour modelled on pjdfstest's cases, fio with verification,
parallel writers, torch checkpoints, the fsspec client on the same files, and the life of
mount processes (``fs3.mount``, ``hai fs3 mount/umount``).

One mount of the session cluster serves the behaviour tests, each in a folder of its own.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml

import fs3
from fs3.client import FS3FileSystem
from fs3.cluster import LocalCluster
from fs3.fuse import is_mounted

from .conftest import SMALL_CHUNK

pytestmark = pytest.mark.fuse

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2  # linux/fs.h
AT_FDCWD = -100


@pytest.fixture(scope="module")
def mnt(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    point = tmp_path_factory.mktemp("fs3-mnt")
    with fs3.mount(point, cluster.address, chunk_size=SMALL_CHUNK) as mounted:
        yield mounted
    assert not is_mounted(point)


@pytest.fixture
def d(mnt: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh folder in the mount for one test."""
    path = mnt / request.node.name
    path.mkdir()
    return path


def _errno(fn, *args) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(OSError) as info:
        fn(*args)
    return info.value.errno


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(AT_FDCWD, bytes(src), AT_FDCWD, bytes(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _mount_processes(point: Path) -> list[psutil.Process]:
    """Our live descendants that are the mount process of ``point`` (zombies are skipped:
    nothing on this machine may reap an orphan, and their command line cannot be read)."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "mount" in p.cmdline() and str(point) in p.cmdline():
                found.append(p)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue
    return found


# -- POSIX behaviour ----------------------------------------------------------------------
def test_open_flags(d: Path) -> None:
    f = d / "f"
    fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.write(fd, b"hello world")
    os.close(fd)
    assert os.stat(f).st_mode & 0o777 == 0o640
    assert _errno(os.open, f, os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST
    fd = os.open(f, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"!")
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, b"?")  # O_APPEND writes at the end whatever the offset
    os.close(fd)
    assert f.read_bytes() == b"hello world!?"
    fd = os.open(f, os.O_RDWR | os.O_TRUNC)
    assert os.fstat(fd).st_size == 0
    os.write(fd, b"new")
    os.close(fd)
    assert f.read_bytes() == b"new"
    fd = os.open(f, os.O_RDONLY)
    assert _errno(os.write, fd, b"x") == errno.EBADF
    os.close(fd)
    assert _errno(os.open, d / "missing", os.O_RDONLY) == errno.ENOENT
    assert _errno(os.open, d, os.O_WRONLY) == errno.EISDIR
    assert _errno(os.open, f / "below", os.O_CREAT | os.O_WRONLY) == errno.ENOTDIR
    assert _errno(os.open, d / ("n" * 256), os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG
    fd = os.open(d / ("n" * 255), os.O_CREAT | os.O_WRONLY)
    os.close(fd)


def test_rename_files_and_directories(d: Path) -> None:
    (d / "a").write_bytes(b"A")
    (d / "b").write_bytes(b"B")
    os.rename(d / "a", d / "b")  # over a file: replaced
    assert (d / "b").read_bytes() == b"A" and not (d / "a").exists()
    (d / "dir1").mkdir()
    (d / "dir1" / "inner").write_bytes(b"i")
    (d / "empty").mkdir()
    os.rename(d / "dir1", d / "empty")  # over an empty directory
    assert (d / "empty" / "inner").read_bytes() == b"i"
    (d / "full").mkdir()
    (d / "full" / "x").write_bytes(b"")
    assert _errno(os.rename, d / "empty", d / "full") == errno.ENOTEMPTY
    assert _errno(os.rename, d / "b", d / "full") == errno.EISDIR
    assert _errno(os.rename, d / "full", d / "b") == errno.ENOTDIR
    assert _errno(os.rename, d / "full", d / "full" / "sub") == errno.EINVAL
    assert _errno(os.rename, d / "nope", d / "b2") == errno.ENOENT
    (d / "c").write_bytes(b"C")
    assert _errno(_renameat2, d / "c", d / "b", RENAME_NOREPLACE) == errno.EEXIST
    _renameat2(d / "c", d / "c2", RENAME_NOREPLACE)
    assert _errno(_renameat2, d / "c2", d / "b", RENAME_EXCHANGE) == errno.EINVAL
    assert (d / "b").read_bytes() == b"A" and (d / "c2").read_bytes() == b"C"
    (d / "deep" / "er").mkdir(parents=True)
    os.rename(d / "deep", d / "full" / "moved")  # a directory moves with its subtree
    assert os.listdir(d / "full" / "moved") == ["er"]
    assert sorted(os.listdir(d)) == ["b", "c2", "empty", "full"]


def test_unlinked_and_replaced_open_files_keep_working(
    d: Path, mnt: Path, fs3fs: FS3FileSystem
) -> None:
    data = os.urandom(3 * SMALL_CHUNK + 5)
    (d / "f").write_bytes(data)
    fd = os.open(d / "f", os.O_RDWR)
    os.unlink(d / "f")
    assert not (d / "f").exists() and os.listdir(d) == []
    assert os.fstat(fd).st_nlink == 0
    assert os.pread(fd, len(data), 0) == data
    os.pwrite(fd, b"tail", len(data))
    assert os.pread(fd, 10, len(data) - 6) == data[-6:] + b"tail"
    os.close(fd)
    assert ".fs3-orphans" not in os.listdir(mnt)  # hidden; emptied by the last close:
    assert fs3fs.ls("/.fs3-orphans", detail=False) == []
    (d / "old").write_bytes(b"old contents")
    (d / "new").write_bytes(b"new")
    with open(d / "old", "rb") as reader:
        os.rename(d / "new", d / "old")
        assert reader.read() == b"old contents"
    assert (d / "old").read_bytes() == b"new"
    os.unlink(d / "old")  # right after a close: deleted, not parked with the orphans
    assert fs3fs.ls("/.fs3-orphans", detail=False) == []


def test_mkdir_rmdir_unlink(d: Path) -> None:
    os.mkdir(d / "sub", 0o700)
    assert os.stat(d / "sub").st_mode & 0o777 == 0o700
    assert _errno(os.mkdir, d / "sub") == errno.EEXIST
    (d / "sub" / "f").write_bytes(b"x")
    assert _errno(os.rmdir, d / "sub") == errno.ENOTEMPTY
    assert _errno(os.rmdir, d / "sub" / "f") == errno.ENOTDIR
    assert _errno(os.unlink, d / "sub") == errno.EISDIR
    assert _errno(os.rmdir, d / "missing") == errno.ENOENT
    assert _errno(os.mkdir, d / "missing" / "child") == errno.ENOENT
    os.unlink(d / "sub" / "f")
    os.rmdir(d / "sub")
    assert os.listdir(d) == []


def test_truncate_up_and_down(d: Path) -> None:
    f = d / "f"
    data = os.urandom(2 * SMALL_CHUNK + 100)
    f.write_bytes(data)
    os.truncate(f, SMALL_CHUNK + 7)
    assert f.read_bytes() == data[: SMALL_CHUNK + 7]
    os.truncate(f, 3 * SMALL_CHUNK)  # the bytes cut off come back as zeros
    assert f.read_bytes() == data[: SMALL_CHUNK + 7] + bytes(2 * SMALL_CHUNK - 7)
    with open(f, "r+b") as fh:
        fh.truncate(10)
        fh.seek(0, os.SEEK_END)
        fh.write(b"more")
        fh.flush()
        assert os.fstat(fh.fileno()).st_size == 14
    # Rewritten right after O_TRUNC: meta's garbage collector (0.2 s period here) must
    # not delete the new chunks later.
    f.write_bytes(data)
    time.sleep(0.6)
    assert f.read_bytes() == data
    assert _errno(os.truncate, d, 0) == errno.EISDIR


def test_symlink_readlink(d: Path) -> None:
    (d / "target").write_bytes(b"through the link")
    os.symlink("target", d / "link")
    assert os.readlink(d / "link") == "target"
    assert (d / "link").read_bytes() == b"through the link"
    assert os.lstat(d / "link").st_size == len("target") and (d / "link").is_symlink()
    os.symlink("/nowhere/at/all", d / "dangling")
    assert _errno(os.stat, d / "dangling") == errno.ENOENT
    assert _errno(os.symlink, "x", d / "link") == errno.EEXIST
    assert _errno(os.readlink, d / "target") == errno.EINVAL
    assert sorted(os.listdir(d)) == ["dangling", "link", "target"]


def test_chmod_utime_statfs(
    d: Path, mnt: Path, fs3fs: FS3FileSystem, cluster: LocalCluster
) -> None:
    f = d / "f"
    f.write_bytes(b"x")
    os.chmod(f, 0o751)
    assert os.stat(f).st_mode & 0o7777 == 0o751
    os.utime(f, ns=(1_000_000_000, 2_000_000_000))
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000, 2_000_000_000)
    # Kept by meta: another client sees them, and what it sets the mount sees.
    info = fs3fs.info(f"/{d.name}/f")
    assert (info["mode"], info["atime"], info["mtime"]) == (0o751, 1.0, 2.0)
    fs3fs.chmod(f"/{d.name}/f", 0o640)
    fs3fs.utime(f"/{d.name}/f", mtime=3.0)
    f.open("rb").close()  # close-to-open: an open revalidates the attributes
    st = os.stat(f)
    assert (st.st_mode & 0o7777, st.st_mtime_ns, st.st_atime_ns) == (0o640, 3 * 10**9, 10**9)
    with open(f, "r+b") as fh:  # times set on an open file with unwritten bytes stay set
        fh.write(b"z")
        fh.flush()
        os.utime(fh.fileno(), ns=(4 * 10**9, 5 * 10**9))
    assert os.stat(f).st_mtime_ns == 5 * 10**9 and fs3fs.info(f"/{d.name}/f")["mtime"] == 5.0
    with open(f, "ab") as fh:
        fh.write(b"y")
    assert os.stat(f).st_mtime > 1000  # a write sets the modification time again
    vfs = os.statvfs(mnt)
    assert vfs.f_namemax == 255 and vfs.f_bavail > 0
    # The real capacity: the one disk under all three targets, counted once.
    disk, ours = shutil.disk_usage(cluster.root), shutil.disk_usage(mnt)
    assert ours.total == disk.total // 4096 * 4096
    assert abs(ours.free - disk.free) < 1 << 30


def test_quota_edquot(d: Path, fs3fs: FS3FileSystem) -> None:
    fs3fs.set_quota(f"/{d.name}", max_bytes=4 * SMALL_CHUNK, max_inodes=2)
    (d / "a").write_bytes(b"a" * SMALL_CHUNK)
    os.mkdir(d / "sub")
    assert _errno(os.open, d / "sub" / "b", os.O_CREAT | os.O_WRONLY) == errno.EDQUOT
    assert _errno(os.mkdir, d / "c") == errno.EDQUOT
    fd = os.open(d / "a", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"b" * SMALL_CHUNK)
        assert _errno(os.write, fd, b"c" * 3 * SMALL_CHUNK) == errno.EDQUOT  # at the write
    finally:
        os.close(fd)
    assert (d / "a").read_bytes() == b"a" * SMALL_CHUNK + b"b" * SMALL_CHUNK
    assert _errno(os.truncate, d / "a", 5 * SMALL_CHUNK) == errno.EDQUOT
    with open(d / "a", "ab") as f:  # a small write past the limit fails at close
        f.write(b"d" * 2 * SMALL_CHUNK + b"e")
        with pytest.raises(OSError) as info:
            f.close()
    assert info.value.errno == errno.EDQUOT
    assert os.stat(d / "a").st_size == 2 * SMALL_CHUNK
    os.rmdir(d / "sub")
    (d / "c").mkdir()  # room again
    q = fs3fs.quota(f"/{d.name}")
    assert q is not None and (q.used_bytes, q.used_inodes) == (2 * SMALL_CHUNK, 2)


# -- data paths ---------------------------------------------------------------------------
def test_fio_verify_random_io(d: Path) -> None:
    fio = shutil.which("fio")
    if fio is None:
        pytest.skip("fio not installed (Debian: apt-get install fio)")
    for bs, io_size in (("4k", "2m"), ("1m", "32m")):
        job = [
            fio,
            "--name=verify",
            f"--filename={d / ('fio-' + bs)}",
            "--size=32m",
            f"--io_size={io_size}",
            f"--bs={bs}",
            "--rw=randwrite",
            "--verify=crc32c",
            "--ioengine=psync",
            "--output-format=terse",
            "--fallocate=truncate",
            "--verify_state_save=0",
        ]
        # FUSE has no fallocate: the file is laid out with ftruncate instead.
        done = subprocess.run(job, capture_output=True, text=True, timeout=120, cwd=d)
        assert done.returncode == 0, done.stdout + done.stderr
        # The same blocks again through O_DIRECT, past the page cache, to the chunks.
        again = subprocess.run(
            job + ["--verify_only", "--direct=1"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=d,
        )
        assert again.returncode == 0, again.stdout + again.stderr


def test_parallel_writers(d: Path, fs3fs: FS3FileSystem) -> None:
    blobs = {f"w{i}": os.urandom(6 * SMALL_CHUNK + 1000 * i) for i in range(4)}
    errors: list[BaseException] = []

    def write(name: str) -> None:
        try:
            with open(d / name, "wb") as f:
                data = blobs[name]
                for off in range(0, len(data), 1 << 20):
                    f.write(data[off : off + (1 << 20)])
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(n,)) for n in blobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for name, data in blobs.items():
        assert hashlib.sha256((d / name).read_bytes()).digest() == hashlib.sha256(data).digest()
        assert fs3fs.cat_file(f"/{d.name}/{name}") == data


def test_torch_checkpoint(d: Path) -> None:
    import torch

    state = {"w": torch.randn(64, 32), "step": 7, "nested": {"b": torch.arange(10)}}
    torch.save(state, d / "ckpt.pt")
    back = torch.load(d / "ckpt.pt")
    assert back["step"] == 7
    assert torch.equal(back["w"], state["w"])
    assert torch.equal(back["nested"]["b"], state["nested"]["b"])


def test_fsspec_client_sees_the_same_files(d: Path, fs3fs: FS3FileSystem) -> None:
    base = f"/{d.name}"
    (d / "from-mount").write_bytes(b"m" * 300_000)
    assert fs3fs.cat_file(f"{base}/from-mount") == b"m" * 300_000
    fs3fs.pipe_file(f"{base}/from-fsspec", b"f" * 100)
    assert (d / "from-fsspec").read_bytes() == b"f" * 100
    # Close-to-open: what another client closed is what the next open here reads, both
    # when it appended to the same inode and when it replaced the file by a new one.
    with fs3fs.open(f"{base}/from-fsspec", "ab") as f:
        f.write(b"g" * 50)
    assert (d / "from-fsspec").read_bytes() == b"f" * 100 + b"g" * 50
    fs3fs.pipe_file(f"{base}/from-fsspec", b"replaced")
    assert (d / "from-fsspec").read_bytes() == b"replaced"
    assert os.stat(d / "from-fsspec").st_size == len(b"replaced")
    fs3fs.rm_file(f"{base}/from-mount")
    assert _errno(open, d / "from-mount", "rb") == errno.ENOENT


# -- mount processes ----------------------------------------------------------------------
def test_mount_context_unmounts_when_the_body_raises(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    point = tmp_path / "m"
    with pytest.raises(RuntimeError, match="boom"):
        with fs3.mount(point, cluster.address) as m:
            assert is_mounted(point)
            (m / "ctx-raise.txt").write_text("kept")
            raise RuntimeError("boom")
    assert not is_mounted(point) and not _mount_processes(point)
    fs = FS3FileSystem(cluster.address, skip_instance_cache=True)
    assert fs.cat_file("/ctx-raise.txt") == b"kept"
    # A cluster nobody answers for: the mount's client retries for timeouts.retry_s (as
    # through a mgmtd failover), then the mount fails with its error, not a timeout.
    monkeypatch.setenv("FS3_TIMEOUTS__RETRY_S", "2")
    with pytest.raises(fs3.Fs3Error, match="failed"):
        with fs3.mount(point, "127.0.0.1:1", timeout=30):
            pass
    assert not is_mounted(point)


def test_mount_goes_away_when_its_script_is_killed(cluster: LocalCluster, tmp_path: Path) -> None:
    point = tmp_path / "m"
    script = (
        "import sys, time, fs3\n"
        "with fs3.mount(sys.argv[1], sys.argv[2]):\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(120)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script, str(point), cluster.address],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        (helper,) = _mount_processes(point)
        assert is_mounted(point)
        owner.send_signal(signal.SIGKILL)
        owner.wait(10)
        helper.wait(15)  # noticed its parent is gone, unmounted and exited
        assert not is_mounted(point)
    finally:
        owner.kill()
        for p in _mount_processes(point):
            p.kill()


def test_cli_mount_background_and_umount(cluster: LocalCluster, tmp_path: Path) -> None:
    point = tmp_path / "m"
    point.mkdir()
    hai_fs3 = [sys.executable, "-m", "fs3"]
    up = subprocess.run(
        hai_fs3
        + ["mount", "-d", "--cluster", cluster.address, str(point), "--log", str(tmp_path / "log")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert up.returncode == 0, up.stderr
    pid = int(up.stdout.split("pid ")[1].split(",")[0])
    assert is_mounted(point) and os.listdir(point)
    busy = subprocess.run(
        hai_fs3 + ["mount", "--cluster", cluster.address, str(point)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert busy.returncode == 1 and "already an fs3 mount" in busy.stderr
    down = subprocess.run(
        hai_fs3 + ["umount", str(point)], capture_output=True, text=True, timeout=60
    )
    assert down.returncode == 0, down.stderr
    psutil.Process(pid).wait(15)
    assert not is_mounted(point)
    again = subprocess.run(
        hai_fs3 + ["umount", str(point)], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 1 and "not an fs3 mount" in again.stderr


def test_unreachable_cluster_fails_within_the_timeout(make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c: LocalCluster = make_cluster(replicas=1)
    config = tmp_path / "short.yaml"
    config.write_text(
        yaml.safe_dump({"timeouts": {"rpc_s": 1.0, "connect_s": 0.5, "retry_s": 2.0}})
    )
    with fs3.mount(tmp_path / "m", c.address, config_path=str(config)) as m:
        (m / "f").write_bytes(b"x" * 1000)
        fd = os.open(m / "f", os.O_RDONLY | os.O_DIRECT)
        c.stop()
        start = time.monotonic()
        assert _errno(os.stat, m / "other") in (errno.ETIMEDOUT, errno.EIO)
        assert _errno(os.pread, fd, 100, 0) in (errno.ETIMEDOUT, errno.EIO)
        assert time.monotonic() - start < 15
        os.close(fd)
    assert not is_mounted(tmp_path / "m")


# -- the benchmark's FUSE ceiling -----------------------------------------------------------
def test_memory_mount_serves_its_file_and_the_ceiling_measures_it(tmp_path: Path) -> None:
    from fs3.bench import bench_fuse_ceiling
    from fs3.fuse.ceiling import memory_mount

    size = 3 * (1 << 20) + 5  # past a request boundary, with a short tail
    point = tmp_path / "ceiling"
    with memory_mount(point, size) as path:
        assert path.stat().st_size == size
        assert path.read_bytes() == b"\xa5" * size
        with pytest.raises(OSError):
            (point / "other").write_bytes(b"x")  # read-only: one file, nothing else
    assert not is_mounted(point)
    assert bench_fuse_ceiling(tmp_path, 1 << 20, rounds=1) > 0
    assert not is_mounted(tmp_path / "ceiling")
