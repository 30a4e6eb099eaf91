"""Chunk engine conformance: every engine passes the same tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fs3.errors import ChecksumMismatch, InvalidArgument, NotFound
from fs3.storage.engine import ChunkEngine, MemoryChunkEngine
from fs3.storage.local import HEADER_SIZE, LocalChunkEngine
from fs3.types import ChunkId, ChunkMeta
from fs3.wire.checksum import crc32c, crc32c_combine, crc32c_concat

CID = ChunkId(1, 42, 0)


@pytest.fixture(params=["memory", "local"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> ChunkEngine:
    if request.param == "memory":
        return MemoryChunkEngine()
    return LocalChunkEngine(tmp_path / "chunks", fsync=False)


def test_absent_chunk_reads_as_hole(engine: ChunkEngine) -> None:
    assert engine.read(CID, 0, 100) == b""
    assert engine.stat(CID) == (None, None)


def test_pending_version_is_invisible_until_commit(engine: ChunkEngine) -> None:
    engine.write(CID, 1, b"hello", 0, True)
    assert engine.stat(CID) == (None, 1)
    assert engine.read(CID, 0, 5) == b""
    assert engine.commit(CID, 1) == ChunkMeta(1, 5)
    assert engine.read(CID, 0, 5) == b"hello"
    assert engine.commit(CID, 1) == ChunkMeta(1, 5)  # idempotent


def test_patch_and_truncate(engine: ChunkEngine) -> None:
    engine.write(CID, 1, b"abcdef", 0, True)
    engine.commit(CID, 1)
    engine.write(CID, 2, b"XY", 2, False)
    engine.commit(CID, 2)
    assert engine.read(CID, 0, 100) == b"abXYef"
    engine.write(CID, 3, b"Z", 8, False)
    engine.commit(CID, 3)
    assert engine.read(CID, 0, 100) == b"abXYef\0\0Z"
    engine.write(CID, 4, b"", 3, True)
    engine.commit(CID, 4)
    assert engine.read(CID, 0, 100) == b"abX"
    assert engine.read(CID, 1, 1) == b"b"


def test_old_versions_refused(engine: ChunkEngine) -> None:
    engine.write(CID, 5, b"x", 0, True)
    engine.commit(CID, 5)
    with pytest.raises(InvalidArgument):
        engine.write(CID, 5, b"y", 0, True)
    with pytest.raises(NotFound):
        engine.commit(CID, 7)


def test_remove_and_list(engine: ChunkEngine) -> None:
    for i in range(4):
        cid = ChunkId(1, 42, i)
        engine.write(cid, 1, b"d", 0, True)
        engine.commit(cid, 1)
    engine.write(ChunkId(2, 42, 0), 1, b"d", 0, True)
    engine.commit(ChunkId(2, 42, 0), 1)
    assert len(engine.list_chain(1)) == 4
    assert engine.remove(1, 42, 2) == 2
    assert sorted(c.index for c in engine.list_chain(1)) == [0, 1]
    assert list(engine.list_chain(2)) == [ChunkId(2, 42, 0)]


def test_usage_counts_committed_chunks(engine: ChunkEngine, tmp_path: Path) -> None:
    engine.write(CID, 1, b"a" * 100, 0, True)
    assert engine.usage() == (0, 0)  # pending only
    engine.commit(CID, 1)
    engine.write(CID, 2, b"b" * 30, 0, True)
    engine.commit(CID, 2)  # a new version replaces the old one's bytes
    engine.replace(ChunkId(1, 43, 0), 5, b"c" * 70)
    assert engine.usage() == (2, 100)
    engine.remove(1, 42)
    assert engine.usage() == (1, 70)
    if isinstance(engine, LocalChunkEngine):  # rebuilt from the files at start
        assert LocalChunkEngine(tmp_path / "chunks", fsync=False).usage() == (1, 70)


def test_large_chunk_random_reads(engine: ChunkEngine) -> None:
    data = bytes(range(256)) * 4096 * 3  # 3 MiB: many 64 KiB blocks
    engine.write(CID, 1, data, 0, True)
    engine.commit(CID, 1)
    for off, n in [(0, 4096), (65530, 20), (len(data) - 10, 4096), (123456, 1 << 20)]:
        assert engine.read(CID, off, n) == data[off : off + n]


def test_read_checked_crc_covers_exactly_the_bytes_returned(engine: ChunkEngine) -> None:
    data = os.urandom(3 * 65536 + 777)  # whole blocks and a short last one
    engine.write(CID, 1, data, 0, True)
    engine.commit(CID, 1)
    ranges = [
        (0, len(data)),
        (0, 65536),
        (65536, 131072),
        (100, 5),
        (65530, 70000),
        (len(data) - 10, 4096),
        (131072, 1 << 20),
        (1, len(data)),
    ]
    for off, n in ranges:
        got, crc = engine.read_checked(CID, off, n)
        assert bytes(got) == data[off : off + n]
        assert crc == crc32c(data[off : off + n]), (off, n)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=70000))
def test_crc32c_combine_equals_the_crc_of_the_concatenation(a: bytes, b: bytes) -> None:
    assert crc32c_combine(crc32c(a), crc32c(b), len(b)) == crc32c(a + b)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=64, max_size=64), max_size=9))
def test_crc32c_concat_equals_the_crc_of_the_parts_end_to_end(parts: list[bytes]) -> None:
    assert crc32c_concat([crc32c(p) for p in parts], 64) == crc32c(b"".join(parts))


@pytest.mark.parametrize("block", [0, 1, 2, 3])
def test_a_flipped_byte_names_its_block_whatever_the_range_read(tmp_path: Path, block: int) -> None:
    """Whole blocks are checked in one pass, then block by block only where that fails."""
    engine = LocalChunkEngine(tmp_path, fsync=False)
    data = os.urandom(3 * 65536 + 777)  # three whole blocks and a short last one
    engine.write(CID, 1, data, 0, True)
    engine.commit(CID, 1)
    position = HEADER_SIZE + block * 65536 + 300
    with open(tmp_path / str(CID.chain) / f"{CID.inode:016x}.{CID.index:08x}", "r+b") as f:
        f.seek(position)
        f.write(bytes([data[position - HEADER_SIZE] ^ 4]))
    for off, n in ((0, len(data)), (block * 65536 + 10, 20), (0, (block + 1) * 65536)):
        with pytest.raises(ChecksumMismatch, match=f"block {block} fails CRC32C"):
            engine.read(CID, off, n)
    if block:  # the blocks before it still read
        assert bytes(engine.read(CID, 0, block * 65536)) == data[: block * 65536]


def test_local_detects_flipped_byte_and_survives_restart(tmp_path: Path) -> None:
    engine = LocalChunkEngine(tmp_path, fsync=False)
    engine.write(CID, 3, b"a" * 200_000, 0, True)
    engine.commit(CID, 3)
    engine.write(ChunkId(1, 42, 1), 1, b"pending", 0, True)
    reopened = LocalChunkEngine(tmp_path, fsync=False)
    assert reopened.stat(CID) == (ChunkMeta(3, 200_000), None)
    assert reopened.stat(ChunkId(1, 42, 1)) == (None, None)  # unacknowledged, dropped
    file = next((tmp_path / "1").iterdir())
    raw = bytearray(file.read_bytes())
    raw[HEADER_SIZE + 150_000] ^= 0xFF
    file.write_bytes(bytes(raw))
    assert reopened.read(CID, 0, 1000) == b"a" * 1000  # other blocks still verify
    with pytest.raises(ChecksumMismatch):
        reopened.read(CID, 140_000, 20_000)


def test_local_chunk_damaged_at_start_is_bad_not_a_hole(tmp_path: Path) -> None:
    engine = LocalChunkEngine(tmp_path, fsync=False)
    engine.write(CID, 3, b"a" * 1000, 0, True)
    engine.commit(CID, 3)
    file = next((tmp_path / "1").iterdir())
    raw = bytearray(file.read_bytes())
    raw[0] ^= 0xFF  # the magic: the header is damaged, so the restart cannot index it
    file.write_bytes(bytes(raw))
    reopened = LocalChunkEngine(tmp_path, fsync=False)
    assert reopened.stat(CID) == (None, None) and reopened.list_chain(1) == {}
    with pytest.raises(ChecksumMismatch):
        reopened.read(CID, 0, 10)
    with pytest.raises(ChecksumMismatch):
        reopened.write(CID, 4, b"b", 5, False)  # a patch would build on zeros
    reopened.replace(CID, 4, b"c" * 10)  # what resync and fsck's repair send
    assert reopened.read(CID, 0, 100) == b"c" * 10
    file.unlink()
    with pytest.raises(ChecksumMismatch, match="missing"):
        reopened.read(CID, 0, 10)  # committed, its file gone: bad, not a hole
