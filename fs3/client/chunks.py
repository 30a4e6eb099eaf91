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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

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
from fs3.wire import batch
from fs3.wire.checksum import crc32c
from fs3.wire.client import ConnectionPool
from fs3.wire.framing import Request
from fs3.wire.ops import READ, READ_BATCH, REMOVE, WRITE

log = logging.getLogger("fs3.client")
T = TypeVar("T")

RETRY_BACKOFF = Backoff(first_s=0.02, max_s=0.5)
"""Pauses between a chunk operation's retries: a failed-over chain or a restarted server is
back within tens of milliseconds to a few heartbeats, so the first retry comes within 20 ms
and none waits over half a second."""


BATCHED_PIECE_MAX = 1 << 20
"""Largest piece :meth:`ChunkIO.read_many` batches; bigger ones gain nothing from sharing a
round trip, and a single read keeps the zero-copy local path (:mod:`fs3.client.local_read`)."""
BATCH_PIECES = 64
"""Pieces per batch: one target's pieces beyond this go in further batches, sent at once
(the target answers each connection on its own thread)."""


class ChunkPiece(NamedTuple):
    """One read of :meth:`ChunkIO.read_many`: ``length`` bytes at ``offset`` in chunk
    ``index`` of ``inode`` (whose layout is ``layout``); ``path`` goes into its errors.
    A tuple: a data loader's call makes one per sample, and a dataclass cost 1 us more."""

    layout: Layout
    inode: int
    index: int
    offset: int
    length: int
    path: str | None = None


