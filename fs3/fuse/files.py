"""One fs3 file open in the mount: write-behind and read-ahead over the client's ChunkIO.

Every file descriptor of one inode in this mount shares one :class:`OpenFile`, so a read
sees what any of them wrote. Writes are buffered and shipped a whole chunk at a time as
chunks fill, ``client.parallel`` chunks in flight, as :class:`fs3.FS3File` does; the length
reaches meta at flush (every ``close``), fsync and release, which is when other clients can
see the bytes (close-to-open). An error of a write shipped in the background comes back
from the next write, flush or fsync of the file, as with NFS.

Methods block (they wait for chunk transfers): the FUSE layer calls them in worker threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from concurrent.futures import Executor, Future, wait
from dataclasses import dataclass

from fs3.client import FS3FileSystem
from fs3.client.quota import LengthGuard
from fs3.errors import QuotaExceeded
from fs3.types import Inode


def set_file_length(fs: FS3FileSystem, inode: Inode, old_length: int, length: int) -> Inode:
    """Truncates (or extends) a file so that every byte past ``min(old, new)`` reads as zero.

    Chunks past that point are removed from the replicas before the new length is set,
    rather than left to meta's garbage collector, which would run later and could delete
    chunks written after the truncate (``open(O_TRUNC)`` followed by writes).
    """
    if old_length != length:
        fs.chunks.cut(inode.layout, inode.id, min(old_length, length))
    return fs.meta.set_length(inode.id, length)


RANDOM_READ_MAX = 128 * 1024
"""Largest read that counts as random access when it jumps (:meth:`OpenFile.random_span`):
the kernel's own read-ahead asks for more at a time."""


@dataclass
class Cursor:
    """Where one file handle's last read ended: read-ahead follows each handle on its own,
    so several readers of one file each stay sequential."""

    last_end: int = 0


