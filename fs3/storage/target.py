"""A storage target's core: CRAQ chain replication and resync over a chunk engine.

Writes enter at the chain head, which serialises them per chunk, turns a partial write into
the chunk's full new content, stages it as version v+1 and forwards it down the chain. Each
member stages, forwards, and commits only when its successor answered, so the tail commits
first and commits flow back up; the client's acknowledgement therefore means every replica
has it. Forwarding whole chunks makes each hop an idempotent replace, which is also what
resync sends to a returning member.
"""

from __future__ import annotations

import logging
import os
import threading

from fs3 import capabilities
from fs3.capabilities import ServiceSigner, Verifier
from fs3.errors import (
    CapabilityRefused,
    ChecksumMismatch,
    ChunkBusy,
    DataLost,
    Fs3Error,
    InvalidArgument,
    StaleRouting,
)
from fs3.mgmtd.client import MgmtdClient
from fs3.storage.engine import ChunkEngine, patch
from fs3.storage.locks import ChunkLocks
from fs3.types import SERVING, Chain, ChunkId, ResyncProgress, RoutingTable
from fs3.wire.batch import BatchPiece
from fs3.wire.checksum import crc32c
from fs3.wire.client import ConnectionPool
from fs3.wire.framing import DUMP_ENTRY, Request
from fs3.wire.ops import (
    DUMP,
    LOCAL_INFO,
    LOCAL_OPEN,
    READ,
    READ_BATCH,
    REMOVE,
    REPLICATE,
    SYNC,
    WRITE,
)

log = logging.getLogger("fs3.storage")


