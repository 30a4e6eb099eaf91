"""Random reads of the mount gathered into batches: many readers, few round trips.

A reader that issues reads in parallel (threads doing ``pread``, O_DIRECT readers, a data
loader's workers) sends the mount many small random reads at once. Each used to cost a
worker thread hop and a round trip of its own, all in one process whose Python runs one
thread at a time, so eight readers were hardly faster than one. Here the trio loop queues
them, and a pump sends what has queued in one :meth:`fs3.client.chunks.ChunkIO.read_many`
(one batch per storage target), up to ``batches`` such calls in flight, each in one worker
thread; reads that arrive meanwhile go in the next. A lone reader pays what it paid before:
its read is a single one, no batch.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

import trio

from fs3.client.chunks import ChunkIO, ChunkPiece, PieceResult
from fs3.client.ranges import joined, pieces_of
from fs3.errors import Fs3Error
from fs3.types import Inode

Data = bytes | memoryview


class _Read:
    """One queued read: its pieces, and its bytes or error once answered."""

    def __init__(self, pieces: list[ChunkPiece]) -> None:
        self.pieces = pieces
        self.done = trio.Event()
        self.result: bytes | Fs3Error = b""


class ReadBatcher:
    """Gathers the mount's random reads into batches; used from the trio loop only.

    Args:
        chunks: the client's chunk I/O.
        executor: where each batch's pieces run (:meth:`ChunkIO.read_many`).
        batches: :meth:`ChunkIO.read_many` calls in flight at once.
    """

    def __init__(self, chunks: ChunkIO, executor: Executor, batches: int) -> None:
        self._chunks = chunks
        self._executor = executor
        self._room = trio.Semaphore(batches)
        self._queue: list[_Read] = []
        self._queued = trio.Event()
        self._pump_started = False
        self._running = 0  # reads between read() and their answer

    async def read(
        self, inode: Inode, start: int, end: int, alone: Callable[[], Awaitable[Data]]
    ) -> Data:
        """Bytes ``[start, end)`` of ``inode`` (within its length), holes as zeros; with
        no other read of this batcher running, ``alone()``'s (a single read, which takes
        the zero-copy local path where it can: a batch has nothing to share).

        Raises:
            Fs3Error: what a single read of it raises (DataLost, a timeout, ...).
        """
        if not self._running:
            self._running += 1
            try:
                return await alone()
            finally:
                self._running -= 1
        self._running += 1
        try:
            return await self._batched(inode, start, end)
        finally:
            self._running -= 1

    async def _batched(self, inode: Inode, start: int, end: int) -> bytes:
        if not self._pump_started:  # the loop runs by now: the pump lives as long as it
            trio.lowlevel.spawn_system_task(self._pump)
            self._pump_started = True
        read = _Read(pieces_of(f"inode {inode.id}", inode, start, end))
        self._queue.append(read)
        self._queued.set()
        await read.done.wait()
        if isinstance(read.result, Fs3Error):
            raise read.result
        return read.result

    async def _pump(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                await self._queued.wait()
                # Wait for room first: what queues meanwhile joins this batch.
                await self._room.acquire()
                taken, self._queue = self._queue, []
                self._queued = trio.Event()
                nursery.start_soon(self._send, taken)

    async def _send(self, reads: list[_Read]) -> None:
        pieces = [p for r in reads for p in r.pieces]
        try:
            results: list[PieceResult] = await trio.to_thread.run_sync(
                self._chunks.read_many, pieces, self._executor
            )
        except Exception as err:  # noqa: BLE001 - a bug must not end the mount: readers get EIO
            failure = err if isinstance(err, Fs3Error) else Fs3Error(f"batched read: {err!r}")
            results = [failure] * len(pieces)
        finally:
            self._room.release()
        at = 0
        for r in reads:
            r.result = joined(r.pieces, results[at : at + len(r.pieces)])
            at += len(r.pieces)
            r.done.set()
