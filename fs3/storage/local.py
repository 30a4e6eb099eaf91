"""A chunk engine on a local folder: one file per chunk version, block checksums in a header.

Each chunk file is a 4 KiB header (magic, version, length, one CRC32C per 64 KiB block)
followed by the bytes. Per-block checksums let a 4 KiB random read verify 64 KiB instead of
the whole chunk. A write stages ``<name>.p`` (copy-on-write, so the committed version stays
readable meanwhile) and commit renames it over ``<name>``, which is atomic.

A committed file is never written again, only replaced or unlinked: a client on this machine
may hold a descriptor of it (:meth:`LocalChunkEngine.open_committed`, passed over the
target's Unix socket by :mod:`fs3.storage.local_read`) and must keep reading that one
version. Anything that rewrote a committed file in place would break that.

A log beside the chain folders (:data:`LOG_NAME`) records which chunks exist: a record when a
chunk is first committed, one before chunks are removed. At start, a chunk the log lists
whose file is gone (deleted by hand, lost to a disk error) is *lost*, not a hole: it reads
as a bad replica, so a chunk lost on every replica is an error, never zeros. Records follow
the commit's rename and precede the unlink (synced first), so a crash can only drop an
added record, which makes a later loss of that chunk look like a hole as it did before the
log; it never makes a hole look lost. A missing log (a target older than it) means the
files are all a target knows.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

from fs3.errors import ChecksumMismatch, InvalidArgument, NotFound
from fs3.storage.engine import ChunkEngine, patch
from fs3.types import ChunkId, ChunkMeta
from fs3.wire.checksum import BLOCK_SIZE, check_blocks, crc32c, crc32c_combine

HEADER_SIZE = 4096
_MAGIC = b"FS3C"
_FIXED = struct.Struct("<4sQQI")  # magic, version, length, block count
# 4096-byte header, 20 fixed bytes, 4 bytes per block: 1019 blocks of 64 KiB = 63 MiB max.
MAX_BLOCKS = (HEADER_SIZE - _FIXED.size) // 4

LOG_NAME = "chunks.log"
_RECORD = struct.Struct("<cIQQQ")  # kind, chain, inode, first index, end index (exclusive)
_ADDED, _REMOVED = b"+", b"-"
_NO_END = 1 << 62  # the end index of a removal up to the last chunk

log = logging.getLogger("fs3.storage")


def _header(version: int, content: bytes) -> bytes:
    crcs = [crc32c(content[i : i + BLOCK_SIZE]) for i in range(0, len(content), BLOCK_SIZE)]
    if len(crcs) > MAX_BLOCKS:
        raise InvalidArgument(f"chunk of {len(content)} bytes exceeds {MAX_BLOCKS} blocks")
    head = _FIXED.pack(_MAGIC, version, len(content), len(crcs)) + struct.pack(
        f"<{len(crcs)}I", *crcs
    )
    return head.ljust(HEADER_SIZE, b"\x00")


def parse_header(
    header: bytes | bytearray | memoryview, where: object
) -> tuple[int, int, tuple[int, ...]]:
    """Returns (version, length, block CRCs) of a chunk file's header.

    Raises ChecksumMismatch naming ``where`` when the header is short or damaged.
    """
    if len(header) < HEADER_SIZE:
        raise ChecksumMismatch(f"chunk file {where} has a short header")
    magic, version, length, nblocks = _FIXED.unpack_from(header)
    if magic != _MAGIC or nblocks > MAX_BLOCKS or nblocks != -(-length // BLOCK_SIZE):
        raise ChecksumMismatch(f"chunk file {where} has a damaged header")
    crcs = struct.unpack_from(f"<{nblocks}I", header, _FIXED.size)
    return version, length, crcs


class LocalChunkEngine(ChunkEngine):
    """Chunks as files under ``root/<chain>/``; the index of versions is rebuilt at start."""

    def __init__(self, root: str | os.PathLike[str], fsync: bool = True) -> None:
        self.root = Path(root)
        self._root_text = str(self.root)
        # Chunks are readable only through a target's checks (fs3.capabilities): their
        # folders are 0700 and files 0600 whatever the umask, an existing folder tightened.
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._committed: dict[ChunkId, ChunkMeta] = {}
        self._pending: dict[ChunkId, tuple[int, int]] = {}  # version, length
        self._bytes = 0  # summed lengths of the committed chunks
        # Chunks that existed here but cannot be read: a header that failed at start, or a
        # file the log lists that is gone (lost). Not holes: reads of them fail.
        self._damaged: set[ChunkId] = set()
        self._buffers = threading.local()
        self._scan()
        self._log_fd = -1
        self._log_records = 0
        self._rewrite_log()

    def _path(self, cid: ChunkId) -> Path:
        return Path(self._file(cid))

    def _file(self, cid: ChunkId) -> str:
        # A string, not a Path: pathlib's joins were a third of a 4 KiB read's CPU.
        return f"{self._root_text}/{cid.chain}/{cid.inode:016x}.{cid.index:08x}"

    def _scan(self) -> None:
        for chain_dir in self.root.iterdir():
            if not chain_dir.name.isdigit():
                continue
            for file in chain_dir.iterdir():
                if file.suffix == ".p":
                    # A version staged before a crash was never acknowledged: drop it.
                    file.unlink()
                    continue
                inode, index = file.name.split(".")
                cid = ChunkId(int(chain_dir.name), int(inode, 16), int(index, 16))
                with open(file, "rb") as f:
                    try:
                        version, length, _ = parse_header(f.read(HEADER_SIZE), file)
                    except ChecksumMismatch:
                        # Left for a resync or fsck to replace; reads fail meanwhile, as
                        # a bad replica (not a hole: the chunk did exist).
                        self._damaged.add(cid)
                        continue
                self._committed[cid] = ChunkMeta(version, length)
                self._bytes += length
        lost = self._recorded() - self._committed.keys() - self._damaged
        if lost:
            log.error(
                "%s: %d chunks the log lists have no file (lost): they read as bad replicas, "
                "e.g. %s",
                self.root,
                len(lost),
                tuple(min(lost)),
            )
        self._damaged |= lost

    def _recorded(self) -> set[ChunkId]:
        """The chunks the log says exist; a torn last record (a crash mid-append) is dropped."""
        try:
            raw = (self.root / LOG_NAME).read_bytes()
        except FileNotFoundError:
            return set()
        files: dict[tuple[int, int], set[int]] = {}
        for off in range(0, len(raw) - _RECORD.size + 1, _RECORD.size):
            kind, chain, inode, first, end = _RECORD.unpack_from(raw, off)
            indexes = files.setdefault((chain, inode), set())
            if kind == _ADDED:
                indexes.add(first)
            else:
                indexes -= {i for i in indexes if first <= i < end}
        return {ChunkId(c, ino, i) for (c, ino), indexes in files.items() for i in indexes}

    def _rewrite_log(self) -> None:
        """Replaces the log by one record per chunk known now (committed or damaged), which
        compacts it, and opens it for appending. Called at start and, under the lock, when
        removals made it long."""
        known = sorted({*self._committed, *self._damaged})
        path = self.root / LOG_NAME
        fresh = path.with_name(LOG_NAME + ".new")
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"".join(_RECORD.pack(_ADDED, *c, c.index + 1) for c in known))
            if self._fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        os.replace(fresh, path)
        if self._log_fd >= 0:
            os.close(self._log_fd)
        self._log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._log_records = len(known)

    def _append_log(self, record: bytes, sync: bool) -> None:
        """Appends one record; the caller holds the lock."""
        os.write(self._log_fd, record)
        if sync and self._fsync:
            os.fdatasync(self._log_fd)
        self._log_records += 1
        known = len(self._committed) + len(self._damaged)
        if self._log_records > 2 * known + 65536:  # mostly removed chunks: compact
            self._rewrite_log()

    def lost(self, cid: ChunkId) -> bool:
        with self._lock:
            return cid in self._damaged

    def stat(self, cid: ChunkId) -> tuple[ChunkMeta | None, int | None]:
        with self._lock:
            pending = self._pending.get(cid)
            return self._committed.get(cid), pending[0] if pending else None

    def _read_buffer(self, size: int) -> memoryview:
        """This thread's read buffer, grown to ``size``: a fresh 4 MiB bytearray per read
        cost a zero-fill and a thousand page faults, more than the read itself."""
        buf = getattr(self._buffers, "buf", None)
        if buf is None or len(buf) < size:
            buf = self._buffers.buf = bytearray(size)
        return memoryview(buf)[:size]

    def read(self, cid: ChunkId, offset: int, length: int) -> bytes | memoryview:
        return self.read_checked(cid, offset, length)[0]

    def read_checked(
        self, cid: ChunkId, offset: int, length: int
    ) -> tuple[bytes | memoryview, int]:
        """Reads whole blocks, verifies each against its stored CRC and returns the range
        with its CRC, combined from the block CRCs where the range covers whole blocks."""
        if length <= 0:  # no bytes to verify: what a local read's check asks (local_read)
            return b"", 0
        opened = self._open_checked(cid)
        if opened is None:
            return b"", 0
        fd, size, crcs, path = opened
        try:
            return self._range(fd, size, crcs, f"chunk {tuple(cid)}", path, offset, length)
        finally:
            os.close(fd)

    def read_pieces(
        self, cid: ChunkId, ranges: Sequence[tuple[int, int]]
    ) -> list[tuple[bytes, int] | ChecksumMismatch]:
        """As :meth:`ChunkEngine.read_pieces`, with one open and one header read for all
        ``ranges``: the descriptor is of one committed version (see
        :meth:`open_committed`), so they read what a READ of each would at that moment."""
        try:
            opened = self._open_checked(cid)
        except ChecksumMismatch as err:
            return [err] * len(ranges)
        if opened is None:
            return [(b"", 0)] * len(ranges)
        fd, size, crcs, path = opened
        where = f"chunk {tuple(cid)}"  # formatted once: a quarter of a small piece's overhead
        out: list[tuple[bytes, int] | ChecksumMismatch] = []
        try:
            for offset, length in ranges:
                try:
                    data, crc = self._range(fd, size, crcs, where, path, offset, length)
                except ChecksumMismatch as err:
                    out.append(err)
                    continue
                out.append((bytes(data), crc))  # the buffer is reused by the next range
        finally:
            os.close(fd)
        return out

    def _open_checked(self, cid: ChunkId) -> tuple[int, int, tuple[int, ...], str] | None:
        """The committed file of ``cid`` opened, with its length and block CRCs from its
        header, and its path; None for a hole (never written here).

        Raises ChecksumMismatch: the chunk is lost, its file gone or its header damaged.
        """
        path = self._file(cid)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            with self._lock:  # remove() drops the index entry and the file under this lock
                if cid in self._committed or cid in self._damaged:
                    raise ChecksumMismatch(f"chunk {tuple(cid)} file is missing", path) from None
            return None
        try:
            if cid in self._damaged:
                raise ChecksumMismatch(f"chunk {tuple(cid)} had a damaged header at start", path)
            _, size, crcs = parse_header(os.pread(fd, HEADER_SIZE, 0), path)
        except BaseException:
            os.close(fd)
            raise
        return fd, size, crcs, path

    def _range(
        self,
        fd: int,
        size: int,
        crcs: tuple[int, ...],
        where: str,
        path: str,
        offset: int,
        length: int,
    ) -> tuple[bytes | memoryview, int]:
        """``length`` bytes at ``offset`` of the open chunk file ``fd`` (``size`` bytes long,
        blocks ``crcs``), its blocks verified, with their CRC32C; a view into this thread's
        read buffer. Errors name ``where`` (the chunk) and ``path``."""
        end = min(offset + length, size)
        if length <= 0 or end <= offset:
            return b"", 0
        first, last = offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        start = first * BLOCK_SIZE
        stop = min((last + 1) * BLOCK_SIZE, size)
        view = self._read_buffer(stop - start)
        got = os.preadv(fd, [view], HEADER_SIZE + start)
        check_blocks(view, start, got, size, crcs, where, path)
        out = view[offset - start : end - start]
        if offset % BLOCK_SIZE or (end % BLOCK_SIZE and end != size):
            # A range that cuts a block (a small random read): its own CRC32C, about 1 us
            # per 4 KiB. Combining would shift by the cut's length, whose tables cost ~3 ms
            # to build for each new length (a 4 KiB read across two blocks took 200 us).
            return out, crc32c(out)
        crc = 0
        for block in range(first, last + 1):  # whole blocks: combined, no second pass
            lo = block * BLOCK_SIZE - start
            piece = view[lo : min(lo + BLOCK_SIZE, got)]
            crc = crcs[block] if block == first else crc32c_combine(crc, crcs[block], len(piece))
        # A view into the verified buffer: the data path sends it as is, no 4 MiB copy.
        return out, crc

    def open_committed(self, cid: ChunkId) -> int | None:
        """A read-only descriptor of the committed version's file, or None when absent.

        The file never changes while open: a new version is a new file (``<name>.p``)
        renamed over this one, and removal only unlinks it, so the descriptor keeps
        reading the one version it was opened on.
        """
        try:
            return os.open(self._path(cid), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            with self._lock:
                if cid in self._committed or cid in self._damaged:
                    raise ChecksumMismatch(f"chunk {tuple(cid)} file is missing") from None
            return None

    def write(
        self, cid: ChunkId, version: int, data: bytes | memoryview, offset: int, truncate: bool
    ) -> None:
        committed, _ = self.stat(cid)
        if cid in self._damaged and not (truncate and offset == 0):
            raise ChecksumMismatch(
                f"chunk {tuple(cid)} had a damaged header at start: only "
                "a whole new content can replace it"
            )
        if committed is not None and version <= committed.version:
            raise InvalidArgument(
                f"chunk {tuple(cid)} version {version} <= committed {committed.version}"
            )
        base = b""
        if committed is not None and not (truncate and offset == 0):
            base = self.read(cid, 0, committed.length)
        content = patch(base, offset, data, truncate)
        path = self._path(cid)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        pending = path.with_name(path.name + ".p")
        fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.writev(fd, [_header(version, content), content])
            if self._fsync:
                os.fdatasync(fd)
        finally:
            os.close(fd)
        with self._lock:
            self._pending[cid] = (version, len(content))

    def commit(self, cid: ChunkId, version: int) -> ChunkMeta:
        path = self._path(cid)
        with self._lock:
            pending = self._pending.get(cid)
            if pending is not None and pending[0] == version:
                os.replace(path.with_name(path.name + ".p"), path)
                del self._pending[cid]
                old = self._committed.get(cid)
                if old is None and cid not in self._damaged:  # new here: the log learns it
                    self._append_log(_RECORD.pack(_ADDED, *cid, cid.index + 1), sync=False)
                self._damaged.discard(cid)
                self._bytes += pending[1] - (old.length if old else 0)
                self._committed[cid] = ChunkMeta(*pending)
            meta = self._committed.get(cid)
        if meta is None or meta.version != version:
            raise NotFound(f"chunk {tuple(cid)} has no version {version} to commit")
        return meta

    def remove(
        self, chain: int, inode: int, from_index: int = 0, to_index: int | None = None
    ) -> int:
        end = to_index if to_index is not None else _NO_END
        with self._lock:
            doomed = {
                k
                for k in (*self._committed, *self._pending)
                if k.chain == chain and k.inode == inode and from_index <= k.index < end
            }
            doomed |= {
                k
                for k in self._damaged
                if k.chain == chain and k.inode == inode and from_index <= k.index < end
            }
            if doomed:  # recorded (and synced) before any file goes: see the module doc
                record = _RECORD.pack(_REMOVED, chain, inode, from_index, end)
                self._append_log(record, sync=True)
            for k in doomed:
                self._damaged.discard(k)
                gone = self._committed.pop(k, None)
                self._bytes -= gone.length if gone else 0
                self._pending.pop(k, None)
                path = self._path(k)
                path.unlink(missing_ok=True)
                path.with_name(path.name + ".p").unlink(missing_ok=True)
        return len(doomed)

    def list_chain(self, chain: int) -> dict[ChunkId, ChunkMeta]:
        with self._lock:
            return {k: v for k, v in self._committed.items() if k.chain == chain}

    def usage(self) -> tuple[int, int]:
        with self._lock:
            return len(self._committed), self._bytes
