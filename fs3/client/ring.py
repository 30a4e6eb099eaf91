"""A submit/complete ring for many small reads in flight, in the spirit of 3FS's USRBIO.

A data loader that wants thousands of random samples a second cannot afford a round trip
per sample, nor a copy per sample into its own tensors. The ring owns one preallocated,
shared buffer (an anonymous ``mmap``: hand it to ``numpy.frombuffer`` or
``torch.frombuffer`` without a copy) cut into equal slots. :meth:`ReadRing.submit` queues a
read into a free slot and returns the slot at once; a dispatcher thread sends what has been
submitted meanwhile as a round of batches, one per storage target
(:meth:`ChunkIO.read_many`), with at most ``batches_in_flight`` rounds outstanding, so reads
submitted while those are out travel together in the next ones. :meth:`ReadRing.complete`
returns finished reads; each one's bytes lie in its slot of :attr:`ReadRing.buffer` until
the next call of :meth:`ReadRing.complete` frees the slot (freed slots are reused oldest
first).

Reads keep the semantics of :meth:`FS3File.read`: holes read as zeros, a read past the end
of the file is cut there, and a failure (no such file, no permission, every replica bad)
is that slot's error, not the others'. A path is opened once per ring (its capability
renewed as any open file's), so the ring reads files as they were when first submitted.
"""

from __future__ import annotations

import mmap
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fs3.client.chunks import ChunkPiece, PieceResult
from fs3.client.ranges import clamp, pieces_of
from fs3.errors import Fs3Error, Fs3TimeoutError, InvalidArgument, IsADirectory
from fs3.types import FILE, Inode

if TYPE_CHECKING:
    from fs3.client.filesystem import FS3File, FS3FileSystem


@dataclass(frozen=True)
class Completion:
    """A finished read: its ``slot`` and the bytes read into it, or its ``error``."""

    slot: int
    length: int
    """Bytes read into the slot (0 for a read at or past the end of the file)."""
    error: Fs3Error | None = None


@dataclass
class _Read:
    """A submitted read: where its bytes go, and its pieces not answered yet."""

    slot: int
    length: int
    remaining: int
    error: Fs3Error | None = None


