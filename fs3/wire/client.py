"""The client side of fs3's framed protocol (:mod:`fs3.wire.framing`): pooled connections,
several per server, which is where a client's parallelism comes from."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Sequence

from fs3.errors import Fs3Error, Unavailable
from fs3.wire.framing import (
    RESPONSE,
    Request,
    error_of,
    raise_error,
    recv_exact,
    send_frame,
    uninitialised,
)

Call = tuple[str, Request, bytes]
"""A request for :meth:`ConnectionPool.exchange`: the server's address, the request, its
payload."""


class Connection:
    """One client socket to a server's framed port (storage data path or meta)."""

    def __init__(self, address: str, connect_timeout: float, io_timeout: float) -> None:
        self.address = address
        host, port = address.rsplit(":", 1)
        host = host.removeprefix("[").removesuffix("]")  # an IPv6 host (TargetInfo.data_address)
        try:
            self.sock = socket.create_connection((host, int(port)), timeout=connect_timeout)
        except OSError as err:
            raise Unavailable(f"cannot connect to {address}: {err}") from None
        self.sock.settimeout(io_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._header = bytearray(RESPONSE.size)

    def request(
        self, req: Request, payload: bytes | memoryview = b""
    ) -> tuple[int, int, memoryview]:
        """Sends one request; returns (version, crc, payload). Raises the server's error, or
        Unavailable when the connection breaks or times out (then this object is unusable)."""
        self.send(req, payload)
        status, version, crc, body = self.receive()
        if status:
            raise_error(status, body, f"server {self.address}")
        return version, crc, body

    def send(self, req: Request, payload: bytes | memoryview = b"") -> None:
        """Sends one request without waiting for its reply. Raises Unavailable (then this
        object is unusable)."""
        try:
            send_frame(self.sock, req.pack(len(payload)), payload)
        except OSError as err:
            raise self._broken(err) from None

    def receive(self) -> tuple[int, int, int, memoryview]:
        """The next reply: (status, version, crc, body), an error frame's body when status is
        not 0. Raises Unavailable (then this object is unusable)."""
        try:
            recv_exact(self.sock, memoryview(self._header))
            status, length, crc, version = RESPONSE.unpack(self._header)
            body = uninitialised(length)
            recv_exact(self.sock, body)
        except (OSError, ConnectionError) as err:
            raise self._broken(err) from None
        return status, version, crc, body

    def _broken(self, err: BaseException) -> Unavailable:
        self.close()
        kind = "timed out" if isinstance(err, TimeoutError) else "failed"
        return Unavailable(f"server {self.address} {kind}: {err}")

    def close(self) -> None:
        self.sock.close()


class ConnectionPool:
    """Idle connections per address, so many chunk transfers can run at once."""

    def __init__(self, connect_timeout: float, io_timeout: float) -> None:
        self._connect_timeout = connect_timeout
        self._io_timeout = io_timeout
        self._idle: dict[str, list[Connection]] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def request(
        self, address: str, req: Request, payload: bytes | memoryview = b""
    ) -> tuple[int, int, memoryview]:
        conn = self._take(address)
        try:
            result = conn.request(req, payload)
        except Unavailable:
            # The server went away (a restart, most likely): the other idle connections to
            # it are as dead, and each would cost a failed attempt of its own.
            self._drop(address)
            raise
        except Fs3Error:
            self._release(conn)
            raise
        self._release(conn)
        return result

    def exchange(self, calls: Sequence[Call]) -> list[memoryview | Fs3Error]:
        """Sends every call, each on a connection of its own, then reads each reply: per call
        its reply's body, or its error (the server's, or Unavailable). From one thread the
        servers work at once, with no thread hop per call (a read batch per target, issue
        22); one call's failure leaves the others answered. The replies wait in the
        kernel's socket buffers while an earlier one is read."""
        sent: list[Connection | Fs3Error] = []
        for address, req, payload in calls:
            try:
                conn = self._take(address)
                conn.send(req, payload)
            except Unavailable as err:
                self._drop(address)
                sent.append(err)
                continue
            sent.append(conn)
        out: list[memoryview | Fs3Error] = []
        for conn in sent:
            if isinstance(conn, Fs3Error):
                out.append(conn)
                continue
            try:
                status, _, _, body = conn.receive()
            except Unavailable as err:
                self._drop(conn.address)
                out.append(err)
                continue
            self._release(conn)
            out.append(error_of(status, body, f"server {conn.address}") if status else body)
        return out

    def _take(self, address: str) -> Connection:
        """An idle connection to ``address``, else a new one. Raises Unavailable."""
        if os.getpid() != self._pid:
            self._after_fork()
        with self._lock:
            idle = self._idle.setdefault(address, [])
            conn = idle.pop() if idle else None
        return conn or Connection(address, self._connect_timeout, self._io_timeout)

    def _release(self, conn: Connection) -> None:
        with self._lock:
            self._idle.setdefault(conn.address, []).append(conn)

    def _drop(self, address: str) -> None:
        with self._lock:
            conns = self._idle.pop(address, [])
        for conn in conns:
            conn.close()

    def _after_fork(self) -> None:
        """A forked child (a DataLoader worker) must not share its parent's connections: a
        reply meant for one process would reach the other, as valid data of another chunk.
        Closing the child's copies leaves the parent's open. Only the forking thread lives
        on in the child, so a lock another thread held at the fork is made anew."""
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.close()

    def close(self) -> None:
        with self._lock:
            for conns in self._idle.values():
                for conn in conns:
                    conn.close()
            self._idle.clear()
