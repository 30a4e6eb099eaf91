"""Zero-copy local reads, client side: chunks of targets on this host read from a file
descriptor the target passes, not copied through TCP.

For each target the client asks once over TCP (``LOCAL_INFO``) where its Unix socket is and
which host it runs on (:func:`fs3.storage.local_read.host_id`, never judged by its
address), and uses the socket only when that host is this one. A read
then costs one small round trip on the Unix socket, in which the target applies the rules
of a TCP READ and passes the committed chunk file's descriptor; the client preads header and
bytes straight into a fresh buffer, checks the block CRC32Cs with the engine's own function
and closes the descriptor. Why that is safe: see :mod:`fs3.storage.local_read`.

A descriptor per read, not a cache of open ones: a cached descriptor would read a version
that may since have been replaced, and asking whether it is still current is the same round
trip that passes a new one (measured by ``python -m fs3.local_bench``; the round trip is a
few percent of a 4 MiB read).

Anything wrong with the local path itself (no socket, no permission, another target behind
the path, a broken connection, a descriptor lost to the open-file limit) makes that read,
and the target's reads for :data:`RECHECK_S`, go over TCP; only what a TCP READ would answer
too (busy, stale routing, a checksum mismatch) is raised.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field

from fs3.client.mapped import map_file
from fs3.config import Timeouts
from fs3.errors import CapabilityRefused, ChecksumMismatch, Fs3Error, Unavailable
from fs3.storage.local import HEADER_SIZE, parse_header
from fs3.storage.local_read import host_id
from fs3.types import RoutingTable
from fs3.wire.checksum import BLOCK_SIZE, check_blocks
from fs3.wire.client import ConnectionPool
from fs3.wire.framing import LOCAL_MESSAGE_MAX, RESPONSE, Request, raise_error, recv_exact
from fs3.wire.ops import LOCAL_BAD, LOCAL_HELLO, LOCAL_INFO, LOCAL_OPEN

log = logging.getLogger("fs3.client")

RECHECK_S = 10.0
"""How long a target found remote, or whose local socket failed, is read over TCP before it
is asked again: a target restarted with local reads is used again within this, and a broken
socket costs one failed attempt per period, not one per read."""
_UNREACHABLE_RECHECK_S = 1.0  # a target that did not answer LOCAL_INFO may be back any moment


@dataclass
class LocalReadStats:
    """What the local path did, for tests and benchmarks."""

    reads: int = 0
    """Chunk reads answered through a passed descriptor (holes included)."""
    bytes: int = 0
    """Bytes those reads returned."""
    fallbacks: int = 0
    """Reads of a local target that went over TCP because the local path failed."""
    checksum_failures: int = 0
    """Reads whose blocks failed their CRC32C here; each replica is also in ``bad_replicas``."""
    by_target: dict[int, int] = field(default_factory=dict)
    """``reads`` per target id."""


class _NotThisTarget(OSError):
    """The socket at the advertised path belongs to another target or process."""


@dataclass
class _Local:
    """A target on this machine: its Unix socket and the idle connections to it."""

    target_id: int
    path: str
    token: str
    idle: list[socket.socket] = field(default_factory=list)


@dataclass
class _Probe:
    address: str
    local: _Local | None
    recheck_at: float


class LocalReads:
    """Reads chunks of targets on this machine through descriptors they pass.

    Args:
        pool: TCP connections, for asking targets where their Unix sockets are.
        timeouts: ``connect_s`` bounds connecting to a Unix socket, ``rpc_s`` each exchange.
        machine: this host's identity (``host.id``), compared with each target's; empty:
            :func:`host_id` (and where that is None, nothing is read locally).
    """

    def __init__(self, pool: ConnectionPool, timeouts: Timeouts, machine: str = "") -> None:
        self.pool = pool
        self.timeouts = timeouts
        self.machine = host_id(machine)
        self.stats = LocalReadStats()
        self._probes: dict[int, _Probe] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()

    def read(
        self, table: RoutingTable, target_id: int, req: Request, mapped: bool = False
    ) -> memoryview | bytes | None:
        """Reads ``req`` (a READ) from ``target_id`` locally; None when that target is not on
        this machine or its local path failed, and the caller reads over TCP.

        Returns up to ``req.length`` bytes (``b""`` for a hole), CRC-checked, with ``mapped``
        as a view of a locked mapping where the chunk file maps (see
        :func:`read_chunk_file`). Raises what a
        TCP READ of the target would: ChunkBusy, StaleRouting, and ChecksumMismatch naming the
        target when the stored bytes fail their CRC32C.
        """
        if self.machine is None:
            return None
        local = self._local(table, target_id)
        if local is None:
            return None
        open_req = Request(
            LOCAL_OPEN,
            req.chain,
            req.table_version,
            req.inode,
            req.index,
            capability=req.capability,
        )
        try:
            fd = self._exchange(local, open_req)
        except Fs3Error as err:
            if err.retryable or isinstance(err, CapabilityRefused):
                raise  # busy, stale routing, a damaged header, refused: as a TCP READ answers
            self._fail(local, err)
            return None
        except OSError as err:
            self._fail(local, err)
            return None
        if fd is None:
            self._count(target_id, 0)
            return b""
        where = f"target {target_id}: chunk {(req.chain, req.inode, req.index)}"
        try:
            data = read_chunk_file(fd, req.offset, req.length, where, mapped)
        except ChecksumMismatch as err:
            with self._lock:
                self.stats.checksum_failures += 1
            self._report_bad(local, req, err)
            raise ChecksumMismatch(f"{err.strerror} (local read)", err.path) from None
        except OSError as err:  # an I/O error of the disk: let the target's TCP path answer
            log.debug("local read of %s failed, reading over TCP: %s", where, err)
            with self._lock:
                self.stats.fallbacks += 1
            return None
        finally:
            os.close(fd)
        self._count(target_id, len(data))
        return data

    def _count(self, target_id: int, nbytes: int) -> None:
        with self._lock:
            self.stats.reads += 1
            self.stats.bytes += nbytes
            self.stats.by_target[target_id] = self.stats.by_target.get(target_id, 0) + 1

    # -- finding local targets -----------------------------------------------------------
    def _local(self, table: RoutingTable, target_id: int) -> _Local | None:
        info = table.targets.get(target_id)
        if info is None:
            return None
        address = info.data_address
        probe = self._probes.get(target_id)
        if probe is not None and probe.address == address:
            if probe.local is not None or time.monotonic() < probe.recheck_at:
                return probe.local
        with self._probe_lock:  # one probe at a time; others wait and use its answer
            probe = self._probes.get(target_id)
            fresh = probe is not None and probe.address == address
            if fresh and (probe.local is not None or time.monotonic() < probe.recheck_at):
                return probe.local
            local, recheck_s = self._probe(target_id, address)
            self._replace(target_id, _Probe(address, local, time.monotonic() + recheck_s))
            return local

    def _probe(self, target_id: int, address: str) -> tuple[_Local | None, float]:
        """Asks a target where its Unix socket is; (None, how long until asking again)
        when it is on another machine, serves no local reads or does not know the request."""
        try:
            _, _, body = self.pool.request(address, Request(LOCAL_INFO))
        except Unavailable as err:
            log.debug("target %d at %s: no answer to LOCAL_INFO: %s", target_id, address, err)
            return None, _UNREACHABLE_RECHECK_S
        except Fs3Error as err:  # a target from before local reads: "unknown data-path op"
            log.debug("target %d at %s serves no local reads: %s", target_id, address, err)
            return None, RECHECK_S
        try:
            info = json.loads(bytes(body)) if body else {}
        except ValueError:
            info = {}
        if info.get("machine") != self.machine or info.get("target") != target_id:
            return None, RECHECK_S
        return _Local(target_id, str(info["socket"]), str(info["token"])), RECHECK_S

    def _replace(self, target_id: int, probe: _Probe) -> None:
        """Records ``probe``; the idle connections of a target it supersedes are closed."""
        stale: list[socket.socket] = []
        with self._lock:
            old = self._probes.get(target_id)
            self._probes[target_id] = probe
            if old is not None and old.local is not None and old.local is not probe.local:
                stale, old.local.idle = old.local.idle, []
        for conn in stale:
            conn.close()

    def _fail(self, local: _Local, err: Exception) -> None:
        """Sends this read and the target's next ones for RECHECK_S over TCP."""
        log.debug(
            "target %d: local reads through %s failed, reading over TCP for %gs: %s",
            local.target_id,
            local.path,
            RECHECK_S,
            err,
        )
        with self._lock:
            self.stats.fallbacks += 1
            probe = self._probes.get(local.target_id)
        if probe is not None and probe.local is local:
            self._replace(
                local.target_id, _Probe(probe.address, None, time.monotonic() + RECHECK_S)
            )

    # -- the Unix socket -------------------------------------------------------------------
    def _connect(self, local: _Local) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeouts.connect_s)
            sock.connect(local.path)
            sock.settimeout(self.timeouts.rpc_s)
            token, _ = _request(sock, Request(LOCAL_HELLO), where=local.path)
            if token != local.token.encode():
                raise _NotThisTarget(f"socket {local.path} is not target {local.target_id}'s")
        except BaseException:
            sock.close()
            raise
        return sock

    def _exchange(self, local: _Local, req: Request, payload: bytes = b"") -> int | None:
        """One request on a pooled connection; returns the passed descriptor or None."""
        if os.getpid() != self._pid:
            self._after_fork()
        with self._lock:
            conn = local.idle.pop() if local.idle else None
        if conn is None:
            conn = self._connect(local)
        try:
            _, fd = _request(conn, req, payload, where=local.path)
        except Fs3Error:
            self._release(local, conn)  # an error frame: the connection is fine
            raise
        except BaseException:
            conn.close()
            raise
        self._release(local, conn)
        return fd

    def _release(self, local: _Local, conn: socket.socket) -> None:
        with self._lock:
            probe = self._probes.get(local.target_id)
            if probe is not None and probe.local is local:
                local.idle.append(conn)
                return
        conn.close()  # the target was forgotten or found anew meanwhile

    def _after_fork(self) -> None:
        """A forked child (a DataLoader worker) must not share its parent's connections: a
        reply meant for one process, descriptor included, would reach the other. Closing
        the child's copies leaves the parent's open. Only the forking thread lives on in the
        child, so a lock another thread held at the fork is made anew, not waited for."""
        self._lock, self._probe_lock = threading.Lock(), threading.Lock()
        self._pid = os.getpid()
        self.close()

    def _report_bad(self, local: _Local, req: Request, err: ChecksumMismatch) -> None:
        """Tells the target, which logs it as it logs a mismatch found by a TCP read."""
        message = (err.strerror or str(err)).encode()
        bad = Request(LOCAL_BAD, req.chain, 0, req.inode, req.index, req.offset, len(message))
        try:
            self._exchange(local, bad, message)
        except (Fs3Error, OSError) as report_err:
            log.debug("could not report a bad block to target %d: %s", local.target_id, report_err)

    def close(self) -> None:
        """Closes idle Unix connections; later reads open new ones."""
        with self._lock:
            conns = [c for p in self._probes.values() if p.local for c in p.local.idle]
            for p in self._probes.values():
                if p.local:
                    p.local.idle = []
        for conn in conns:
            conn.close()


