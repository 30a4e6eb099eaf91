"""fs3's framed binary protocol over TCP: one request, then its reply, at a time per socket.

Chunk bytes and meta requests (:data:`fs3.wire.ops.METHODS`) both travel in these frames.
Python gRPC tops out near 230 MiB/s for 4 MiB messages on loopback, and a round trip costs
about 0.6 ms; a raw socket moves about ten times the bytes, and a frame costs about a tenth
of the time. A frame is a fixed header, then the payload, received with ``recv_into`` into a
buffer sized from the header (no concatenation) and sent with ``sendmsg`` of header and
payload together (no copy). Servers are in :mod:`fs3.wire.server`, clients in
:mod:`fs3.wire.client`; op numbers in :mod:`fs3.wire.ops`, error codes in
:mod:`fs3.wire.codes`.
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass

import numpy

from fs3.capabilities import SIZE as CAPABILITY_SIZE
from fs3.errors import Fs3Error, error_message
from fs3.wire.codes import error_code, error_type
from fs3.wire.ops import WITH_PAYLOAD

# op, flags, chain, table version, inode, index, offset, length, crc, version
REQUEST = struct.Struct("!BBxxIQQIIIIQ")
# status (0 = ok, else fs3.wire.codes), payload length, crc, version
RESPONSE = struct.Struct("!BxxxIIQ")
DUMP_ENTRY = struct.Struct("!QIQQ")  # inode, index, version, length

FLAG_TRUNCATE = 1
FLAG_CAPABILITY = 2
"""The header is followed by a capability (:data:`fs3.capabilities.SIZE` bytes), then the
payload: chunk requests carry one, as meta issued it or as a service signed it."""
LOCAL_MESSAGE_MAX = 64 * 1024
"""Largest payload either side of a local-read Unix socket sends (a token, an error, a
client's CRC report: all short): each side refuses a bigger length before allocating."""


Reply = tuple[bytes, bytes | memoryview]  # response header, payload


@dataclass(frozen=True)
class Request:
    op: int
    chain: int = 0
    table_version: int = 0
    inode: int = 0
    index: int = 0
    offset: int = 0
    length: int = 0
    crc: int = 0
    version: int = 0
    truncate: bool = False
    capability: bytes = b""

    def pack(self, payload_len: int) -> bytes:
        """The header, and the capability when there is one."""
        length = payload_len if self.op in WITH_PAYLOAD else self.length
        flags = FLAG_TRUNCATE if self.truncate else 0
        if self.capability:
            flags |= FLAG_CAPABILITY
        header = REQUEST.pack(
            self.op,
            flags,
            self.chain,
            self.table_version,
            self.inode,
            self.index,
            self.offset,
            length,
            self.crc,
            self.version,
        )
        return header + self.capability if self.capability else header

    @classmethod
    def unpack(cls, raw: bytes | bytearray, capability: bytes = b"") -> Request:
        op, flags, chain, tv, inode, index, offset, length, crc, version = REQUEST.unpack(raw)
        truncate = bool(flags & FLAG_TRUNCATE)
        return cls(op, chain, tv, inode, index, offset, length, crc, version, truncate, capability)


def uninitialised(size: int) -> memoryview:
    """A writable buffer for a payload that will overwrite all of it. Unlike ``bytearray``,
    nothing is zero-filled: that cost 7% of a warm sequential read per fresh 4 MiB chunk,
    and pages are only touched (resident) as bytes arrive, so a peer that announces a
    large body and sends none costs address space, not memory."""
    return memoryview(numpy.empty(size, dtype=numpy.uint8))


def recv_exact(sock: socket.socket, view: memoryview) -> None:
    """Fills ``view`` from ``sock``; raises ConnectionError when the peer closes."""
    while view:
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("connection closed by peer")
        view = view[n:]


def recv_request(sock: socket.socket, header: bytearray) -> Request:
    """Reads one request header into ``header``, and the capability that follows it when
    its flag says so (fixed size: bounded like the header). Raises ConnectionError."""
    recv_exact(sock, memoryview(header))
    if not header[1] & FLAG_CAPABILITY:
        return Request.unpack(header)
    capability = bytearray(CAPABILITY_SIZE)
    recv_exact(sock, memoryview(capability))
    return Request.unpack(header, bytes(capability))


def send_frame(sock: socket.socket, header: bytes, payload: bytes | memoryview = b"") -> None:
    """Sends header and payload with as few copies as the kernel allows."""
    parts = [memoryview(header), memoryview(payload)] if payload else [memoryview(header)]
    while parts:
        sent = sock.sendmsg(parts)
        while parts and sent >= len(parts[0]):
            sent -= len(parts[0])
            parts.pop(0)
        if parts:
            parts[0] = parts[0][sent:]


def error_body(err: Fs3Error) -> bytes:
    """What an error frame carries after its status: ``err``'s message and path as JSON."""
    return json.dumps({"message": error_message(err), "path": err.path}).encode()


def error_frame(err: Fs3Error) -> tuple[bytes, bytes]:
    """The reply that carries ``err``: its type's code, then :func:`error_body`."""
    body = error_body(err)
    return RESPONSE.pack(error_code(err), len(body), 0, 0), body


def error_of(code: int, body: bytes | bytearray | memoryview, where: str) -> Fs3Error:
    """The error an error frame (status ``code``, ``body``) carries, naming ``where``."""
    info = json.loads(bytes(body))
    return error_type(code)(f"{info['message']} (at {where})", info.get("path"))


def raise_error(code: int, body: bytes | bytearray | memoryview, where: str) -> None:
    """Raises the error of an error frame (status ``code``, ``body``), naming ``where``."""
    raise error_of(code, body, where)
