"""Client side of the data path: chunk reads and writes with retry and replica failover.

Writes go to the chain head and return once the tail has the chunk. Reads try the chain's
serving replicas in an order that spreads chunks over them; a replica whose checksum fails
is reported (logged and kept in ``bad_replicas``) and the next one is read. Retryable
failures refresh the chain table and back off, bounded by ``timeouts.retry_s``.

Every request carries the file's capability (:mod:`fs3.capabilities`), which meta gave
with the file's Open, Create or Truncate (:class:`Grants`); one about to expire, or refused,
is renewed by opening the file again.

A replica on this machine is read through a file descriptor its target passes
(:mod:`fs3.client.local_read`), not through TCP; the order of replicas, the errors and the
failover are the same either way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from fs3 import capabilities
from fs3.client.local_read import LocalReads
from fs3.config import Timeouts
from fs3.errors import (
    CapabilityRefused,
    ChecksumMismatch,
    DataLost,
    Fs3Error,
    Fs3TimeoutError,
    StaleRouting,
    Unavailable,
    error_message,
)
from fs3.mgmtd.client import MgmtdClient
from fs3.retry import Backoff, retry
from fs3.types import Layout, RoutingTable
from fs3.wire.checksum import crc32c
from fs3.wire.client import ConnectionPool
from fs3.wire.framing import Request
from fs3.wire.ops import READ, REMOVE, WRITE

log = logging.getLogger("fs3.client")
T = TypeVar("T")

RETRY_BACKOFF = Backoff(first_s=0.02, max_s=0.5)
"""Pauses between a chunk operation's retries: a failed-over chain or a restarted server is
back within tens of milliseconds to a few heartbeats, so the first retry comes within 20 ms
and none waits over half a second."""


@dataclass(frozen=True)
class _Grant:
    token: bytes
    ops: int
    renew_at: float
    renew: Callable[[], object]


class Grants:
    """The capabilities meta gave this client, by inode: :meth:`get` hands out one that
    allows an op, renewed (``renew``, which reopens the file and so :meth:`put`s a fresh
    one) once half its life is gone. A read grant does not push out a write grant of the
    same file (a mount serves readers and writers of one file at once)."""

    MAX_INODES = 65536
    """Inodes remembered; the least recently granted are forgotten (reopened when used)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._grants: OrderedDict[int, list[_Grant]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, inode: int, token: bytes, renew: Callable[[], object]) -> None:
        """Keeps ``token`` (a capability for ``inode``); ``renew()`` gets a fresh one."""
        cap = capabilities.parse(token)
        now = self._clock()
        grant = _Grant(token, cap.ops, now + (cap.expires - now) / 2, renew)
        with self._lock:
            kept = [g for g in self._grants.pop(inode, []) if g.ops & ~cap.ops]
            self._grants[inode] = [*kept, grant]
            while len(self._grants) > self.MAX_INODES:
                self._grants.popitem(last=False)

    def _find(self, inode: int, op: int) -> _Grant | None:
        with self._lock:
            return next((g for g in self._grants.get(inode, ()) if g.ops & op), None)

    def get(self, inode: int, op: int) -> bytes:
        """A capability for ``op`` on ``inode``, renewed first when due; ``b""`` when meta
        gave none (a cluster with capabilities off)."""
        grant = self._find(inode, op)
        if grant is None:
            return b""
        if self._clock() >= grant.renew_at:
            try:
                grant.renew()
            except Fs3Error as err:  # the file went away, or lost our permission
                log.info("inode %d: capability not renewed: %s", inode, err)
                return grant.token  # still valid for a while; the target decides
            grant = self._find(inode, op) or grant
        return grant.token

    def renew(self, inode: int, op: int) -> bool:
        """Replaces the grant for ``op`` on ``inode`` after a target refused it; False when
        there is none to renew. Raises what reopening raises (PermissionError, ...)."""
        grant = self._find(inode, op)
        if grant is None:
            return False
        grant.renew()
        return self._find(inode, op) is not grant


