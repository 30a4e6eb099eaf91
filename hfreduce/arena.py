"""The host staging area a node's ranks share: chunk slots and progress flags in POSIX
shared memory.

Layout: one block of progress words per local rank (each word on its own cache line, so
a rank publishing progress does not slow readers of its neighbours' words), a node block
for the first failure (who posted it, and by when one being diagnosed is due), then
``depth`` input slots per local rank and ``depth`` output slots holding the reduced
chunks.

Every progress word has a single writer, its own rank, and only grows: it counts chunks
(across all calls) that passed that stage. Waiters sleep on a word with a futex, so
waiting gives the core away.

The segment is unlinked from /dev/shm as soon as every local rank has mapped it: from
then on nothing is left behind, however the ranks exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import secrets
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import psutil
import torch
from torch.distributed import Store

from hfreduce import futex
from hfreduce.errors import CollectiveTimeoutError, HfreduceError, PeerLostError
from hfreduce.topology import Topology

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "hfreduce-"

# Progress words of each rank (indices into its block).
STAGED = 0  # its chunk is in its input slot
REDUCED = 1  # it has summed its slice of the chunk into the output slot
DONE0 = 2  # its slice's first half came back from the inter-node tree 0
DONE1 = 3  # ... and the second half from tree 1
CONSUMED = 4  # it has copied the finished chunk out of the output slot
PID = 5
HDR_CALL = 6  # header of the call it is in: checked against every other rank's
HDR_NUMEL = 7
HDR_DTYPE = 8
HDR_OP = 9
SLEEPING = 10  # 1 + the (rank, word) it sleeps on, so a writer wakes only when needed
_WORDS_PER_RANK = 11

_LINE = 64  # bytes: one cache line per progress word
_WORD_STRIDE = _LINE // 8
_ERROR_MESSAGE_BYTES = 1024
_PAGE = 4096
# How often a waiter wakes up to check the failure word, its deadline and whether the
# rank it waits for is still alive.
_POLL_S = 0.05
# When every local rank has a core, a peer is usually microseconds from its next step:
# spinning that long is cheaper than a futex sleep and wake-up (~30-60 us here). With
# more ranks than cores a spinning waiter would steal the core its peer needs, and with
# tree threads in the process (several nodes) it would hold the GIL they need.
_SPIN_S = 50e-6


class Arena:
    """One node's mapped staging segment, seen from one local rank."""

    def __init__(self, mm: mmap.mmap, topology: Topology, depth: int, chunk_bytes: int) -> None:
        self.topology = topology
        self.depth = depth
        self.chunk_bytes = chunk_bytes
        self.local_size = topology.local_size
        self.me = topology.local_rank
        self._mm = mm
        nwords = control_bytes(self.local_size) // 8
        self._words = (ctypes.c_int64 * nwords).from_buffer(mm)
        self._base = ctypes.addressof(self._words)
        self._error_word = self.local_size * _WORDS_PER_RANK * _WORD_STRIDE
        self._failure_due_word = self._error_word + 1  # CLOCK_MONOTONIC ns, host-wide
        self._message_offset = (self._error_word + _WORD_STRIDE) * 8
        self.raw = torch.frombuffer(mm, dtype=torch.uint8)
        self._data_offset = control_bytes(self.local_size)
        self._pids: dict[int, psutil.Process | None] = {}
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        alone = topology.num_nodes == 1 and self.local_size <= cores
        self.spin_s = _SPIN_S if alone else 0.0
        """How long a wait spins before it sleeps; 0 where spinning would take a core that
        a peer (or, during an asynchronous call, the caller's own work) needs."""
        self._sleeping = [self._index(r, SLEEPING) for r in range(self.local_size)]
        self.set(PID, os.getpid())

    # -- progress words ---------------------------------------------------------------

    def _index(self, rank: int, word: int) -> int:
        return (rank * _WORDS_PER_RANK + word) * _WORD_STRIDE

    def get(self, rank: int, word: int) -> int:
        return self._words[self._index(rank, word)]

    def set(self, word: int, value: int) -> None:
        """Publish our own progress word and wake whoever sleeps on it."""
        index = self._index(self.me, word)
        words = self._words
        words[index] = value
        code = self.me * _WORDS_PER_RANK + word + 1
        for sleeping in self._sleeping:
            if words[sleeping] == code:
                futex.wake(self._base + index * 8)
                return

    def wait_all(
        self,
        word: int,
        target: int,
        timeout_s: float,
        what: str,
        while_waiting: Callable[[], None] | None = None,
    ) -> None:
        """Block until every local rank's ``word`` reaches ``target``.

        Raises PeerLostError when a rank exits or a failure is posted on the node, and
        CollectiveTimeoutError naming the slowest rank when ``timeout_s`` passes.
        """
        if target <= 0:
            return
        words = self._words
        for rank in range(self.local_size):
            index = self._index(rank, word)
            if words[index] >= target:
                continue
            spin_until = time.perf_counter() + self.spin_s
            while words[index] < target and time.perf_counter() < spin_until:
                pass
            start = time.monotonic()
            deadline = start + timeout_s
            while (value := words[index]) < target:
                self.check_failure()
                if while_waiting is not None:
                    while_waiting()
                now = time.monotonic()
                if now >= deadline:
                    # A local rank diagnosing a failure (a lost link) names the rank at
                    # fault, which may be the reason ``rank`` is late: wait for its post.
                    deadline = max(deadline, self._failure_due())
                    if now >= deadline:
                        self._raise_timeout(rank, what, timeout_s)
                if now - start > _POLL_S:
                    self._check_alive(rank, what)
                # Announce the sleep, then look once more: a writer that stored before
                # seeing our announcement has changed the word, and the futex returns.
                words[self._sleeping[self.me]] = rank * _WORDS_PER_RANK + word + 1
                if words[index] == value:
                    futex.wait(self._base + index * 8, value, min(_POLL_S, deadline - now))
                words[self._sleeping[self.me]] = 0

    def _raise_timeout(self, rank: int, what: str, timeout_s: float) -> None:
        global_rank = self.topology.local_ranks[rank]
        err = CollectiveTimeoutError(
            f"hfreduce: rank {global_rank} made no progress for {timeout_s:.0f}s while "
            f"others waited for it to {what}; it may be stuck or calling a different "
            "collective (raise HFREDUCE_TIMEOUT if it is just slow)"
        )
        self.post_failure(str(err))
        raise err

    def _check_alive(self, rank: int, what: str) -> None:
        pid = self.get(rank, PID)
        if pid <= 0:
            return
        proc = self._pids.get(pid)
        try:
            if proc is None:
                proc = self._pids[pid] = psutil.Process(pid)
            alive = proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        if not alive:
            global_rank = self.topology.local_ranks[rank]
            msg = (
                f"hfreduce: rank {global_rank} (pid {pid}, node "
                f"{self.topology.node_ids[self.topology.node_index]}) exited while others "
                f"waited for it to {what}"
            )
            self.post_failure(msg)
            raise PeerLostError(msg)

    # -- node-wide failure ------------------------------------------------------------

    def post_failure(self, message: str) -> None:
        """Record the node's first failure and wake every waiter so all local ranks see it."""
        if self._words[self._error_word] == 0:
            data = message.encode()[: _ERROR_MESSAGE_BYTES - 1]
            self.raw[self._message_offset : self._message_offset + len(data)] = torch.frombuffer(
                bytearray(data), dtype=torch.uint8
            )
            self.raw[self._message_offset + len(data)] = 0
            self._words[self._error_word] = self.topology.rank + 1
        for rank in range(self.local_size):
            for word in range(_WORDS_PER_RANK):
                futex.wake(self._base + self._index(rank, word) * 8)

    def announce_failure(self, within_s: float) -> None:
        """Say that this rank is failing and will post why within ``within_s``.

        Until then, local ranks whose wait on one of us runs out wait for that post rather
        than blame the rank they waited on: it may only be late because a link of its own
        was lost, which the post names. A later announcement may move the time on.
        """
        due = time.monotonic_ns() + int(within_s * 1e9)
        self._words[self._failure_due_word] = max(self._words[self._failure_due_word], due)

    def _failure_due(self) -> float:
        """When an announced failure is due on the node (monotonic seconds; 0: none)."""
        return self._words[self._failure_due_word] / 1e9

    def failure(self) -> str | None:
        """The message of the failure posted on this node, if any."""
        if self._words[self._error_word] == 0:
            return None
        raw = bytes(self._mm[self._message_offset : self._message_offset + _ERROR_MESSAGE_BYTES])
        return raw.split(b"\0", 1)[0].decode(errors="replace")

    def check_failure(self) -> None:
        if self._words[self._error_word] != 0:
            raise PeerLostError(self.failure() or "hfreduce: a local rank failed")

    # -- data slots -------------------------------------------------------------------

    def input_slot(self, rank: int, slot: int) -> torch.Tensor:
        start = self._data_offset + (rank * self.depth + slot) * self.chunk_bytes
        return self.raw[start : start + self.chunk_bytes]

    def output_slot(self, slot: int) -> torch.Tensor:
        start = self._data_offset + (self.local_size * self.depth + slot) * self.chunk_bytes
        return self.raw[start : start + self.chunk_bytes]

    def pin_for_cuda(self) -> None:
        """Page-lock the data slots so device copies run asynchronously on the copy engines."""
        import torch.cuda

        size = self.raw.numel() - self._data_offset
        rc = torch.cuda.cudart().cudaHostRegister(self.raw.data_ptr() + self._data_offset, size, 0)
        if int(rc) != 0:
            raise HfreduceError(f"hfreduce: cudaHostRegister of the staging area failed ({rc})")