class OpenFile:
    """The data path of one open file. ``size`` is its length as this mount knows it."""

    def __init__(self, fs: FS3FileSystem, inode: Inode, executor: Executor) -> None:
        self.fs = fs
        self.inode = inode
        self.size = inode.length
        self.handles = 0
        self.orphan: str | None = None
        """Where the file went when it was unlinked while open (removed at release)."""
        self._executor = executor  # write-behind
        # Reads on the client's pool, one thread per CPU: every byte is copied and CRC-checked
        # here, and 32 threads reading on 2 cores served 1.1 GB/s where 2 served 1.4.
        self._reads = fs.read_executor
        self._guard = LengthGuard(fs.meta, inode.id, f"inode {inode.id}", inode.length)
        self._cs = inode.layout.chunk_size
        self._parallel = fs.config.client.parallel
        self._ahead = fs.config.client.readahead_chunks
        self._lock = threading.Lock()
        self._dirty = False  # bytes or a length meta has not recorded yet
        self._error: BaseException | None = None
        self._start = 0  # file offset of the buffered bytes
        self._pieces: list[bytes | memoryview] = []
        self._buffered = 0
        self._inflight: deque[tuple[int, Future[None]]] = deque()
        # Whole chunks read ahead, least recently used first.
        self._cache: OrderedDict[int, Future[bytes | memoryview]] = OrderedDict()

    # -- writing -----------------------------------------------------------------------
    def write(self, offset: int, data: bytes, block: bool = True) -> int | None:
        """Buffers ``data`` at ``offset``, shipping the chunks it fills. With ``block``
        False it returns None, having done nothing, where it would have to wait (for the
        lock, for transfers in flight): the caller then retries in a worker thread."""
        if not self._lock.acquire(blocking=block):
            return None
        try:
            if not block and not self._quick_write(offset, len(data)):
                return None
            self._raise_background_error()
            if self._fills_chunk(offset, len(data)):  # chunks ship: a quota may object
                self._guard.check(offset + len(data))
            self._forget_cached(offset, offset + len(data))
            if self._buffered and offset != self._start + self._buffered:
                self._ship(final=True)
            if not self._buffered:
                self._start = offset
            self._pieces.append(data)
            self._buffered += len(data)
            self.size = max(self.size, offset + len(data))
            self._dirty = True
            if self._start % self._cs + self._buffered >= self._cs:
                self._ship(final=False)
        finally:
            self._lock.release()
        return len(data)

    def _fills_chunk(self, offset: int, length: int) -> bool:
        """Whether this write completes a chunk, which then ships."""
        start = self._start if self._buffered and offset == self._start + self._buffered else offset
        return (offset + length) // self._cs > start // self._cs

    def _quick_write(self, offset: int, length: int) -> bool:
        """Whether buffering this write needs no wait: it extends the buffered bytes, and
        the whole chunks it completes find room in flight and no earlier write to them (nor
        a question to meta about a quota)."""
        if self._error is not None:
            return False
        if self._fills_chunk(offset, length) and self._guard.needs_check(offset + length):
            return False
        if self._buffered and offset != self._start + self._buffered:
            return False
        start = self._start if self._buffered else offset
        total = start % self._cs + self._buffered + length
        if total < self._cs:
            return True
        while self._inflight and self._inflight[0][1].done():
            self._reap(self._inflight.popleft()[1])
        first, count = start // self._cs, total // self._cs
        busy = {index for index, _ in self._inflight}
        return len(self._inflight) + count <= self._parallel and not any(
            first + k in busy for k in range(count)
        )

    def _ship(self, final: bool) -> None:
        """Sends the buffered bytes: the whole chunks among them, or all when ``final``."""
        if not self._buffered:
            return
        joined = self._pieces[0] if len(self._pieces) == 1 else b"".join(self._pieces)
        data, pos, done = memoryview(joined), self._start, 0
        while done < len(data):
            index, within = divmod(pos, self._cs)
            n = min(self._cs - within, len(data) - done)
            if not final and within + n < self._cs:
                break
            self._submit(index, within, data[done : done + n])
            done += n
            pos += n
        rest = data[done:]
        self._pieces = [bytes(rest)] if rest else []
        self._start, self._buffered = pos, len(rest)

    def _submit(self, index: int, within: int, piece: memoryview) -> None:
        # Writes to one chunk must reach it in order: wait for an earlier one still in flight.
        earlier = [f for i, f in self._inflight if i == index]
        if earlier:
            wait(earlier)
        whole = within == 0 and len(piece) == self._cs  # replaces the chunk: no read of it
        layout, ino = self.inode.layout, self.inode.id
        future = self._executor.submit(
            self.fs.chunks.write, layout, ino, index, within, piece, whole
        )
        self._inflight.append((index, future))
        while self._inflight and (
            len(self._inflight) > self._parallel or self._inflight[0][1].done()
        ):
            self._reap(self._inflight.popleft()[1])

    def _reap(self, future: Future[None]) -> None:
        err = future.exception()
        if err is not None and self._error is None:
            self._error = err

    def _drain(self) -> None:
        self._ship(final=True)
        while self._inflight:
            self._reap(self._inflight.popleft()[1])

    def _raise_background_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def idle(self) -> bool:
        """True when a commit would have nothing to do (checked without waiting)."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            busy = self._dirty or self._buffered or self._inflight or self._error is not None
            return not busy
        finally:
            self._lock.release()

    def commit(self) -> Inode | None:
        """Ships everything buffered, waits for it, and records the length in meta.

        Returns the updated inode, or None when nothing changed. Raises the first error of
        a write shipped earlier, or QuotaExceeded when the length would pass a directory
        quota: the file then keeps the length meta has, the bytes past it are dropped.
        """
        with self._lock:
            self._drain()
            self._raise_background_error()
            if not self._dirty:
                return None
            try:
                self.inode = self.fs.meta.set_length(self.inode.id, self.size)
            except QuotaExceeded:
                self.fs.chunks.cut(self.inode.layout, self.inode.id, self.inode.length)
                self.size, self._dirty = self.inode.length, False
                self._cache.clear()
                raise
            self._dirty = False
            return self.inode

    def truncate(self, length: int) -> Inode:
        with self._lock:
            self._drain()
            self._raise_background_error()
            self._cache.clear()
            self.inode = set_file_length(self.fs, self.inode, self.size, length)
            self.size, self._dirty = length, False
            return self.inode

    # -- reading -----------------------------------------------------------------------
    def _forget_cached(self, start: int, end: int) -> None:
        for index in range(start // self._cs, (end - 1) // self._cs + 1):
            self._cache.pop(index, None)

    def _chunk(self, index: int, start: int, end: int) -> bytes | memoryview:
        # Mapped: the reply to the kernel copies from the chunk file's pages themselves.
        data = self.fs.chunks.read(
            self.inode.layout, self.inode.id, index, start, end - start, mapped=True
        )
        if len(data) < end - start:  # holes and short chunks read as zeros
            return bytes(data) + bytes(end - start - len(data))
        return data

    def random_span(self, cursor: Cursor, offset: int, size: int) -> tuple[int, int] | None:
        """``[offset, end)`` to read as a random access of ``cursor``, bypassing the
        read-ahead (:mod:`fs3.fuse.batched` batches these); None where :meth:`read` must
        serve it: nothing to read, a sequential read, bytes this mount still buffers, or
        the lock busy (not waited for).

        A read is random when it is small (:data:`RANDOM_READ_MAX`) and does not continue
        the handle's last one, even where it falls in a chunk read ahead: threads sharing a
        descriptor share its cursor, and each small read that looked sequential by
        :meth:`read`'s loose rule (the kernel's read-ahead arrives out of order) fetched
        whole chunks ahead.
        """
        if size > RANDOM_READ_MAX or offset == cursor.last_end:
            return None
        if not self._lock.acquire(blocking=False):
            return None
        try:
            end = min(offset + size, self.size)
            if self._buffered or self._inflight or end <= offset:
                return None
            cursor.last_end = end
            return offset, end
        finally:
            self._lock.release()

    def read(
        self, cursor: Cursor, offset: int, size: int, block: bool = True
    ) -> bytes | memoryview | None:
        """Up to ``size`` bytes at ``offset``, as a view of the chunk read where one chunk
        holds them all (pyfuse3 replies from any buffer: no copy). With ``block`` False it
        returns None where it would wait (for the lock, a transfer, a chunk not read yet)."""
        cs = self._cs
        if not self._lock.acquire(blocking=block):
            return None
        try:
            if self._buffered or self._inflight:  # read what this mount wrote
                if not block:
                    return None
                self._drain()
                self._raise_background_error()
            end = min(offset + size, self.size)
            if end <= offset:
                return b""
            first, last = offset // cs, (end - 1) // cs
            # Sequential, give or take the kernel's out-of-order read-ahead requests.
            sequential = first in self._cache or abs(offset - cursor.last_end) <= cs
            if not sequential and not block:
                return None
            cursor.last_end = end
            wanted: list[tuple[int, Future[bytes | memoryview]]] = []
            if sequential:
                chunks_total = -(-self.size // cs)
                for index in range(first, min(last + 1 + self._ahead, chunks_total)):
                    if index not in self._cache:
                        length = min(cs, self.size - index * cs)
                        self._cache[index] = self._reads.submit(self._chunk, index, 0, length)
                    self._cache.move_to_end(index)
                wanted = [(i, self._cache[i]) for i in range(first, last + 1)]
                while len(self._cache) > (self._ahead + 2) * max(1, self.handles):
                    self._cache.popitem(last=False)
                if not block and not all(f.done() for _, f in wanted):
                    return None
        finally:
            self._lock.release()
        if not wanted:  # random access: just the bytes asked for
            return self.read_span(offset, end)
        parts = []
        for index, future in wanted:
            try:
                data = future.result()
            except BaseException:
                with self._lock:
                    if self._cache.get(index) is future:
                        del self._cache[index]  # let the next read try again
                raise
            lo, hi = max(offset, index * cs) - index * cs, min(end, (index + 1) * cs) - index * cs
            parts.append(memoryview(data)[lo:hi])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_span(self, start: int, end: int) -> bytes | memoryview:
        """Bytes ``[start, end)`` (within the file), its chunks read in parallel, no
        read-ahead: a random access."""
        cs = self._cs
        spans = [
            (i, max(start, i * cs) - i * cs, min(end, (i + 1) * cs) - i * cs)
            for i in range(start // cs, (end - 1) // cs + 1)
        ]
        if len(spans) == 1:
            return self._chunk(*spans[0])
        futures = [self._reads.submit(self._chunk, *span) for span in spans]
        return b"".join(f.result() for f in futures)

    def close(self) -> None:
        """Drops read-ahead; the caller has committed."""
        with self._lock:
            self._cache.clear()