class ChunkIO:
    def __init__(
        self,
        mgmtd: MgmtdClient,
        pool: ConnectionPool,
        timeouts: Timeouts,
        local_reads: bool = True,
        host: str = "",
    ) -> None:
        self.mgmtd = mgmtd
        self.pool = pool
        self.timeouts = timeouts
        self.local: LocalReads | None = LocalReads(pool, timeouts, host) if local_reads else None
        """Reads of replicas on this machine (its ``stats`` count them); None: all over TCP."""
        self.bad_replicas: list[tuple[int, int, int, int]] = []  # target, chain, inode, index
        self.grants = Grants()
        """Capabilities, filled by :class:`fs3.client.meta.MetaClient` as files open."""
        self._lock = threading.Lock()

    sleep: Callable[[float], None] = staticmethod(time.sleep)
    """How :meth:`retry` pauses; tests put a recorder here."""

    def retry(self, what: str, attempt: Callable[[RoutingTable], T]) -> T:
        """Runs ``attempt(table)`` until it succeeds or raises a permanent error, pausing
        :data:`RETRY_BACKOFF` and refreshing the chain table before each retry.

        Raises:
            Fs3TimeoutError: retryable errors kept coming for ``timeouts.retry_s``; names
                ``what`` and the last error.
            Fs3Error: the first error that is not retryable.
        """
        table = self.mgmtd.cached()

        def refreshed(try_: int) -> T:
            nonlocal table
            if table is None:
                # The first fetch is retried as any try: a client that starts while a
                # standby mgmtd takes over finds no primary for a moment.
                table = self.mgmtd.refresh()
            elif try_ > 1:
                try:
                    table = self.mgmtd.refresh()
                except Unavailable as mgmtd_err:
                    log.info("%s: mgmtd unreachable, keeping cached table: %s", what, mgmtd_err)
            return attempt(table)

        return retry(
            refreshed,
            budget_s=self.timeouts.retry_s,
            backoff=RETRY_BACKOFF,
            retryable=lambda err: isinstance(err, Fs3Error) and err.retryable,
            give_up=lambda err: Fs3TimeoutError(
                f"{what}: no success within timeouts.retry_s={self.timeouts.retry_s:g}s; "
                f"last error: {err}"
            ),
            sleep=self.sleep,
        )

    def _granted(
        self, what: str, inode: int, op: int, attempt: Callable[[RoutingTable, bytes], T]
    ) -> T:
        """:meth:`retry` of ``attempt(table, capability)``; a refused capability is renewed
        (the file reopened) and the whole operation retried once.

        Raises:
            CapabilityRefused (a PermissionError): refused again, or nothing to renew.
        """
        try:
            return self.retry(what, lambda table: attempt(table, self.grants.get(inode, op)))
        except CapabilityRefused:
            if not self.grants.renew(inode, op):
                raise
            return self.retry(what, lambda table: attempt(table, self.grants.get(inode, op)))

    @staticmethod
    def _address(table: RoutingTable, target_id: int) -> str:
        return table.targets[target_id].data_address

    def write(
        self,
        layout: Layout,
        inode: int,
        index: int,
        offset: int,
        data: bytes | memoryview,
        truncate: bool,
    ) -> None:
        """Writes ``data`` at ``offset`` within chunk ``index``; returns once every replica
        of its chain has it. With ``truncate`` the chunk ends after ``data``."""
        chain_id = layout.chain_of(index)
        crc = crc32c(data)

        def attempt(table: RoutingTable, capability: bytes) -> None:
            writers = table.chains[chain_id].writers()
            if not writers:
                raise Unavailable(f"chain {chain_id} has no live member")
            req = Request(
                WRITE,
                chain_id,
                table.version,
                inode,
                index,
                offset,
                crc=crc,
                truncate=truncate,
                capability=capability,
            )
            self.pool.request(self._address(table, writers[0]), req, data)

        what = f"writing chunk {index} of inode {inode} on chain {chain_id}"
        self._granted(what, inode, capabilities.WRITE, attempt)

    def remove(self, layout: Layout, inode: int, from_index: int) -> None:
        """Deletes chunks ``from_index`` onwards of ``inode`` from every live replica now.

        Meta's truncate queues the same deletion for its collector, which runs later and
        would also delete chunks written after the truncate; a client that shrinks a file
        and writes on at once (``open(O_TRUNC)``) removes them itself and sets the length.
        """

        def attempt(table: RoutingTable, capability: bytes) -> None:
            for chain_id in sorted(set(layout.chains)):
                for target in table.chains[chain_id].writers():
                    req = Request(
                        REMOVE, chain_id, table.version, inode, from_index, capability=capability
                    )
                    self.pool.request(self._address(table, target), req)

        what = f"removing chunks {from_index}.. of inode {inode}"
        self._granted(what, inode, capabilities.WRITE, attempt)

    def cut(self, layout: Layout, inode: int, length: int) -> None:
        """Makes every byte of ``inode`` past ``length`` read as zeros on its replicas:
        chunks wholly past it are removed, the one holding it keeps its head only."""
        if not layout.chains:
            return
        cs = layout.chunk_size
        self.remove(layout, inode, -(-length // cs))
        if length % cs:
            self.write(layout, inode, length // cs, length % cs, b"", True)

    def read(
        self,
        layout: Layout,
        inode: int,
        index: int,
        offset: int,
        length: int,
        mapped: bool = False,
        path: str | None = None,
    ) -> memoryview:
        """Reads up to ``length`` bytes at ``offset`` in chunk ``index`` (short for holes:
        chunks no replica ever held). With ``mapped``, a chunk on this machine may come as a
        locked mapping of its file rather than a copy (:mod:`fs3.client.mapped`): for callers
        that only pass it on. ``path`` (the file's) goes into the errors.

        Raises:
            DataLost: (``OSError`` EIO, with ``path``) no replica can serve the chunk:
                each fails its checksums or lost its copy.
            Fs3TimeoutError: no replica answered within ``timeouts.retry_s``.
        """
        chain_id = layout.chain_of(index)
        what = f"chunk {index} of {path or 'inode'} (inode {inode}, chain {chain_id})"

        def attempt(table: RoutingTable, capability: bytes) -> memoryview:
            readers = read_order(table, chain_id, inode, index)
            if not readers:
                raise Unavailable(f"chain {chain_id} has no serving member")
            errors: list[Fs3Error] = []
            for target in readers:
                req = Request(
                    READ,
                    chain_id,
                    table.version,
                    inode,
                    index,
                    offset,
                    length,
                    capability=capability,
                )
                try:
                    local = self.local
                    got = local.read(table, target, req, mapped) if local is not None else None
                    if got is not None:
                        return memoryview(got)  # read from the page cache into it: no copy
                    _, crc, data = self.pool.request(self._address(table, target), req)
                    if crc32c(data) != crc:
                        raise ChecksumMismatch(f"target {target}: chunk corrupted in transit")
                    return data  # the receive buffer itself: no copy
                except ChecksumMismatch as err:
                    log.warning(
                        "bad replica: target %d, chain %d, inode %d chunk %d: %s",
                        target,
                        chain_id,
                        inode,
                        index,
                        err,
                    )
                    with self._lock:
                        self.bad_replicas.append((target, chain_id, inode, index))
                    errors.append(err)
                except Fs3Error as err:
                    if not err.retryable:
                        raise
                    errors.append(err)
            if all(isinstance(e, ChecksumMismatch) for e in errors):
                detail = "; ".join(error_message(e) for e in errors)
                raise DataLost(f"{what}: no replica can be read: {detail}", path)
            raise next((e for e in errors if isinstance(e, StaleRouting)), errors[-1])

        return self._granted(f"reading {what}", inode, capabilities.READ, attempt)


def read_order(table: RoutingTable, chain_id: int, inode: int, index: int) -> list[int]:
    """The serving replicas of a chunk in the order a read tries them.

    Each chunk prefers one replica (chunks of a file still spread over all of them), so a
    re-read finds that replica's page cache warm instead of reading the copy a random pick
    chose, which is cold two times in three at 3 replicas.
    """
    readers = list(table.chains[chain_id].readers())
    if not readers:
        return readers
    start = hash((inode, index)) % len(readers)
    return readers[start:] + readers[:start]
