"""TCP links between partner ranks on different nodes, with a small framed protocol.

A frame is a fixed 48-byte header followed by its payload, received straight into the
destination buffer with ``recv_into``. Each link is used in each direction by one thread
only (up-going partial sums one way, finished results the other), so sends and receives
need no locks.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import NamedTuple

from torch.distributed import Store

from hfreduce.addresses import format_endpoint, parse_endpoint
from hfreduce.errors import CollectiveTimeoutError, HfreduceError, PeerLostError
from hfreduce.topology import Topology
from hfreduce.tree import TreeLinks

MAGIC = 0x31524648  # "HFR1"
DATA = 1
ABORT = 2  # payload is a UTF-8 reason: the call failed its checks somewhere in the tree
FAILED = 3  # payload is a UTF-8 reason: the sender's communicator failed; it closes next

_HEADER = struct.Struct("<IBBBxqqqqi4x")
_HELLO = struct.Struct("<Iqq")  # magic, tree, rank of the connecting child
_SOCKET_BUFFER = 4 << 20
# A partner is given twice the call timeout: if it waits on a hung rank of its own node,
# that node's timeout fires first and its failure (naming the hung rank) reaches us.
LINK_PATIENCE = 2
# The longest a failing rank spends telling its partners (Link.fail's own waits, all links
# at once): one on a host cut off accepts nothing, and our node's ranks wait for the notice.
FAILURE_NOTICE_S = 2.5
_NOTICE_SEND_S = 1.0  # of which sending the notice (the rest: reading until the partner closes)


class Frame(NamedTuple):
    """A frame's header fields, in wire order after the magic. A tuple, not a dataclass:
    one is made per frame sent and received, and a tuple costs a tenth as much."""

    kind: int
    dtype: int
    op: int
    call: int
    chunk: int
    numel: int
    payload: int
    sender: int


class Link:
    """One connection to a partner rank."""

    def __init__(self, sock: socket.socket, peer_rank: int, peer_node: str, timeout: float):
        self.sock = sock
        self.peer_rank = peer_rank
        self.peer_node = peer_node
        self.timeout = timeout * LINK_PATIENCE
        self._header = bytearray(_HEADER.size)
        # Held while a frame is being sent, so a failure notice never lands mid-frame.
        self._sending = threading.Lock()
        # Blocking I/O with the timeout kept by the kernel: Python's own socket timeout
        # polls before every call, and a receive waiting for a whole frame
        # (MSG_WAITALL) wakes once instead of per segment: 2.9-3.7 GB/s instead of
        # 2.2-2.8 streaming 1 MiB frames over loopback here.
        sock.settimeout(None)
        for timer in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            self._set_timer(timer, self.timeout)

    def _set_timer(self, timer: int, seconds: float) -> None:
        # A zero timeval would mean no timeout at all: keep at least a microsecond.
        micros = max(1, round(seconds * 1e6))
        self.sock.setsockopt(
            socket.SOL_SOCKET, timer, struct.pack("ll", *divmod(micros, 1_000_000))
        )

    def _until(self, timer: int, deadline: float) -> None:
        """Arm ``timer`` with what is left of a frame's patience; TimeoutError if nothing.

        The kernel restarts its timer with every call, and a call that moved part of a
        frame returns that part only when the timer runs out: a frame cut off mid-way
        would otherwise cost the whole patience once more per call, and its rank would
        name the lost peer after the node's other ranks gave up on it (pipeline._patience).
        """
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self._set_timer(timer, left)

    def _describe(self) -> str:
        return f"rank {self.peer_rank} on node {self.peer_node}"

    def send(self, frame: Frame, payload: memoryview | bytes = b"") -> None:
        with self._sending:
            self._send(frame, payload)

    def _send(
        self, frame: Frame, payload: memoryview | bytes, patience: float | None = None
    ) -> None:
        """Send one frame within ``patience`` (None: the link's), as armed in SO_SNDTIMEO."""
        header = _HEADER.pack(MAGIC, *frame)
        deadline = time.monotonic() + (self.timeout if patience is None else patience)
        try:
            sent = self.sock.sendmsg([header, payload])
            if sent < len(header) + len(payload):
                self._send_rest(memoryview(header)[sent:], memoryview(payload), sent, deadline)
        except (TimeoutError, BlockingIOError):  # BlockingIOError: SO_SNDTIMEO ran out
            raise self._timeout("accept data") from None
        except OSError as exc:
            raise self._lost(exc) from None

    def _send_rest(
        self, header: memoryview, payload: memoryview, sent: int, deadline: float
    ) -> None:
        """Send what the first call left of a frame (``sent`` bytes of header + payload
        went), by ``deadline``: see _until."""
        rest = payload.cast("B")[max(0, sent - _HEADER.size) :]
        try:
            for part in (header, rest):
                while part:
                    self._until(socket.SO_SNDTIMEO, deadline)
                    part = part[self.sock.send(part) :]
        finally:
            self._set_timer(socket.SO_SNDTIMEO, self.timeout)

    def recv_frame(self) -> Frame:
        self.recv_into(memoryview(self._header))
        magic, *fields = _HEADER.unpack(self._header)
        if magic != MAGIC:
            raise HfreduceError(f"hfreduce: garbled frame from {self._describe()}")
        frame = Frame._make(fields)
        if frame.kind == FAILED:
            raise PeerLostError(self.drain(frame.payload).decode(errors="replace"))
        return frame

    def recv_into(self, buf: memoryview) -> None:
        """Fill ``buf`` from the link within its patience (one timeout for the whole buffer,
        however many calls it takes: see _until)."""
        view = buf.cast("B") if buf.format != "B" else buf
        deadline = time.monotonic() + self.timeout
        try:
            got = self._recv_some(view) if view else 0
            if got < len(view):
                try:
                    while got < len(view):
                        self._until(socket.SO_RCVTIMEO, deadline)
                        got += self._recv_some(view[got:])
                finally:
                    self._set_timer(socket.SO_RCVTIMEO, self.timeout)
        except (TimeoutError, BlockingIOError):  # BlockingIOError: SO_RCVTIMEO ran out
            raise self._timeout("send data") from None
        except PeerLostError:
            raise
        except OSError as exc:
            raise self._lost(exc) from None

    def _recv_some(self, view: memoryview) -> int:
        n = self.sock.recv_into(view, 0, socket.MSG_WAITALL)
        if n == 0:
            raise self._lost(None)
        return n

    def drain(self, nbytes: int) -> bytes:
        buf = bytearray(nbytes)
        self.recv_into(memoryview(buf))
        return bytes(buf)

    def _timeout(self, what: str) -> CollectiveTimeoutError:
        return CollectiveTimeoutError(
            f"hfreduce: {self._describe()} did not {what} for {self.timeout:.0f}s "
            "(stuck, or calling a different collective)"
        )

    def _lost(self, exc: OSError | None) -> PeerLostError:
        why = f" ({exc.strerror or exc})" if exc is not None else ""
        return PeerLostError(
            f"hfreduce: connection to {self._describe()} was lost{why}: that rank or one "
            "behind it failed or exited"
        )

    def fail(self, reason: str, sender: int) -> None:
        """Tell the partner why we are failing (when no frame is half-sent), then close.

        Closing a socket with unread input makes the kernel reset the connection, and a
        reset throws away what the partner has not read yet, our notice included. So we
        half-close first and read until the partner closes too (or a second passes).
        """
        if self._sending.acquire(timeout=0.5):
            try:
                self._set_timer(socket.SO_SNDTIMEO, _NOTICE_SEND_S)
                data = reason.encode()
                frame = Frame(FAILED, 0, 0, -1, -1, 0, len(data), sender)
                self._send(frame, data, _NOTICE_SEND_S)
            except (HfreduceError, OSError):
                pass  # the partner (or this socket) is gone already; closing is all that is left
            finally:
                self._sending.release()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 1.0
            self.sock.settimeout(0.1)
            while time.monotonic() < deadline:
                with contextlib.suppress(TimeoutError):
                    if not self.sock.recv(1 << 16):
                        break
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def fail_links(links: list[Link], reason: str, sender: int) -> None:
    """Link.fail on every link in parallel, returning within FAILURE_NOTICE_S.

    One after another, each partner on a host cut off would cost its own send and drain
    waits. Daemon threads: one still draining must not keep the process from exiting.
    """
    threads = [
        threading.Thread(
            target=link.fail, args=(reason, sender), name="hfreduce-notice", daemon=True
        )
        for link in links
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + FAILURE_NOTICE_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


@dataclass
class TreeConnections:
    """Our links in one tree: to the parent (None at the root) and to each child."""

    parent: Link | None
    children: list[Link]


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)


def connect_trees(
    store: Store,
    topology: Topology,
    trees: tuple[TreeLinks, TreeLinks],
    host: str,
    timeout: float,
) -> list[TreeConnections]:
    """Open a link to our partner rank on each tree neighbour node.

    We listen on ``host`` (see hfreduce.addresses), publish it, connect to our parents (a
    listening socket completes connections before accepting them, so nobody waits on
    anybody), then accept one connection from each child; the hello message says which
    tree and rank it is for.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.create_server((host, 0), family=family, backlog=16)
    except OSError as exc:
        raise HfreduceError(
            f"hfreduce: cannot listen on {host} for links to other nodes ({exc.strerror}); "
            "is it an address of this host?"
        ) from None
    listener.settimeout(timeout)
    try:
        port = listener.getsockname()[1]
        store.set(f"hfreduce/addr/{topology.rank}", format_endpoint(host, port))
        parents: list[Link | None] = []
        for tree, links in enumerate(trees):
            if links.parent is None:
                parents.append(None)
                continue
            peer = topology.peer(links.parent)
            key = f"hfreduce/addr/{peer}"
            store.wait([key], timedelta(seconds=timeout))
            sock = socket.create_connection(parse_endpoint(store.get(key).decode()), timeout)
            _tune(sock)
            sock.sendall(_HELLO.pack(MAGIC, tree, topology.rank))
            parents.append(Link(sock, peer, topology.node_ids[links.parent], timeout))
        expected = {
            (tree, topology.peer(child)): child
            for tree, links in enumerate(trees)
            for child in links.children
        }
        accepted: dict[tuple[int, int], Link] = {}
        while len(accepted) < len(expected):
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                missing = sorted(rank for _, rank in set(expected) - set(accepted))
                raise CollectiveTimeoutError(
                    f"hfreduce: ranks {missing} did not connect within {timeout:.0f}s"
                ) from None
            _tune(sock)
            sock.settimeout(timeout)
            hello = bytearray(_HELLO.size)
            view = memoryview(hello)
            got = 0
            while got < len(hello):
                n = sock.recv_into(view[got:])
                if n == 0:
                    raise PeerLostError("hfreduce: a partner closed its connection during set-up")
                got += n
            magic, tree, rank = _HELLO.unpack(hello)
            if magic != MAGIC or (tree, rank) not in expected:
                sock.close()
                continue
            node = expected[(tree, rank)]
            accepted[(tree, rank)] = Link(sock, rank, topology.node_ids[node], timeout)
    finally:
        listener.close()
    return [
        TreeConnections(
            parents[tree],
            [accepted[(tree, topology.peer(child))] for child in links.children],
        )
        for tree, links in enumerate(trees)
    ]