def _request(
    sock: socket.socket, req: Request, payload: bytes = b"", where: str = ""
) -> tuple[bytearray, int | None]:
    """Sends one request; returns (reply payload, passed descriptor or None). Raises the
    target's error frame as its error type, OSError when the connection fails."""
    sock.sendall(req.pack(0) + payload)
    head, fds, flags, _ = socket.recv_fds(sock, RESPONSE.size, 1)
    try:
        if flags & socket.MSG_CTRUNC:
            raise OSError("a passed descriptor was dropped (MSG_CTRUNC): too many open files?")
        if not head:
            raise ConnectionError("local socket closed by the target")
        header = bytearray(head).ljust(RESPONSE.size, b"\x00")
        if len(head) < RESPONSE.size:
            recv_exact(sock, memoryview(header)[len(head) :])
        status, length, has_fd, _ = RESPONSE.unpack(header)
        if length > LOCAL_MESSAGE_MAX:
            raise OSError(f"a local-socket reply of {length} bytes, over {LOCAL_MESSAGE_MAX}")
        body = bytearray(length)
        recv_exact(sock, memoryview(body))
        if status:
            raise_error(status, body, f"local socket {where}")
        if bool(has_fd) != bool(fds):
            raise OSError(f"expected {int(bool(has_fd))} passed descriptors, got {len(fds)}")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return body, (fds[0] if fds else None)


