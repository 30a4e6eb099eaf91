"""The batched read of the data path (``READ_BATCH``): many small reads in one round trip.

A data loader reads random samples a few KiB each; one READ per sample pays a round trip,
a capability check and a frame each, which is most of its cost (3FS's USRBIO submits many
reads at once for the same reason). A batch carries many pieces, each ``(chain, inode,
chunk index, offset, length)`` with its own capability, to one target; the reply answers
every piece, in order, each as a single READ would: its bytes with their CRC32C and the
chunk's version, or the error a READ of it would have raised. One piece's refusal (no
capability for its inode, a busy chunk) leaves the others answered.

Request payload: ``COUNTS`` (capabilities, pieces), the capabilities (each
:data:`fs3.capabilities.SIZE` bytes, numbered in order: pieces of one file share one),
then one :data:`PIECE` per piece naming its capability by number.
Reply payload: one :data:`PIECE_REPLY` per piece, then each piece's bytes in order (an error
piece's bytes are its error body, as an error frame carries it).

Everything a batch sizes is bounded before it is allocated: :data:`MAX_PIECES` pieces,
:data:`MAX_BYTES` bytes asked in all, so the payload is at most :data:`MAX_PAYLOAD`.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from fs3.capabilities import SIZE as CAPABILITY_SIZE
from fs3.errors import ChecksumMismatch, Fs3Error, InvalidArgument
from fs3.wire.checksum import crc32c
from fs3.wire.codes import error_code
from fs3.wire.framing import error_body, error_of

MAX_PIECES = 1024
"""Pieces one batch may carry."""
MAX_BYTES = 16 << 20
"""Bytes the pieces of one batch may ask for in all: the reply a target builds is at most
this (and a few bytes per piece)."""
COUNTS = struct.Struct("!II")  # capabilities, pieces
PIECE = struct.Struct("!IQIIII")  # chain, inode, chunk index, offset, length, capability
PIECE_REPLY = struct.Struct("!BxxxIIQ")  # status (0 or fs3.wire.codes), length, crc, version
MAX_PAYLOAD = COUNTS.size + MAX_PIECES * (CAPABILITY_SIZE + PIECE.size)
"""Largest request payload of a batch (every piece with a capability of its own)."""
_NO_CAPABILITY = bytes(CAPABILITY_SIZE)
"""How "no capability" (a cluster with capabilities off) travels: no real one is all zeros
(its kind byte is 1 or 2)."""


class BatchPiece(NamedTuple):
    """One read of a batch, as it travels (a tuple: a server decodes hundreds per batch)."""

    chain: int
    inode: int
    index: int
    offset: int
    length: int
    capability: bytes = b""


PieceReply = tuple[int, memoryview] | Fs3Error
"""A piece's answer: (chunk version, its bytes), or the error its READ raised."""


def check_payload_size(length: int) -> None:
    """Refuses a batch whose payload exceeds :data:`MAX_PAYLOAD`, before it is received.

    Raises:
        InvalidArgument: naming the length and the bound.
    """
    if length > MAX_PAYLOAD:
        raise InvalidArgument(
            f"read batch of {length} payload bytes is over the {MAX_PAYLOAD} of "
            f"{MAX_PIECES} pieces (fs3.wire.batch.MAX_PIECES)"
        )


def encode_request(pieces: list[BatchPiece]) -> bytes:
    """The payload of a READ_BATCH carrying ``pieces`` (a capability shared by several
    pieces travels once)."""
    numbers: dict[bytes, int] = {}
    rows = []
    for p in pieces:
        cap = numbers.setdefault(p.capability, len(numbers))
        rows.append(PIECE.pack(p.chain, p.inode, p.index, p.offset, p.length, cap))
    caps = b"".join(cap or _NO_CAPABILITY for cap in numbers)
    return COUNTS.pack(len(numbers), len(pieces)) + caps + b"".join(rows)


def decode_request(payload: memoryview) -> list[BatchPiece]:
    """The pieces of a READ_BATCH payload.

    Raises:
        InvalidArgument: the counts disagree with the payload's length, a piece names a
            capability that is not there, or the batch passes :data:`MAX_PIECES` or
            :data:`MAX_BYTES`; one error for the whole batch, before anything is read.
    """
    if len(payload) < COUNTS.size:
        raise InvalidArgument(f"read batch of {len(payload)} bytes has no counts")
    ncaps, npieces = COUNTS.unpack_from(payload)
    if npieces > MAX_PIECES or ncaps > npieces:
        raise InvalidArgument(
            f"read batch of {npieces} pieces and {ncaps} capabilities: at most "
            f"{MAX_PIECES} pieces (fs3.wire.batch.MAX_PIECES), no more capabilities than pieces"
        )
    caps_end = COUNTS.size + ncaps * CAPABILITY_SIZE
    if len(payload) != caps_end + npieces * PIECE.size:
        raise InvalidArgument(
            f"read batch of {len(payload)} bytes does not hold the {ncaps} capabilities "
            f"and {npieces} pieces it announces"
        )
    caps = [
        bytes(payload[COUNTS.size + i * CAPABILITY_SIZE : COUNTS.size + (i + 1) * CAPABILITY_SIZE])
        for i in range(ncaps)
    ]
    caps = [b"" if cap == _NO_CAPABILITY else cap for cap in caps]
    pieces, total = [], 0
    for chain, inode, index, offset, length, cap in PIECE.iter_unpack(payload[caps_end:]):
        if cap >= ncaps:
            raise InvalidArgument(f"read batch piece names capability {cap} of {ncaps}")
        total += length
        pieces.append(BatchPiece(chain, inode, index, offset, length, caps[cap]))
    if total > MAX_BYTES:
        raise InvalidArgument(
            f"read batch asks for {total} bytes, over {MAX_BYTES} (fs3.wire.batch.MAX_BYTES)"
        )
    return pieces


def encode_reply(answers: list[tuple[int, bytes, int] | Fs3Error]) -> bytes:
    """The reply payload for ``answers``: per piece (version, bytes, CRC32C of the bytes),
    or the error its READ raised."""
    rows, bodies = [], []
    for answer in answers:
        if isinstance(answer, Fs3Error):
            body = error_body(answer)
            rows.append(PIECE_REPLY.pack(error_code(answer), len(body), 0, 0))
        else:
            version, body, crc = answer
            rows.append(PIECE_REPLY.pack(0, len(body), crc, version))
        bodies.append(body)
    return b"".join(rows) + b"".join(bodies)


def decode_reply(payload: memoryview, count: int, where: str) -> list[PieceReply]:
    """The answers of a reply to a batch of ``count`` pieces, each piece's bytes checked
    against its CRC32C (a mismatch is that piece's ChecksumMismatch); views into
    ``payload``, no copy. Errors name ``where``.

    Raises:
        Fs3Error: the reply is not one to ``count`` pieces (a broken peer).
    """
    rows = count * PIECE_REPLY.size
    if len(payload) < rows:
        raise Fs3Error(f"{where}: read batch reply too short for {count} pieces")
    out: list[PieceReply] = []
    at = rows
    for status, length, crc, version in PIECE_REPLY.iter_unpack(payload[:rows]):
        body = payload[at : at + length]
        at += length
        if len(body) != length:
            raise Fs3Error(f"{where}: read batch reply shorter than its pieces")
        if status:
            out.append(error_of(status, body, where))
        elif crc32c(body) != crc:
            out.append(ChecksumMismatch(f"{where}: chunk corrupted in transit"))
        else:
            out.append((version, body))
    if at != len(payload):
        raise Fs3Error(f"{where}: read batch reply longer than its pieces")
    return out
