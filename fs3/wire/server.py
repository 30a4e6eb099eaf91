"""The server side of fs3's framed protocol (:mod:`fs3.wire.framing`): a thread per
connection, each request answered before the next is read, so a reply needs no id."""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
from collections.abc import Callable

from fs3.errors import Fs3Error, Unavailable
from fs3.types import host_port
from fs3.wire.framing import (
    REQUEST,
    Reply,
    Request,
    error_frame,
    recv_exact,
    recv_request,
    send_frame,
    uninitialised,
)

log = logging.getLogger("fs3.wire")


class FrameServer(socketserver.ThreadingTCPServer):
    """Serves framed requests, one thread per connection, answering each before reading the
    next. ``payload_size(req)`` says how many payload bytes follow a request header, or
    raises Fs3Error for a header over the server's bounds: that connection then gets the
    error frame and is closed, with one log line naming the peer, before anything is
    allocated. ``dispatch(req, payload)`` returns the reply (header, payload), and its
    Fs3Errors go back as error frames. Run ``serve_forever`` in a thread of its own."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        payload_size: Callable[[Request], int],
        dispatch: Callable[[Request, memoryview], Reply],
    ) -> None:
        self.payload_size = payload_size
        self.dispatch = dispatch
        if ":" in address[0]:  # an IPv6 address; socketserver's default family is IPv4
            self.address_family = socket.AF_INET6
        try:
            super().__init__(address, _FrameHandler)
        except OSError as err:
            raise Unavailable(f"cannot listen on {host_port(*address)}: {err}") from None


class _FrameHandler(socketserver.BaseRequestHandler):
    server: FrameServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        header = bytearray(REQUEST.size)
        buffer = uninitialised(0)  # grows to the largest payload seen, then is reused
        while True:
            try:
                req = recv_request(sock, header)
            except (ConnectionError, OSError):
                return
            try:
                size = self.server.payload_size(req)
            except Fs3Error as err:
                host, port = self.client_address[:2]
                log.warning("closing connection from %s:%d: %s", host, port, err.strerror)
                with contextlib.suppress(OSError):  # the reason, if the peer still listens
                    send_frame(sock, *error_frame(err))
                return
            if len(buffer) < size:
                buffer = uninitialised(size)
            payload = memoryview(buffer)[:size]
            try:
                recv_exact(sock, payload)
                reply = self.server.dispatch(req, payload)
            except Fs3Error as err:
                reply = error_frame(err)
            except (ConnectionError, OSError):
                return
            except Exception as err:
                log.exception("framed op %d failed", req.op)
                reply = error_frame(Fs3Error(f"internal error: {type(err).__name__}: {err}"))
            try:
                send_frame(sock, *reply)
            except OSError:
                return
