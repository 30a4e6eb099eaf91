"""One request to each of several servers from one thread: every request is sent before
any reply is read, so the servers work at once without a thread per request.

A batch of small reads goes to each storage target a piece lives on; waiting on those
batches from worker threads cost a hop to a thread and back per batch, and their wakeups
and GIL handoffs were a fifth of a 32-read ``cat_ranges`` (issue 22). The replies wait in
the kernel's socket buffers while an earlier one is read (a reply too large for them only
holds its server until it is read: each server answers on a connection of its own).

Connections are :class:`fs3.wire.client.Connection` objects kept idle per address here,
apart from the client's :class:`fs3.wire.client.ConnectionPool`: one broken connection
drops the idle ones to its server, as the pool does.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from fs3.errors import Fs3Error, Unavailable
from fs3.wire.client import Connection
from fs3.wire.framing import RESPONSE, Request, error_of, recv_exact, send_frame, uninitialised

Call = tuple[str, Request, bytes]
"""A request to send: the server's address, the request, its payload."""


class Fanout:
    """Idle connections per server address, for :meth:`exchange`.

    Args:
        connect_timeout: bounds connecting to a server.
        io_timeout: bounds each send and each reply.
    """

    def __init__(self, connect_timeout: float, io_timeout: float) -> None:
        self._connect_timeout = connect_timeout
        self._io_timeout = io_timeout
        self._idle: dict[str, list[Connection]] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def exchange(self, calls: Sequence[Call]) -> list[memoryview | Fs3Error]:
        """Sends every call, then reads each reply: per call its reply's payload, or the
        error it got (the server's, or Unavailable when its connection failed or timed
        out); one call's failure leaves the others answered."""
        if os.getpid() != self._pid:  # a forked child must not read its parent's replies
            self._after_fork()
        sent: list[Connection | Fs3Error] = [self._send(*call) for call in calls]
        header = bytearray(RESPONSE.size)
        out: list[memoryview | Fs3Error] = []
        for conn in sent:
            if isinstance(conn, Fs3Error):
                out.append(conn)
                continue
            try:
                recv_exact(conn.sock, memoryview(header))
                status, length, _, _ = RESPONSE.unpack(header)
                body = uninitialised(length)
                recv_exact(conn.sock, body)
            except (OSError, ConnectionError) as err:
                out.append(self._broken(conn, err))
                continue
            self._release(conn)
            out.append(error_of(status, body, f"server {conn.address}") if status else body)
        return out

    def _send(self, address: str, req: Request, payload: bytes) -> Connection | Fs3Error:
        with self._lock:
            idle = self._idle.get(address)
            conn = idle.pop() if idle else None
        if conn is None:
            try:
                conn = Connection(address, self._connect_timeout, self._io_timeout)
            except Unavailable as err:
                return err
        try:
            send_frame(conn.sock, req.pack(len(payload)), payload)
        except OSError as err:
            return self._broken(conn, err)
        return conn

    def _broken(self, conn: Connection, err: BaseException) -> Unavailable:
        """Closes ``conn`` and the idle connections to its server (as dead, most likely:
        the server restarted); the error its call gets."""
        conn.close()
        with self._lock:
            others = self._idle.pop(conn.address, [])
        for other in others:
            other.close()
        kind = "timed out" if isinstance(err, TimeoutError) else "failed"
        return Unavailable(f"server {conn.address} {kind}: {err}")

    def _release(self, conn: Connection) -> None:
        with self._lock:
            self._idle.setdefault(conn.address, []).append(conn)

    def _after_fork(self) -> None:
        # Only the forking thread lives on in the child: a lock held elsewhere is made anew.
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.close()

    def close(self) -> None:
        """Closes the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()