class ReadRing:
    """Slots of one shared buffer, reads submitted into them and completed in batches.

    Args:
        fs: the file system whose files are read.
        slots: reads in flight (submitted and not yet returned by :meth:`complete`).
        slot_bytes: the largest read; slot ``s`` is ``buffer[s * slot_bytes :][:slot_bytes]``.
        batches_in_flight: rounds of batches (each round: the reads submitted since the
            last, one batch per target) outstanding at once.

    Raises:
        InvalidArgument: a size below 1.
    """

    def __init__(
        self,
        fs: FS3FileSystem,
        slots: int = 128,
        slot_bytes: int = 64 * 1024,
        batches_in_flight: int = 8,
    ) -> None:
        if min(slots, slot_bytes, batches_in_flight) < 1:
            raise InvalidArgument(
                f"a ring needs slots, slot_bytes and batches_in_flight >= 1, got "
                f"{slots}, {slot_bytes}, {batches_in_flight}"
            )
        self.fs = fs
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.buffer = mmap.mmap(-1, slots * slot_bytes)
        """The shared buffer every slot's bytes land in."""
        self._view = memoryview(self.buffer)
        self._files: dict[str, Inode | Fs3Error] = {}
        self._free = deque(range(slots))
        self._pending: list[tuple[_Read, list[ChunkPiece]]] = []
        self._done: deque[Completion] = deque()
        self._taken: list[int] = []  # slots complete() returned last: freed by its next call
        self._running = 0  # submitted, not completed yet
        self._closing = False
        self._cond = threading.Condition()
        self._room = threading.Semaphore(batches_in_flight)
        self._workers = ThreadPoolExecutor(batches_in_flight, "fs3-ring")
        self._dispatcher = threading.Thread(target=self._dispatch, name="fs3-ring", daemon=True)
        self._dispatcher.start()

    def __enter__(self) -> ReadRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def data(self, completion: Completion) -> memoryview:
        """The bytes ``completion`` read: a view of its slot in :attr:`buffer`, no copy."""
        start = completion.slot * self.slot_bytes
        return self._view[start : start + completion.length]

    def submit(
        self, file: str | FS3File, offset: int, length: int, timeout: float | None = None
    ) -> int:
        """Queues a read of ``length`` bytes at ``offset`` of ``file`` (a path, or a file
        open for reading); returns its slot. A full ring waits for a free slot: up to
        ``timeout`` (for a thread whose slots another thread reaps), or with None while
        reads are in flight.

        Raises:
            InvalidArgument: ``length`` over ``slot_bytes`` or negative, a negative offset.
            Fs3Error: the ring is closed, or (``timeout`` None) full with nothing in flight:
                every slot holds a completion, and only :meth:`complete` frees them.
            Fs3TimeoutError: no slot came free within ``timeout``.
        """
        if not 0 <= length <= self.slot_bytes or offset < 0:
            raise InvalidArgument(
                f"ring read of {length} bytes at {offset}: at most slot_bytes "
                f"({self.slot_bytes}) at an offset >= 0"
            )
        path, inode = self._resolve(file)
        with self._cond:
            # A slot frees only when complete() takes a completion: without a timeout, and
            # with nothing in flight, only another thread could end the wait. Say so.
            ready = self._cond.wait_for(
                lambda: self._free or self._closing or (timeout is None and not self._running),
                timeout,
            )
            if self._closing:
                raise Fs3Error("the read ring is closed")
            if not ready:
                raise Fs3TimeoutError(f"no read ring slot came free within {timeout:g}s")
            if not self._free:
                raise Fs3Error(
                    f"read ring full: all {self.slots} slots hold completions; call complete()"
                )
            slot = self._free.popleft()
            self._running += 1
            if isinstance(inode, Fs3Error):
                self._finish(_Read(slot, 0, 0, inode))
                return slot
            lo, hi = clamp(offset, offset + length, inode.length)
            pieces = pieces_of(path, inode, lo, hi)
            read = _Read(slot, hi - lo, len(pieces))
            if not pieces:
                self._finish(read)
            else:
                self._pending.append((read, pieces))
                self._cond.notify_all()
        return slot

    def complete(self, min_completions: int = 1, timeout: float | None = None) -> list[Completion]:
        """Waits until ``min_completions`` reads finished (at most as many as are in
        flight) or ``timeout`` passed, and returns every finished read. Their bytes stay in
        their slots until the next call of this method, which frees those slots (as an
        io_uring consumer advances its completion queue once it has read the entries)."""
        with self._cond:
            self._free.extend(self._taken)
            self._taken = []
            self._cond.notify_all()
            need = min(min_completions, self._running + len(self._done))
            self._cond.wait_for(lambda: len(self._done) >= need, timeout)
            out = list(self._done)
            self._done.clear()
            self._taken = [c.slot for c in out]
        return out

    def close(self, cancel: bool = False) -> None:
        """Stops the ring: waits for the reads in flight, or with ``cancel`` completes those
        not yet sent with an error at once (batches already sent are waited for). Their
        completions can still be taken by :meth:`complete`."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            if cancel:
                for read, _ in self._pending:
                    read.error = Fs3Error("read cancelled: the ring was closed")
                    self._finish(read)
                self._pending = []
            self._cond.notify_all()
        self._dispatcher.join()
        self._workers.shutdown(wait=True)

    # -- inside --------------------------------------------------------------------------
    def _resolve(self, file: str | FS3File) -> tuple[str, Inode | Fs3Error]:
        if not isinstance(file, str):
            return file.path, file.inode
        path = self.fs._strip_protocol(file)
        if path not in self._files:  # opened once: a meta round trip per file, not per read
            try:
                inode: Inode | Fs3Error = self.fs.meta.open(path)
                if inode.kind != FILE:
                    inode = IsADirectory("not a file", path)
            except Fs3Error as err:
                inode = err
            self._files[path] = inode
        return path, self._files[path]

    def _finish(self, read: _Read) -> None:
        """Posts ``read``'s completion; the caller holds the condition."""
        self._running -= 1
        length = 0 if read.error is not None else read.length
        self._done.append(Completion(read.slot, length, read.error))
        self._cond.notify_all()

    def _dispatch(self) -> None:
        """Sends what was submitted, in rounds, until the ring closes and nothing is left
        to send: a round is every read submitted since the last one, read by
        :meth:`ChunkIO.read_many` (one batch per target, all sent from one thread); while
        ``batches_in_flight`` rounds are out, new submissions gather for the next."""
        while True:
            self._room.acquire()
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closing)
                if not self._pending:
                    return
                taken, self._pending = self._pending, []
            pieces: list[ChunkPiece] = []
            owners: list[tuple[_Read, int]] = []  # per piece: its read, its place in the slot
            for read, parts in taken:
                at = read.slot * self.slot_bytes
                for piece in parts:
                    pieces.append(piece)
                    owners.append((read, at))
                    at += piece.length
            self._workers.submit(self._run, pieces, owners)

    def _run(self, pieces: list[ChunkPiece], owners: list[tuple[_Read, int]]) -> None:
        try:
            # Big pieces go to the file system's batch threads, not to this ring's: a round
            # must not wait for a thread that rounds fill.
            results = self.fs.chunks.read_many(pieces, self.fs.batch_executor)
        except Exception as err:  # noqa: BLE001 - a bug must not leave the slots hanging
            failure = err if isinstance(err, Fs3Error) else Fs3Error(f"read failed: {err!r}")
            results = [failure] * len(pieces)
        finally:
            self._room.release()
        self._answer(pieces, owners, results)

    def _answer(
        self,
        pieces: list[ChunkPiece],
        owners: list[tuple[_Read, int]],
        results: list[PieceResult],
    ) -> None:
        """Copies each piece's bytes into its slot (holes as zeros) and completes the reads
        whose last piece this was."""
        for piece, (_, at), got in zip(pieces, owners, results, strict=True):
            if not isinstance(got, Fs3Error):
                n = len(got)
                self._view[at : at + n] = got
                self._view[at + n : at + piece.length] = bytes(piece.length - n)
        with self._cond:
            for (read, _), got in zip(owners, results, strict=True):
                if isinstance(got, Fs3Error) and read.error is None:
                    read.error = got
                read.remaining -= 1
                if read.remaining == 0:
                    self._finish(read)
