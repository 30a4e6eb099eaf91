"""Lost data is an error, never zeros: chunks whose every replica lost its file (also across
a restart of the targets), failed its checksums, or sits on a chain whose targets are all
offline raise EIO (fsspec, naming path and chunk; the mount; ``hai fs3 cat/get``), and fsck
exits 1 listing them, while a sparse file's holes still read as zeros and are warnings."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

import fs3
from fs3.client import FS3FileSystem
from fs3.cluster import LocalCluster
from fs3.errors import ChecksumMismatch
from fs3.storage.local import HEADER_SIZE, LocalChunkEngine
from fs3.types import ChunkId
from hai.cli import main

from ..waiting import wait_for
from .conftest import SMALL_CHUNK

CID = ChunkId(1, 42, 0)


def _replicas(c: LocalCluster, fs: FS3FileSystem, path: str, index: int) -> list[Path]:
    inode = fs.meta.stat(path)
    chain = inode.layout.chain_of(index)
    files = [
        c.root / f"storage-{t}" / str(chain) / f"{inode.id:016x}.{index:08x}"
        for t in range(1, c.targets + 1)
    ]
    return [f for f in files if f.exists()]


def _lose(c: LocalCluster, fs: FS3FileSystem, path: str, index: int) -> None:
    """Deletes chunk ``index`` of ``path`` from every replica's disk."""
    replicas = _replicas(c, fs, path, index)
    assert len(replicas) == c.replicas
    for f in replicas:
        f.unlink()


def _corrupt(c: LocalCluster, fs: FS3FileSystem, path: str, index: int) -> None:
    """Flips one byte of chunk ``index`` of ``path`` on every replica."""
    replicas = _replicas(c, fs, path, index)
    assert len(replicas) == c.replicas
    for f in replicas:
        raw = bytearray(f.read_bytes())
        raw[HEADER_SIZE + 10] ^= 0x40
        f.write_bytes(bytes(raw))


def _restart_targets(c: LocalCluster) -> None:
    for t in range(1, c.targets + 1):
        c.kill(f"storage-{t}")
    for t in range(1, c.targets + 1):
        c.start_process(f"storage-{t}")
    c.wait_ready(60)


def _eio(fs: FS3FileSystem, path: str, index: int) -> None:
    with pytest.raises(OSError) as info:
        fs.cat_file(path)
    assert info.value.errno == errno.EIO, info.value
    assert info.value.filename == path
    assert f"chunk {index} of {path}" in str(info.value)


def _sparse(fs: FS3FileSystem, path: str) -> bytes:
    """A file of 3 chunks of which only the last was written; returns its content."""
    tail = os.urandom(1000)
    fs.touch(path)
    fs.truncate(path, 2 * SMALL_CHUNK)
    with fs.open(path, "ab") as f:
        f.write(tail)
    return bytes(2 * SMALL_CHUNK) + tail


def _hai(*args: str) -> Result:
    return CliRunner().invoke(main, ["fs3", *args])


# -- the engine's record of what existed ----------------------------------------------------
def test_engine_tells_a_lost_chunk_from_a_hole_across_restarts(tmp_path: Path) -> None:
    engine = LocalChunkEngine(tmp_path, fsync=False)
    gone, removed = ChunkId(1, 42, 1), ChunkId(1, 42, 2)
    for cid in (CID, gone, removed):
        engine.write(cid, 1, b"x" * 1000, 0, True)
        engine.commit(cid, 1)
    engine.remove(1, 42, 2)  # deleted the proper way: a hole from now on
    (tmp_path / "1" / f"{42:016x}.{1:08x}").unlink()  # lost behind the engine's back

    reopened = LocalChunkEngine(tmp_path, fsync=False)
    assert reopened.stat(gone) == (None, None) and reopened.lost(gone)
    with pytest.raises(ChecksumMismatch, match="missing"):
        reopened.read(gone, 0, 10)
    with pytest.raises(ChecksumMismatch, match="missing"):
        reopened.open_committed(gone)
    assert not reopened.lost(removed) and reopened.read(removed, 0, 10) == b""
    assert not reopened.lost(ChunkId(1, 42, 9)) and reopened.read(ChunkId(1, 42, 9), 0, 10) == b""
    assert bytes(reopened.read(CID, 0, 10)) == b"x" * 10

    # Replaced (what resync and fsck's repair do), the chunk is whole again, also next start.
    reopened.replace(gone, 1, b"y" * 10)
    again = LocalChunkEngine(tmp_path, fsync=False)
    assert not again.lost(gone) and bytes(again.read(gone, 0, 10)) == b"y" * 10
    # A deletion of the lost chunk makes it a hole for good.
    (tmp_path / "1" / f"{42:016x}.{1:08x}").unlink()
    lost = LocalChunkEngine(tmp_path, fsync=False)
    assert lost.lost(gone)
    lost.remove(1, 42, 1, 2)
    assert not LocalChunkEngine(tmp_path, fsync=False).lost(gone)


