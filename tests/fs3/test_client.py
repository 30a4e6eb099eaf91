"""The client end to end: pyarrow datasets, errors, concurrent clients, an fsspec URL."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from pyarrow.fs import FSSpecHandler, PyFileSystem

from fs3.client import FS3FileSystem
from fs3.cluster import LocalCluster
from fs3.fuse.files import Cursor, OpenFile

from ..waiting import wait_for
from .conftest import SMALL_CHUNK


def test_partitioned_parquet_round_trip(fs3fs: FS3FileSystem) -> None:
    pafs = PyFileSystem(FSSpecHandler(fs3fs))
    table = pa.table({"part": [i % 3 for i in range(3000)], "x": list(range(3000))})
    ds.write_dataset(
        table,
        "/pq/ds",
        filesystem=pafs,
        format="parquet",
        partitioning=["part"],
        partitioning_flavor="hive",
    )
    back = ds.dataset("/pq/ds", filesystem=pafs, format="parquet", partitioning="hive").to_table()
    assert sorted(back.column("x").to_pylist()) == list(range(3000))
    pq.write_table(table, "/pq/one.parquet", filesystem=pafs)
    assert pq.read_table("/pq/one.parquet", filesystem=pafs).equals(table)
    fs3fs.rm("/pq", recursive=True)


def test_reads_run_on_the_read_pool_writes_on_their_own(
    fs3fs: FS3FileSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytes(range(256)) * (SMALL_CHUNK * 12 // 256)
    writers: set[str] = set()
    readers: set[str] = set()
    write, read = fs3fs.chunks.write, fs3fs.chunks.read

    def recording(names: set[str], call):  # type: ignore[no-untyped-def]
        def run(*args, **kwargs):  # type: ignore[no-untyped-def]
            names.add(threading.current_thread().name)
            return call(*args, **kwargs)

        return run

    monkeypatch.setattr(fs3fs.chunks, "write", recording(writers, write))
    monkeypatch.setattr(fs3fs.chunks, "read", recording(readers, read))
    fs3fs.pipe_file("/pools/f", data)
    with fs3fs.open("/pools/f", "rb") as f:  # sequential: read ahead
        assert b"".join(iter(lambda: f.read(SMALL_CHUNK), b"")) == data
        f.seek(SMALL_CHUNK // 2)  # a range across two chunks
        assert f.read(SMALL_CHUNK) == data[SMALL_CHUNK // 2 : SMALL_CHUNK * 3 // 2]
    # The FUSE mount's files read on the same pool (their writes on the mount's own).
    opened = OpenFile(fs3fs, fs3fs.meta.stat("/pools/f"), ThreadPoolExecutor(1, "mount-io"))
    cursor = Cursor()
    for offset in range(0, len(data), SMALL_CHUNK):  # sequential: read ahead
        assert (
            bytes(opened.read(cursor, offset, SMALL_CHUNK)) == data[offset : offset + SMALL_CHUNK]
        )
    assert bytes(opened.read(cursor, 10, SMALL_CHUNK * 2)) == data[10 : 10 + SMALL_CHUNK * 2]
    assert writers and all(name.startswith("fs3-io") for name in writers), writers
    assert readers and all(name.startswith("fs3-read") for name in readers), readers
    assert len(readers) <= fs3fs.config.client.read_pool_size()
    fs3fs.rm("/pools", recursive=True)


def test_errors_are_builtins_with_paths(fs3fs: FS3FileSystem) -> None:
    fs3fs.pipe_file("/err/f", b"x")
    with pytest.raises(FileNotFoundError, match="/err/missing"):
        fs3fs.cat_file("/err/missing")
    with pytest.raises(FileExistsError):
        fs3fs.open("/err/f", "xb")
    with pytest.raises(IsADirectoryError):
        fs3fs.open("/err", "rb")
    with pytest.raises(NotADirectoryError):
        fs3fs.pipe_file("/err/f/g", b"x")
    with pytest.raises(OSError) as info:
        fs3fs.rmdir("/err")
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as info:
        fs3fs.mv("/err", "/err/inside")
    assert info.value.errno == errno.EINVAL
    for bad in ("/a\x00b", "/../x"):
        with pytest.raises(OSError) as info:
            fs3fs.pipe_file(bad, b"x")
        assert info.value.errno == errno.EINVAL
    fs3fs.rm("/err", recursive=True)


def test_url_address_symlink_and_truncate(cluster: LocalCluster, fs3fs: FS3FileSystem) -> None:
    with fsspec.open(f"fs3://{cluster.address}/u/file", "wb") as f:
        f.write(b"0123456789" * 100_000)
    fs3fs.symlink("file", "/u/link")
    assert fs3fs.readlink("/u/link") == "file"
    assert fs3fs.cat_file("/u/link", start=5, end=12) == b"5678901"
    fs3fs.truncate("/u/file", 3)
    fs3fs.truncate("/u/file", 6)
    assert fs3fs.cat_file("/u/file") == b"012\0\0\0"
    fs3fs.rm("/u", recursive=True)


def test_urls_rebuilt_from_a_url_with_an_address_reach_that_cluster(
    cluster: LocalCluster, fs3fs: FS3FileSystem
) -> None:
    """Globs and other paths turned back into URLs keep the HOST:PORT they came with, so
    they open without FS3_CLUSTER or a config file naming the cluster."""
    fs3fs.pipe_file("/globbed/a.txt", b"A")
    fs, path = fsspec.core.url_to_fs(f"fs3://{cluster.address}/globbed/*.txt")
    urls = [fs.unstrip_protocol(p) for p in fs.glob(path)]
    assert urls == [f"fs3://{cluster.address}/globbed/a.txt"]
    with fsspec.open(urls[0], "rb", skip_instance_cache=True) as f:
        assert f.read() == b"A"
    fs3fs.rm("/globbed", recursive=True)


def test_chmod_and_times_are_seen_by_other_clients(
    cluster: LocalCluster, fs3fs: FS3FileSystem
) -> None:
    fs3fs.pipe_file("/attrs/f", b"x")
    fs3fs.chmod("/attrs/f", 0o600)
    fs3fs.utime("/attrs/f", atime=10.0, mtime=20.0)
    other = FS3FileSystem(cluster.address, skip_instance_cache=True)
    info = other.info("/attrs/f")
    assert (info["mode"], info["atime"], info["mtime"]) == (0o600, 10.0, 20.0)
    other.touch("/attrs/f", truncate=False)  # like touch(1): times become now
    assert other.info("/attrs/f")["mtime"] > 1e9 and other.cat_file("/attrs/f") == b"x"
    other.touch("/attrs/g", mtime=30.0)
    assert fs3fs.modified("/attrs/g").timestamp() == 30.0
    with pytest.raises(FileNotFoundError, match="/attrs/nope"):
        fs3fs.chmod("/attrs/nope", 0o600)
    fs3fs.rm("/attrs", recursive=True)


_WORKER = """
import sys
from fs3.client import FS3FileSystem
fs = FS3FileSystem(sys.argv[1], skip_instance_cache=True)
me = sys.argv[2]
for i in range(40):
    fs.pipe_file(f"/race/{me}-{i}.tmp", me.encode() * 10)
    fs.mv(f"/race/{me}-{i}.tmp", f"/race/{me}-{i}")
    fs.pipe_file(f"/race/shared.tmp-{me}", b"v")
    fs.mv(f"/race/shared.tmp-{me}", "/race/shared")
