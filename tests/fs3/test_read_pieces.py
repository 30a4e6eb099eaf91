"""The engine's batched read of one chunk (ChunkEngine.read_pieces, issue 22): what a
READ_BATCH's pieces of one chunk share, one open and one header, must read exactly what
read_checked reads for each range, and a bad block must fail only the ranges on it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fs3.errors import ChecksumMismatch
from fs3.storage.engine import ChunkEngine, MemoryChunkEngine
from fs3.storage.local import HEADER_SIZE, LocalChunkEngine
from fs3.types import ChunkId
from fs3.wire.checksum import crc32c

CID = ChunkId(1, 42, 0)
BLOCK = 65536
RANGES = [
    (0, 4096),
    (BLOCK - 100, 200),  # across a block edge
    (BLOCK, 2 * BLOCK),  # whole blocks: their CRCs combined
    (3 * BLOCK + 500, 4096),  # in the short last block, cut at the end
    (10 * BLOCK, 10),  # past the end
    (5, 0),
]


@pytest.fixture(params=["memory", "local"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> ChunkEngine:
    if request.param == "memory":
        return MemoryChunkEngine()
    return LocalChunkEngine(tmp_path / "chunks", fsync=False)


def test_read_pieces_equals_read_checked_per_range(engine: ChunkEngine) -> None:
    data = os.urandom(3 * BLOCK + 777)
    engine.write(CID, 1, data, 0, True)
    engine.commit(CID, 1)
    got = engine.read_pieces(CID, RANGES)
    for (offset, length), answer in zip(RANGES, got, strict=True):
        assert not isinstance(answer, ChecksumMismatch)
        body, crc = answer
        assert body == data[offset : offset + length]
        assert crc == crc32c(body)
        single, single_crc = engine.read_checked(CID, offset, length)
        assert (bytes(single), single_crc) == (body, crc)
    assert engine.read_pieces(ChunkId(1, 42, 9), RANGES[:2]) == [(b"", 0), (b"", 0)]  # holes


def test_a_bad_block_fails_only_the_pieces_on_it(tmp_path: Path) -> None:
    engine = LocalChunkEngine(tmp_path, fsync=False)
    data = os.urandom(3 * BLOCK + 777)
    engine.write(CID, 1, data, 0, True)
    engine.commit(CID, 1)
    position = HEADER_SIZE + BLOCK + 300  # in block 1
    with open(tmp_path / str(CID.chain) / f"{CID.inode:016x}.{CID.index:08x}", "r+b") as f:
        f.seek(position)
        f.write(bytes([data[position - HEADER_SIZE] ^ 4]))
    got = engine.read_pieces(CID, RANGES[:4])
    assert got[0] == (data[:4096], crc32c(data[:4096]))
    for bad in got[1:3]:
        assert isinstance(bad, ChecksumMismatch) and "block 1 fails CRC32C" in str(bad)
    assert got[3] == (data[3 * BLOCK + 500 :], crc32c(data[3 * BLOCK + 500 :]))
    os.unlink(tmp_path / str(CID.chain) / f"{CID.inode:016x}.{CID.index:08x}")
    gone = engine.read_pieces(CID, RANGES[:2])  # committed here, file gone: bad, not holes
    assert all(isinstance(g, ChecksumMismatch) and "missing" in str(g) for g in gone)