def read_chunk_file(
    fd: int, offset: int, length: int, where: str, mapped: bool = False
) -> memoryview | bytes:
    """Reads up to ``length`` bytes at ``offset`` of the chunk file open as ``fd`` and checks
    the blocks they lie in against the header's CRC32Cs.

    The bytes go straight from the page cache into one new ``bytes`` object, which holds
    whole blocks; the result is a view into it (a caller that wants ``bytes`` of a whole
    chunk takes the view's ``obj``: no second copy). With ``mapped``, they are not copied at
    all where the file maps: the view is of a locked mapping (:mod:`fs3.client.mapped`), for
    callers that only pass the bytes on. Raises ChecksumMismatch naming ``where`` when the
    header or a block fails its check.
    """
    start = offset // BLOCK_SIZE * BLOCK_SIZE
    stop = -(-(offset + length) // BLOCK_SIZE) * BLOCK_SIZE
    header = os.pread(fd, HEADER_SIZE, 0)
    data: bytes | memoryview | None = b""
    if len(header) == HEADER_SIZE:
        data = _map_blocks(fd, start, stop) if mapped else None
        if data is None:
            data = os.pread(fd, stop - start, HEADER_SIZE + start)
    _, size, crcs = parse_header(header, where)
    end = min(offset + length, size)
    if end <= offset:
        return b""
    wanted = min(-(-end // BLOCK_SIZE) * BLOCK_SIZE, size) - start
    if len(data) < wanted:  # the file ends before what its header says it holds
        raise ChecksumMismatch(f"{where} block {(start + len(data)) // BLOCK_SIZE} fails CRC32C")
    view = memoryview(data)[:wanted]
    check_blocks(view, start, len(data), size, crcs, where)
    return view[offset - start : end - start]


def _map_blocks(fd: int, start: int, stop: int) -> memoryview | None:
    """The chunk's bytes from ``start`` to ``stop`` (or the file's end) as a locked mapping;
    None where they cannot be mapped, or there are none."""
    in_file = min(stop - start, os.fstat(fd).st_size - HEADER_SIZE - start)
    return map_file(fd, HEADER_SIZE + start, in_file)  # HEADER_SIZE is a multiple of pages