"""


def test_two_clients_create_and_rename_in_one_directory(
    cluster: LocalCluster, fs3fs: FS3FileSystem
) -> None:
    fs3fs.makedirs("/race", exist_ok=True)
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, cluster.address, name])
        for name in ("a", "b")
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    names = sorted(fs3fs.ls("/race", detail=False))
    expected = sorted([f"/race/{w}-{i}" for w in "ab" for i in range(40)] + ["/race/shared"])
    assert names == expected
    assert fs3fs.cat_file("/race/a-7") == b"a" * 10
    fs3fs.rm("/race", recursive=True)


def _chunk_files(cluster: LocalCluster, inode: int) -> list[str]:
    return sorted(
        str(p.relative_to(cluster.root))
        for target in range(1, cluster.targets + 1)
        for p in (cluster.root / f"storage-{target}").rglob(f"{inode:016x}.*")
    )


def test_a_get_that_fails_leaves_no_new_local_file(
    cluster: LocalCluster, fs3fs: FS3FileSystem, tmp_path: Path
) -> None:
    fs3fs.pipe_file("/lost/f", os.urandom(3 * SMALL_CHUNK))
    inode = fs3fs.info("/lost/f")["inode"]
    # Chunk 1 fails its checksum on every replica: no replica can serve it.
    replicas = list(cluster.root.glob(f"storage-*/*/{inode:016x}.{1:08x}"))
    assert len(replicas) == 3
    for replica in replicas:
        with open(replica, "r+b") as f:
            f.seek(-5, os.SEEK_END)
            byte = f.read(1)[0]
            f.seek(-5, os.SEEK_END)
            f.write(bytes([byte ^ 0x10]))
    with pytest.raises(OSError) as info:
        fs3fs.get_file("/lost/f", str(tmp_path / "new"))
    assert info.value.errno == errno.EIO
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").write_bytes(b"there before")
    with pytest.raises(OSError):
        fs3fs.get_file("/lost/f", str(tmp_path / "old"))
    assert (tmp_path / "old").exists()  # not this copy's to remove
    fs3fs.rm("/lost", recursive=True)


def test_chunks_of_removed_and_truncated_files_are_reclaimed(
    cluster: LocalCluster, fs3fs: FS3FileSystem
) -> None:
    fs3fs.pipe_file("/reclaim/gone", b"g" * (4 * SMALL_CHUNK))
    fs3fs.pipe_file("/reclaim/shrunk", b"s" * (4 * SMALL_CHUNK))
    gone, shrunk = (fs3fs.info(f"/reclaim/{n}")["inode"] for n in ("gone", "shrunk"))
    # Every chunk on every replica of its chain (3 targets, replication 3).
    assert len(_chunk_files(cluster, gone)) == 4 * 3
    fs3fs.rm("/reclaim/gone")
    fs3fs.truncate("/reclaim/shrunk", SMALL_CHUNK + 10)
    wait_for(
        "the removed file's chunks and the truncated file's tail to be reclaimed",
        lambda: not _chunk_files(cluster, gone) and len(_chunk_files(cluster, shrunk)) == 2 * 3,
        timeout=30,
    )
    assert fs3fs.cat_file("/reclaim/shrunk") == b"s" * (SMALL_CHUNK + 10)