PieceResult = memoryview | Fs3Error
"""A piece's bytes (short for a hole), or the error its read raised."""


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
                    self._bad_replica(target, chain_id, inode, index, err)
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

    def _bad_replica(
        self, target: int, chain_id: int, inode: int, index: int, err: ChecksumMismatch
    ) -> None:
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

    # -- many small reads at once --------------------------------------------------------
    def read_many(self, pieces: Sequence[ChunkPiece], executor: Executor) -> list[PieceResult]:
        """Reads every piece, the small ones in batches (:mod:`fs3.wire.batch`): one round
        trip per target carries the pieces bound for it, every batch sent from this thread
        before any reply is read (:meth:`fs3.wire.client.ConnectionPool.exchange`), while
        the big pieces, each alone, run on ``executor``. Returns per piece, in order, its
        bytes (short for holes, as :meth:`read`) or the error its read raised.
        """
        table = self.mgmtd.table()
        results: dict[int, PieceResult] = {}
        singles: list[tuple[int, Future[PieceResult]]] = []
        batched: list[tuple[int, list[int]]] = []
        for target, members in self.plan(pieces, table):
            if target is None:
                singles.append((members[0], executor.submit(self._read_piece, pieces[members[0]])))
            else:
                batched.append((target, members))
        parts = [(target, [pieces[i] for i in members]) for target, members in batched]
        for (_, members), (_, part), answers in zip(
            batched, parts, self._read_batches(table, parts), strict=True
        ):
            results.update(zip(members, self._settle(table, part, answers, 0), strict=True))
        results.update((i, future.result()) for i, future in singles)
        return [results[i] for i in range(len(pieces))]

    def plan(
        self, pieces: Sequence[ChunkPiece], table: RoutingTable, replica: int = 0
    ) -> list[tuple[int | None, list[int]]]:
        """``pieces`` (by their index) grouped into batches per target: the ``replica``-th
        in each piece's :func:`read_order`, where a single read would go first; each batch
        within :data:`BATCH_PIECES` and the target's bounds (:mod:`fs3.wire.batch`). A
        piece over :data:`BATCHED_PIECE_MAX`, or with no replica left, is a job of its own
        with target None: a single :meth:`read`."""
        by_target: dict[int, list[int]] = {}
        jobs: list[tuple[int | None, list[int]]] = []
        readers: dict[int, tuple[int, ...]] = {}  # per chain: looked up once per plan
        for i, p in enumerate(pieces):
            chain_id = p.layout.chain_of(p.index)
            serving = readers.get(chain_id)
            if serving is None:
                serving = readers[chain_id] = table.chains[chain_id].readers()
            if p.length > BATCHED_PIECE_MAX or replica >= len(serving):
                jobs.append((None, [i]))
            else:
                # read_order(...)[replica], without building the order
                target = serving[(_preferred(p.inode, p.index, serving) + replica) % len(serving)]
                by_target.setdefault(target, []).append(i)
        for target, members in by_target.items():
            jobs += [(target, part) for part in _limited(members, pieces)]
        return jobs

    def read_planned(
        self, table: RoutingTable, target: int | None, pieces: list[ChunkPiece], replica: int = 0
    ) -> list[PieceResult]:
        """Reads one job of :meth:`plan`: per piece its bytes or its error (see
        :meth:`_settle` for what a batch's failed pieces get)."""
        if target is None:
            return [self._read_piece(p) for p in pieces]
        answers = self._read_batches(table, [(target, pieces)])[0]
        return self._settle(table, pieces, answers, replica)

    def _settle(
        self,
        table: RoutingTable,
        pieces: list[ChunkPiece],
        answers: list[PieceResult],
        replica: int,
    ) -> list[PieceResult]:
        """``answers`` of a batch of ``pieces`` to their ``replica``-th target, each failed
        piece read again as :meth:`read` would: the semantics of :meth:`read` hold: a
        piece its batch could not read (the target down, a chunk busy, stale routing, a bad
        replica) goes in a batch to the next replica of its chain; one left after every
        replica, or whose capability was refused, gets a single :meth:`read` (its retries,
        renewal and DataLost)."""
        again = [i for i, a in enumerate(answers) if isinstance(a, Fs3Error) and a.retryable]
        for i, a in enumerate(answers):
            if isinstance(a, CapabilityRefused):  # renewed (the file reopened) by a read
                answers[i] = self._read_piece(pieces[i])
        if again:
            retried = [pieces[i] for i in again]
            got: dict[int, PieceResult] = {}
            for next_target, members in self.plan(retried, table, replica + 1):
                part = [retried[k] for k in members]
                answered = self.read_planned(table, next_target, part, replica + 1)
                got.update(zip(members, answered, strict=True))
            for k, i in enumerate(again):
                answers[i] = got[k]
        return answers

    def _read_piece(self, piece: ChunkPiece) -> PieceResult:
        try:
            return self.read(
                piece.layout, piece.inode, piece.index, piece.offset, piece.length, path=piece.path
            )
        except Fs3Error as err:
            return err

    def _read_batches(
        self, table: RoutingTable, batches: list[tuple[int, list[ChunkPiece]]]
    ) -> list[list[PieceResult]]:
        """One READ_BATCH per ``(target, pieces)``, all sent before any is answered: per
        batch, per piece its bytes or its error (the batch's own error for each when its
        target could not be asked)."""
        req = Request(READ_BATCH, table_version=table.version)
        tokens: dict[int, bytes] = {}  # per inode: one grant lookup per call
        calls = []
        for target, pieces in batches:
            wire = []
            for p in pieces:
                token = tokens.get(p.inode)
                if token is None:
                    token = tokens[p.inode] = self.grants.get(p.inode, capabilities.READ)
                chain = p.layout.chain_of(p.index)
                wire.append(batch.BatchPiece(chain, p.inode, p.index, p.offset, p.length, token))
            calls.append((self._address(table, target), req, batch.encode_request(wire)))
        out = []
        for (target, pieces), reply in zip(batches, self.pool.exchange(calls), strict=True):
            where = f"target {target}"
            try:
                if isinstance(reply, Fs3Error):
                    raise reply
                answers = batch.decode_reply(reply, len(pieces), where)
            except Fs3Error as err:
                out.append([err] * len(pieces))
                continue
            results: list[PieceResult] = []
            for p, answer in zip(pieces, answers, strict=True):
                if isinstance(answer, ChecksumMismatch):
                    chain = p.layout.chain_of(p.index)
                    self._bad_replica(target, chain, p.inode, p.index, answer)
                results.append(answer if isinstance(answer, Fs3Error) else answer[1])
            out.append(results)
        return out


def _limited(members: list[int], pieces: Sequence[ChunkPiece]) -> Iterator[list[int]]:
    """``members`` (indexes into ``pieces``) cut into batches of at most
    :data:`BATCH_PIECES` pieces and :data:`fs3.wire.batch.MAX_BYTES` bytes."""
    part: list[int] = []
    size = 0
    for i in members:
        if part and (len(part) >= BATCH_PIECES or size + pieces[i].length > batch.MAX_BYTES):
            yield part
            part, size = [], 0
        part.append(i)
        size += pieces[i].length
    if part:
        yield part


def read_order(table: RoutingTable, chain_id: int, inode: int, index: int) -> list[int]:
    """The serving replicas of a chunk in the order a read tries them.

    Each chunk prefers one replica (chunks of a file still spread over all of them), so a
    re-read finds that replica's page cache warm instead of reading the copy a random pick
    chose, which is cold two times in three at 3 replicas.
    """
    readers = list(table.chains[chain_id].readers())
    if not readers:
        return readers
    start = _preferred(inode, index, readers)
    return readers[start:] + readers[:start]


def _preferred(inode: int, index: int, readers: Sequence[int]) -> int:
    """Where in ``readers`` (not empty) the order of chunk ``index`` of ``inode`` starts."""
    return hash((inode, index)) % len(readers)