def control_bytes(local_size: int) -> int:
    words = (local_size * _WORDS_PER_RANK + 1) * _WORD_STRIDE
    raw = words * 8 + _ERROR_MESSAGE_BYTES
    return (raw + _PAGE - 1) // _PAGE * _PAGE


def arena_bytes(local_size: int, depth: int, chunk_bytes: int) -> int:
    return control_bytes(local_size) + (local_size + 1) * depth * chunk_bytes


def open_arena(
    store: Store, topology: Topology, depth: int, chunk_bytes: int, timeout: float
) -> Arena:
    """Create (local rank 0) or attach to (the others) this node's staging segment."""
    size = arena_bytes(topology.local_size, depth, chunk_bytes)
    key = f"hfreduce/shm/{topology.node_index}"
    followers = [f"{key}/attached/{r}" for r in range(1, topology.local_size)]
    if topology.local_rank == 0:
        sweep_stale_segments()
        path = SHM_DIR / f"{SHM_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        try:
            mm = _map(path, size, create=True)
            store.set(key, path.name)
            if followers:
                store.wait(followers, timedelta(seconds=timeout))
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    else:
        store.wait([key], timedelta(seconds=timeout))
        mm = _map(SHM_DIR / store.get(key).decode(), size, create=False)
        store.set(f"{key}/attached/{topology.local_rank}", "1")
    return Arena(mm, topology, depth, chunk_bytes)


def _map(path: Path, size: int, create: bool) -> mmap.mmap:
    flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        raise HfreduceError(f"hfreduce: cannot open shared memory {path}: {exc}") from exc
    try:
        if create:
            try:
                # Reserve the pages now: a full /dev/shm then fails here with ENOSPC
                # instead of killing a rank with SIGBUS in the middle of a call.
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                raise HfreduceError(
                    f"hfreduce: cannot reserve {size >> 20} MiB in {SHM_DIR} ({exc}); enlarge "
                    "/dev/shm or lower HFREDUCE_CHUNK_BYTES / HFREDUCE_PIPELINE_DEPTH"
                ) from exc
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def sweep_stale_segments(shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink segments left by an hfreduce process killed during set-up (its pid is gone)."""
    removed = []
    for path in shm_dir.glob(f"{SHM_PREFIX}*"):
        pid = path.name[len(SHM_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path.name)
    return removed