class StorageTarget:
    """Serves one target's chunks; every public method is one data-path operation."""

    def __init__(
        self,
        target_id: int,
        engine: ChunkEngine,
        mgmtd: MgmtdClient,
        pool: ConnectionPool,
        verifier: Verifier | None = None,
        signer: ServiceSigner | None = None,
    ) -> None:
        self.target_id = target_id
        self.verifier = verifier
        """Checks each request's capability (:meth:`authorize`); None: no checks
        (``security.capabilities`` off)."""
        self.signer = signer
        """Signs this target's own requests to others (forwarding, resync)."""
        self.engine = engine
        self.mgmtd = mgmtd
        self.pool = pool
        # One lock per chunk, not striped: a chain hop holds its lock while the next hop takes
        # its own, and stripes shared across chains running in opposite directions deadlock.
        self.locks = ChunkLocks()
        self._syncing: set[int] = set()
        self._syncing_lock = threading.Lock()
        self._progress: dict[int, ResyncProgress] = {}  # chain -> the resync running on it
        self.registered = threading.Event()
        """Set once mgmtd answered this process's first heartbeat. Until then the chain
        table may still show this target serving from before it restarted, perhaps on an
        empty disk: reads and writes are refused (retryably) rather than answered from it."""

    def authorize(self, req: Request) -> None:
        """Refuses ``req`` unless its capability allows it: reads (also local ones) need
        read on the chunk, writes write, a REMOVE write on every chunk it deletes; the
        chain-internal ops need a service capability. Raises CapabilityRefused."""
        # A READ_BATCH's pieces carry capabilities of their own: read_batch checks each.
        if self.verifier is None or req.op in (LOCAL_INFO, READ_BATCH):
            return
        cap = req.capability
        if req.op in (READ, LOCAL_OPEN):
            self.verifier.check(cap, req.inode, capabilities.READ, req.index, req.index + 1)
        elif req.op == WRITE:
            self.verifier.check(cap, req.inode, capabilities.WRITE, req.index, req.index + 1)
        elif req.op == REMOVE:
            end = req.length or capabilities.WHOLE_FILE
            self.verifier.check(cap, req.inode, capabilities.WRITE, req.index, end)
        else:
            self.verifier.check(cap, req.inode, 0, req.index, req.index, service_only=True)

    def _service_capability(self) -> bytes:
        return self.signer.token() if self.signer is not None else b""

    def _check_registered(self) -> None:
        if not self.registered.is_set():
            raise StaleRouting(f"target {self.target_id} is starting: not registered yet")

    def _chain(self, chain_id: int, table_version: int) -> tuple[RoutingTable, Chain]:
        self._check_registered()
        table = self.mgmtd.table()
        if table_version > table.version:
            table = self.mgmtd.refresh()
        if table_version != table.version:
            raise StaleRouting(
                f"chain table version {table_version} differs from target "
                f"{self.target_id}'s {table.version}; refresh and retry"
            )
        chain = table.chains.get(chain_id)
        if chain is None:
            raise InvalidArgument(f"no chain {chain_id} in table version {table.version}")
        return table, chain

    def _address(self, table: RoutingTable, target_id: int) -> str:
        return table.targets[target_id].data_address

    def write(self, req: Request, data: memoryview) -> tuple[int, int]:
        """A client write at the head: returns (new version, CRC32C of the full chunk)."""
        table, chain = self._chain(req.chain, req.table_version)
        writers = chain.writers()
        if not writers or writers[0] != self.target_id:
            raise StaleRouting(f"target {self.target_id} is not the head of chain {req.chain}")
        if crc32c(data) != req.crc:
            raise ChecksumMismatch(f"write to chain {req.chain} corrupted in transit")
        cid = ChunkId(req.chain, req.inode, req.index)
        with self.locks.hold(cid):
            committed, pending = self.engine.stat(cid)
            version = max(committed.version if committed else 0, pending or 0) + 1
            whole = req.truncate and req.offset == 0
            if committed is None and not whole and self.engine.lost(cid):
                # Patching a lost chunk as if it were a hole would make its zeros the
                # chain's content, over the replicas that may still hold it.
                raise DataLost(
                    f"chunk {tuple(cid)} is lost on target {self.target_id} (the chain "
                    "head): a partial write would fill the rest with zeros; run hai fs3 fsck"
                )
            if whole:
                content: bytes | memoryview = data
            else:
                base = self.engine.read(cid, 0, committed.length) if committed else b""
                content = patch(base, req.offset, data, req.truncate)
            return version, self._apply(table, chain, cid, version, content)

    def replicate(self, req: Request, data: memoryview) -> tuple[int, int]:
        """A full chunk forwarded by the predecessor: stage, forward, commit."""
        table, chain = self._chain(req.chain, req.table_version)
        if self.target_id not in chain.writers()[1:]:
            raise StaleRouting(f"target {self.target_id} is not a successor in chain {req.chain}")
        if crc32c(data) != req.crc:
            raise ChecksumMismatch(f"replica of chain {req.chain} corrupted in transit")
        cid = ChunkId(req.chain, req.inode, req.index)
        with self.locks.hold(cid):
            return req.version, self._apply(table, chain, cid, req.version, data)

    def _apply(
        self,
        table: RoutingTable,
        chain: Chain,
        cid: ChunkId,
        version: int,
        content: bytes | memoryview,
    ) -> int:
        crc = crc32c(content)
        self.engine.write(cid, version, content, 0, True)
        writers = chain.writers()
        me = writers.index(self.target_id)
        if me + 1 < len(writers):
            fwd = Request(
                REPLICATE,
                cid.chain,
                table.version,
                cid.inode,
                cid.index,
                crc=crc,
                version=version,
                truncate=True,
                capability=self._service_capability(),
            )
            self.pool.request(self._address(table, writers[me + 1]), fwd, content)
        self.engine.commit(cid, version)
        return crc

    def read(self, req: Request) -> tuple[int, bytes | memoryview, int]:
        """Committed bytes of a chunk: returns (version, data, CRC32C of data).

        Raises ChunkBusy when a write is in flight here and this is not the tail, StaleRouting
        when this target is not serving the chain, ChecksumMismatch naming this target.
        """
        chain = self._serving(self._read_table(req.table_version), req.chain)
        cid = ChunkId(req.chain, req.inode, req.index)
        version = self._readable_version(chain, cid)
        try:
            data, crc = self.engine.read_checked(cid, req.offset, req.length)
        except ChecksumMismatch as err:
            raise self._bad_copy(err) from None
        return version, data, crc

    def _read_table(self, table_version: int) -> RoutingTable:
        self._check_registered()
        table = self.mgmtd.table()
        return self.mgmtd.refresh() if table_version > table.version else table

    def _serving(self, table: RoutingTable, chain_id: int) -> Chain:
        chain = table.chains.get(chain_id)
        if chain is None or chain.state_of(self.target_id) != SERVING:
            raise StaleRouting(f"target {self.target_id} does not serve chain {chain_id}")
        return chain

    def _readable_version(self, chain: Chain, cid: ChunkId) -> int:
        """The committed version a read of ``cid`` answers with (0: none).

        Raises ChunkBusy when a write is in flight here and this is not the tail."""
        committed, pending = self.engine.stat(cid)
        if pending is not None and chain.writers()[-1] != self.target_id:
            raise ChunkBusy(f"chunk {tuple(cid)} has a write in flight on target {self.target_id}")
        return committed.version if committed else 0

    def _bad_copy(self, err: ChecksumMismatch) -> ChecksumMismatch:
        log.error("target %d: %s", self.target_id, err)
        return ChecksumMismatch(f"target {self.target_id}: {err.strerror}", err.path)

    def read_batch(
        self, req: Request, pieces: list[BatchPiece]
    ) -> list[tuple[int, bytes, int] | Fs3Error]:
        """Each piece of a READ_BATCH (``req``: its header) read as a single READ of it is,
        capability check first: returns per piece (version, bytes, CRC32C of them) or the
        error that READ raised, so one refused or busy piece leaves the others read.

        What pieces share is done once: each distinct capability's signature and expiry
        (:class:`fs3.capabilities.BatchChecks`), the chain table, and per chunk its state
        and one open of its file (:meth:`ChunkEngine.read_pieces`)."""
        answers: dict[int, tuple[int, bytes, int] | Fs3Error] = {}
        checks = self.verifier.batch() if self.verifier is not None else None
        chunks: dict[ChunkId, list[int]] = {}  # the pieces allowed, by chunk
        for i, p in enumerate(pieces):
            try:
                if checks is not None:
                    checks.check(p.capability, p.inode, capabilities.READ, p.index, p.index + 1)
            except CapabilityRefused as err:
                answers[i] = err
                continue
            chunks.setdefault(ChunkId(p.chain, p.inode, p.index), []).append(i)
        try:
            table = self._read_table(req.table_version)
        except Fs3Error as err:
            answers.update((i, err) for i in range(len(pieces)) if i not in answers)
        else:
            for cid, members in chunks.items():
                self._read_chunk(table, cid, [pieces[i] for i in members], members, answers)
        return [answers[i] for i in range(len(pieces))]

    def _read_chunk(
        self,
        table: RoutingTable,
        cid: ChunkId,
        pieces: list[BatchPiece],
        numbers: list[int],
        answers: dict[int, tuple[int, bytes, int] | Fs3Error],
    ) -> None:
        """Reads ``pieces`` (all of chunk ``cid``) into ``answers`` under their ``numbers``."""
        try:
            version = self._readable_version(self._serving(table, cid.chain), cid)
        except Fs3Error as err:
            answers.update((i, err) for i in numbers)
            return
        got = self.engine.read_pieces(cid, [(p.offset, p.length) for p in pieces])
        for i, answer in zip(numbers, got, strict=True):
            if isinstance(answer, ChecksumMismatch):
                answers[i] = self._bad_copy(answer)
            else:
                answers[i] = (version, *answer)

    def remove(self, req: Request) -> int:
        """Deletes chunks of ``req.inode`` from ``req.index`` (to ``req.length`` if set)."""
        return self.engine.remove(req.chain, req.inode, req.index, req.length or None)

    def sync(self, req: Request, data: memoryview) -> None:
        """Installs a chunk copied by resync, whatever version was here."""
        if crc32c(data) != req.crc:
            raise ChecksumMismatch(f"resync copy for chain {req.chain} corrupted in transit")
        cid = ChunkId(req.chain, req.inode, req.index)
        with self.locks.hold(cid):
            self.engine.replace(cid, req.version, data)

    def verify(self, req: Request) -> tuple[int, int, dict[str, object]]:
        """Checks this replica of one chunk against its stored checksums, whatever the
        chain's state: returns (committed version, CRC32C of the whole chunk, report) where
        the report's ``state`` is ``ok``, ``bad`` (with ``error``) or ``absent``, and
        ``pending`` says whether a write is in flight."""
        cid = ChunkId(req.chain, req.inode, req.index)
        committed, pending = self.engine.stat(cid)
        report: dict[str, object] = {"state": "absent", "pending": pending is not None}
        if committed is None:
            if self.engine.lost(cid):
                report.update(
                    state="bad", error=f"chunk {tuple(cid)} is lost: file gone or header damaged"
                )
            return 0, 0, report
        try:
            data, crc = self.engine.read_checked(cid, 0, committed.length)
            if len(data) != committed.length:
                raise ChecksumMismatch(
                    f"chunk {tuple(cid)} holds {len(data)} bytes, {committed.length} committed"
                )
            if committed.length == 0 and self._file_missing(cid):
                raise ChecksumMismatch(f"chunk {tuple(cid)} file is missing")
        except ChecksumMismatch as err:
            report.update(state="bad", error=err.strerror, length=committed.length)
            return committed.version, 0, report
        report.update(state="ok", length=committed.length)
        return committed.version, crc, report

    def _file_missing(self, cid: ChunkId) -> bool:
        try:
            fd = self.engine.open_committed(cid)
        except NotImplementedError:
            return False
        if fd is None:
            return True
        os.close(fd)
        return False

    def repair(self, req: Request, data: memoryview) -> None:
        """Replaces this replica of a chunk with a good copy (fsck's repair), only while the
        replica still holds committed version ``req.version`` and no write is in flight:
        a write or a deletion since fsck looked wins.

        Raises ChunkBusy, InvalidArgument (the replica changed), ChecksumMismatch (the copy
        was damaged in transit).
        """
        if crc32c(data) != req.crc:
            raise ChecksumMismatch(f"repair copy for chain {req.chain} corrupted in transit")
        cid = ChunkId(req.chain, req.inode, req.index)
        with self.locks.hold(cid):
            committed, pending = self.engine.stat(cid)
            if pending is not None:
                raise ChunkBusy(f"chunk {tuple(cid)} has a write in flight; not repaired")
            if committed is None or committed.version != req.version:
                have = committed.version if committed else "none"
                raise InvalidArgument(
                    f"chunk {tuple(cid)} is at version {have} now, not "
                    f"{req.version}: changed since checked"
                )
            self.engine.replace(cid, req.version, data)
            log.warning("target %d: chunk %s repaired by fsck", self.target_id, tuple(cid))

    def dump(self, chain: int) -> bytes:
        """Committed chunk versions of one chain, packed as :data:`DUMP_ENTRY` records."""
        return b"".join(
            DUMP_ENTRY.pack(c.inode, c.index, m.version, m.length)
            for c, m in self.engine.list_chain(chain).items()
        )

    # -- resync ------------------------------------------------------------------------
    def resync_progress(self) -> tuple[ResyncProgress, ...]:
        """The resyncs this target runs now, for its heartbeat."""
        with self._syncing_lock:
            return tuple(self._progress[c] for c in sorted(self._progress))

    def start_resyncs(self, table: RoutingTable) -> None:
        """Starts a resync for every chain whose syncing member follows this target, the last
        serving one; called after each heartbeat."""
        for chain in table.chains.values():
            serving, writers = chain.readers(), chain.writers()
            if not serving or serving[-1] != self.target_id or len(writers) == len(serving):
                continue
            successor = writers[len(serving)]
            with self._syncing_lock:
                if chain.chain_id in self._syncing:
                    continue
                self._syncing.add(chain.chain_id)
            threading.Thread(
                target=self._resync,
                args=(table, chain.chain_id, successor),
                daemon=True,
                name=f"resync-{chain.chain_id}-{successor}",
            ).start()

    def _resync(self, table: RoutingTable, chain_id: int, successor: int) -> None:
        address = self._address(table, successor)
        try:
            dump = Request(DUMP, chain_id, capability=self._service_capability())
            _, _, raw = self.pool.request(address, dump)
            remote = {}
            for off in range(0, len(raw), DUMP_ENTRY.size):
                inode, index, version, _ = DUMP_ENTRY.unpack_from(raw, off)
                remote[ChunkId(chain_id, inode, index)] = version
            local = self.engine.list_chain(chain_id)
            copied = 0
            todo = sorted(set(local) | set(remote))
            for done, cid in enumerate(todo):
                if done % 16 == 0:
                    with self._syncing_lock:
                        self._progress[chain_id] = ResyncProgress(
                            chain_id, successor, done, len(todo)
                        )
                with self.locks.hold(cid):
                    meta, _ = self.engine.stat(cid)
                    if meta is not None and remote.get(cid) == meta.version:
                        continue
                    if meta is None:
                        if self.engine.lost(cid):
                            continue  # lost here, not deleted: the successor's copy stays
                        req = Request(
                            REMOVE,
                            chain_id,
                            0,
                            cid.inode,
                            cid.index,
                            length=cid.index + 1,
                            capability=self._service_capability(),
                        )
                        self.pool.request(address, req)
                        continue
                    content = self.engine.read(cid, 0, meta.length)
                    req = Request(
                        SYNC,
                        chain_id,
                        0,
                        cid.inode,
                        cid.index,
                        crc=crc32c(content),
                        version=meta.version,
                        truncate=True,
                        capability=self._service_capability(),
                    )
                    self.pool.request(address, req, content)
                    copied += 1
            self.mgmtd.sync_done(chain_id, successor)
            log.info("chain %d: target %d resynced (%d chunks copied)", chain_id, successor, copied)
        except Fs3Error as err:
            log.warning(
                "chain %d: resync of target %d failed, will retry: %s", chain_id, successor, err
            )
        finally:
            with self._syncing_lock:
                self._syncing.discard(chain_id)
                self._progress.pop(chain_id, None)
