"""Who a rank blames when a peer goes quiet: the rank whose link lost a host must name it
before its node's other ranks give up on that rank (tests/hfreduce/test_hosts.py cuts a
host off; these check the two mechanisms behind it in one process, on loopback).

- A link's patience holds for a whole frame: a frame cut off half-way must not cost it
  once per system call (the kernel's timer restarts with each).
- A local rank that announced it is failing holds its node's waits on it until it posts
  why, so they raise its message (naming the lost peer) instead of blaming it.
"""

from __future__ import annotations

import contextlib
import mmap
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from hfreduce.arena import STAGED, Arena, arena_bytes
from hfreduce.errors import CollectiveTimeoutError, PeerLostError
from hfreduce.topology import Topology
from hfreduce.transport import DATA, Frame, Link

TIMEOUT_S = 0.5  # a Link waits twice this (transport.LINK_PATIENCE)
LATE_S = 1.5  # the rest of a frame moves after one patience, before two
LOST = "hfreduce: rank 3 on node far did not send data for 1s (stuck, or calling ...)"


@pytest.fixture
def connection() -> Iterator[tuple[socket.socket, Link]]:
    """The far end of a loopback TCP connection, and a Link on the near end."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        far = socket.create_connection(listener.getsockname())
        near, _ = listener.accept()
    link = Link(near, peer_rank=3, peer_node="far", timeout=TIMEOUT_S)
    try:
        yield far, link
    finally:
        link.close()
        far.close()


def _later(seconds: float, action: Callable[..., object], *args: object) -> threading.Timer:
    timer = threading.Timer(seconds, action, args)
    timer.start()
    return timer


def test_a_frame_half_received_times_out_within_one_patience(
    connection: tuple[socket.socket, Link],
) -> None:
    far, link = connection
    buf = bytearray(64 << 10)
    far.sendall(bytes(len(buf) // 2))
    late = _later(LATE_S, far.sendall, bytes(len(buf) // 2))
    try:
        with pytest.raises(CollectiveTimeoutError, match="rank 3 on node far did not send"):
            link.recv_into(memoryview(buf))
    finally:
        late.join()


def _read_until_quiet(sock: socket.socket) -> None:
    sock.settimeout(2 * TIMEOUT_S)
    with contextlib.suppress(TimeoutError):
        while sock.recv(1 << 20):
            pass


def test_a_frame_half_sent_times_out_within_one_patience(
    connection: tuple[socket.socket, Link],
) -> None:
    far, link = connection
    payload = bytes(32 << 20)  # more than both ends' socket buffers take
    late = _later(LATE_S, _read_until_quiet, far)
    try:
        with pytest.raises(CollectiveTimeoutError, match="rank 3 on node far did not accept"):
            link.send(Frame(DATA, 0, 0, 0, 0, len(payload), len(payload), 0), payload)
    finally:
        late.join()


@pytest.fixture
def node() -> tuple[Arena, Arena]:
    """Two local ranks' views of one node's staging area."""
    ranks = ((0, 1),)
    depth, chunk = 2, 4096
    mm = mmap.mmap(-1, arena_bytes(len(ranks[0]), depth, chunk))
    return tuple(  # type: ignore[return-value]
        Arena(mm, Topology(rank, 2, ("here",), ranks), depth, chunk) for rank in ranks[0]
    )


def test_a_wait_on_a_rank_that_announced_its_failure_raises_what_it_posts(
    node: tuple[Arena, Arena],
) -> None:
    waiter, failing = node
    waiter.set(STAGED, 1)
    failing.announce_failure(60)  # bounds the wait if the post never came
    posted = _later(5 * TIMEOUT_S, failing.post_failure, LOST)
    try:
        with pytest.raises(PeerLostError, match="node far"):
            waiter.wait_all(STAGED, 1, TIMEOUT_S, "stage its chunk")
    finally:
        posted.join()


def test_a_rank_that_announced_a_failure_and_posts_nothing_is_still_blamed(
    node: tuple[Arena, Arena],
) -> None:
    waiter, failing = node
    waiter.set(STAGED, 1)
    failing.announce_failure(TIMEOUT_S)
    with pytest.raises(CollectiveTimeoutError, match="rank 1 made no progress"):
        waiter.wait_all(STAGED, 1, TIMEOUT_S, "stage its chunk")