# -- fsspec, hai fs3 cat/get and fsck on a real cluster --------------------------------------
def test_lost_and_corrupt_chunks_raise_and_fsck_fails(make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c: LocalCluster = make_cluster()
    fs = FS3FileSystem(c.address, chunk_size=SMALL_CHUNK, skip_instance_cache=True)
    data = os.urandom(3 * SMALL_CHUNK)
    for name in ("gone", "corrupt", "tail"):
        fs.pipe_file(f"/d/{name}", data[: 2 * SMALL_CHUNK + 100] if name == "tail" else data)
    sparse = _sparse(fs, "/d/sparse")
    clean = _hai("fsck", str(c.root))
    assert clean.exit_code == 0 and "WARN  hole: /d/sparse: chunk 0" in clean.output, clean.output

    _lose(c, fs, "/d/gone", 1)
    _corrupt(c, fs, "/d/corrupt", 1)
    _lose(c, fs, "/d/tail", 2)
    _eio(fs, "/d/gone", 1)
    _eio(fs, "/d/corrupt", 1)

    _restart_targets(c)  # the targets' indexes are rebuilt from disk: the log remembers
    fs = FS3FileSystem(c.address, chunk_size=SMALL_CHUNK, skip_instance_cache=True)
    _eio(fs, "/d/gone", 1)
    _eio(fs, "/d/corrupt", 1)
    _eio(fs, "/d/tail", 2)
    # A partial write into a lost chunk fails rather than making its zeros the content.
    with pytest.raises(OSError) as info, fs.open("/d/tail", "ab") as f:
        f.write(b"more")
    assert info.value.errno == errno.EIO and "lost" in str(info.value)
    _eio(fs, "/d/tail", 2)
    assert fs.cat_file("/d/sparse") == sparse  # holes still read as zeros
    assert fs.cat_file("/d/gone", start=0, end=SMALL_CHUNK) == data[:SMALL_CHUNK]

    cat = _hai("cat", f"--address={c.address}", "/d/gone")
    assert cat.exit_code != 0
    assert cat.stderr.strip().count("\n") == 0 and "/d/gone" in cat.stderr, cat.stderr
    dest = tmp_path / "copy"
    get = _hai("get", f"--address={c.address}", "/d/corrupt", str(dest))
    assert get.exit_code != 0 and "/d/corrupt" in get.stderr, get.output
    assert not dest.exists()

    broken = _hai("fsck", str(c.root))
    assert broken.exit_code == 1, broken.output
    lines = broken.output.splitlines()
    for path, index in (("/d/gone", 1), ("/d/corrupt", 1), ("/d/tail", 2)):
        assert any(line.startswith(f"ERROR lost: {path}: chunk {index} ") for line in lines), (
            broken.output
        )
    assert any(line.startswith("WARN  hole: /d/sparse: chunk 1 ") for line in lines)
    assert not any(line.startswith("ERROR") and "/d/sparse" in line for line in lines)

    # Deleting the damaged files leaves nothing lost behind: fsck is clean again.
    fs.rm(["/d/gone", "/d/corrupt", "/d/tail"])
    wait_for(
        "the collector to delete the removed files' chunks",
        lambda: _hai("fsck", str(c.root)).exit_code == 0,
        timeout=30,
    )


def test_chain_with_no_serving_target_is_an_error(make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c: LocalCluster = make_cluster()
    config = tmp_path / "short.yaml"
    config.write_text(yaml.safe_dump({"timeouts": {"retry_s": 2.0}}))
    fs = FS3FileSystem(
        c.address, config_path=str(config), chunk_size=SMALL_CHUNK, skip_instance_cache=True
    )
    fs.pipe_file("/f", os.urandom(SMALL_CHUNK))
    for t in range(1, c.targets + 1):
        c.kill(f"storage-{t}")
    wait_for(
        "mgmtd to declare every target offline",
        lambda: not any(t.alive for t in fs.mgmtd.refresh().targets.values()),
        timeout=15,
    )
    with pytest.raises(OSError) as info:
        fs.cat_file("/f")
    assert "chunk 0 of /f" in str(info.value)

    report = _hai("fsck", f"--address={c.address}", f"--config={config}")
    assert report.exit_code == 1, report.output
    assert "ERROR unreadable: /f: chunk 0 " in report.output, report.output


# -- the mount ------------------------------------------------------------------------------
@pytest.mark.fuse
def test_mount_reads_lost_data_as_eio_and_holes_as_zeros(make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c: LocalCluster = make_cluster()
    fs = FS3FileSystem(c.address, chunk_size=SMALL_CHUNK, skip_instance_cache=True)
    data = os.urandom(3 * SMALL_CHUNK)
    fs.pipe_file("/gone", data)
    fs.pipe_file("/corrupt", data)
    sparse = _sparse(fs, "/sparse")
    fs.pipe_file("/later", data)
    _lose(c, fs, "/gone", 1)
    _corrupt(c, fs, "/corrupt", 2)
    _restart_targets(c)
    config = tmp_path / "short.yaml"
    config.write_text(yaml.safe_dump({"timeouts": {"retry_s": 3.0}}))
    with fs3.mount(tmp_path / "m", c.address, config_path=str(config)) as m:
        for name, index in (("gone", 1), ("corrupt", 2)):
            fd = os.open(m / name, os.O_RDONLY)
            try:
                assert os.pread(fd, 100, 0) == data[:100]  # the chunks still there read
                with pytest.raises(OSError) as info:
                    os.pread(fd, 100, index * SMALL_CHUNK)
                assert info.value.errno == errno.EIO
            finally:
                os.close(fd)
        assert (m / "sparse").read_bytes() == sparse
        # A chain with no serving target: an error too (ETIMEDOUT: it may come back).
        for t in range(1, c.targets + 1):
            c.kill(f"storage-{t}")
        with pytest.raises(OSError) as info:
            (m / "later").read_bytes()
        assert info.value.errno in (errno.ETIMEDOUT, errno.EIO)
