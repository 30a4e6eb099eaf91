"""Byte ranges of files as chunk pieces, read many at once: what ``cat_ranges`` and the
submission ring (:mod:`fs3.client.ring`) share.

A range is cut where chunks end; each piece is read by
:meth:`fs3.client.chunks.ChunkIO.read_many`, which batches them per storage target; a piece
that comes back short (a hole, a chunk never written past some point) is padded with zeros
up to the file's length, as a single read does.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor

from fs3.client.chunks import ChunkIO, ChunkPiece, PieceResult
from fs3.errors import Fs3Error
from fs3.types import Inode

Range = tuple[str, Inode | Fs3Error, int | None, int | None]
"""A range to read: the file's path, its inode (or the error opening it), start, end."""


def clamp(start: int | None, end: int | None, size: int) -> tuple[int, int]:
    """``[start, end)`` of a ``size``-byte file as ``cat_file`` reads it: None for its
    start or end, negatives from its end; cut at the end, empty where it ends first."""
    lo = 0 if start is None else (start if start >= 0 else max(0, size + start))
    hi = size if end is None else (end if end >= 0 else size + end)
    lo = min(lo, size)
    return lo, max(lo, min(hi, size))


def pieces_of(path: str, inode: Inode, start: int, end: int) -> list[ChunkPiece]:
    """The chunk pieces of bytes ``[start, end)`` of ``inode`` (within its length)."""
    cs = inode.layout.chunk_size
    pieces = []
    pos = start
    while pos < end:
        index, within = divmod(pos, cs)
        n = min(cs - within, end - pos)
        pieces.append(ChunkPiece(inode.layout, inode.id, index, within, n, path))
        pos += n
    return pieces


def joined(pieces: Sequence[ChunkPiece], results: Sequence[PieceResult]) -> bytes | Fs3Error:
    """The bytes of consecutive ``pieces`` from their read ``results``, holes as zeros;
    the first piece's error where one failed."""
    parts: list[bytes | memoryview] = []
    for piece, got in zip(pieces, results, strict=True):
        if isinstance(got, Fs3Error):
            return got
        parts.append(got)
        if len(got) < piece.length:
            parts.append(bytes(piece.length - len(got)))
    return b"".join(parts)


def read_ranges(
    chunks: ChunkIO, executor: Executor, ranges: Sequence[Range]
) -> list[bytes | Exception]:
    """Each range's bytes (or its error), every piece of every range read at once."""
    plan: list[tuple[int, int] | Fs3Error] = []  # per range: its pieces' slice, or its error
    pieces: list[ChunkPiece] = []
    for path, inode, start, end in ranges:
        if isinstance(inode, Fs3Error):
            plan.append(inode)
            continue
        lo, hi = clamp(start, end, inode.length)
        first = len(pieces)
        pieces += pieces_of(path, inode, lo, hi)
        plan.append((first, len(pieces)))
    results = chunks.read_many(pieces, executor) if pieces else []
    out: list[bytes | Exception] = []
    for entry in plan:
        if isinstance(entry, Fs3Error):
            out.append(entry)
        else:
            a, b = entry
            out.append(joined(pieces[a:b], results[a:b]))
    return out
