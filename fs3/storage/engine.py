"""The chunk engine interface: versioned, checksummed chunks, one pending version at a time.

CRAQ needs exactly two versions per chunk on a replica: the committed one that reads see,
and at most one pending one that a write in flight has staged. ``write`` stages, ``commit``
publishes. :class:`MemoryChunkEngine` is the reference; :mod:`fs3.storage.local` keeps chunks
in files.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence

from fs3.errors import ChecksumMismatch, InvalidArgument, NotFound
from fs3.types import ChunkId, ChunkMeta
from fs3.wire.checksum import crc32c


def patch(base: bytes | memoryview, offset: int, data: bytes | memoryview, truncate: bool) -> bytes:
    """The content after writing ``data`` at ``offset`` over ``base``; gaps read as zeros."""
    if truncate and offset == 0:
        return bytes(data)
    head = bytes(base[:offset]).ljust(offset, b"\x00")
    tail = b"" if truncate else bytes(base[offset + len(data) :])
    return head + bytes(data) + tail


class ChunkEngine(ABC):
    """Stores chunks of one storage target. Thread-safe; callers serialise writes per chunk."""

    @abstractmethod
    def stat(self, cid: ChunkId) -> tuple[ChunkMeta | None, int | None]:
        """Returns (committed meta or None when absent, pending version or None)."""

    @abstractmethod
    def read(self, cid: ChunkId, offset: int, length: int) -> bytes | memoryview:
        """Returns up to ``length`` committed bytes from ``offset`` (short at chunk end).

        An absent chunk reads as ``b""`` (a hole). Raises ``ChecksumMismatch`` when the stored
        bytes do not match their CRC32C, or the chunk is :meth:`lost`; never returns
        unverified data. The result may be a
        view of a buffer the engine reuses for this thread's next read: use it (send it,
        copy it) before reading again.
        """

    def read_checked(
        self, cid: ChunkId, offset: int, length: int
    ) -> tuple[bytes | memoryview, int]:
        """:meth:`read`, with the CRC32C of what it returns."""
        data = self.read(cid, offset, length)
        return data, crc32c(data)

    def read_pieces(
        self, cid: ChunkId, ranges: Sequence[tuple[int, int]]
    ) -> list[tuple[bytes, int] | ChecksumMismatch]:
        """Each ``(offset, length)`` of ``ranges`` as :meth:`read_checked` reads it: per range
        its bytes (a copy) and their CRC32C, or the ChecksumMismatch its read raised (a bad
        block fails only the ranges on it). Engines may share work among the ranges (the
        file engine opens the chunk once)."""
        out: list[tuple[bytes, int] | ChecksumMismatch] = []
        for offset, length in ranges:
            try:
                data, crc = self.read_checked(cid, offset, length)
            except ChecksumMismatch as err:
                out.append(err)
                continue
            out.append((bytes(data), crc))
        return out

    def lost(self, cid: ChunkId) -> bool:
        """Whether the chunk was committed here but nothing of it can be read now (its stored
        copy vanished or is damaged beyond indexing): ``stat`` shows no committed version,
        yet it is no hole, and writes must not patch it as if it were all zeros. Engines
        whose chunks cannot vanish alone (the memory one) never have lost chunks."""
        return False

    @abstractmethod
    def write(
        self, cid: ChunkId, version: int, data: bytes | memoryview, offset: int, truncate: bool
    ) -> None:
        """Stages ``version`` = committed content patched with ``data`` at ``offset``.

        With ``truncate`` the chunk ends right after ``data``. Replaces any earlier pending
        version. Raises ``InvalidArgument`` when ``version`` is not above the committed one.
        """

    @abstractmethod
    def commit(self, cid: ChunkId, version: int) -> ChunkMeta:
        """Publishes pending ``version``; a no-op when it is already committed.

        Raises ``NotFound`` when neither pending nor committed holds ``version``.
        """

    @abstractmethod
    def remove(
        self, chain: int, inode: int, from_index: int = 0, to_index: int | None = None
    ) -> int:
        """Deletes chunks ``from_index`` up to (excluding) ``to_index``, or to the end when
        None, of ``inode`` on ``chain``, pending ones too; returns how many went."""

    def replace(self, cid: ChunkId, version: int, content: bytes | memoryview) -> ChunkMeta:
        """Installs ``content`` as committed ``version`` whatever was there: resync's copy of a
        predecessor's chunk, which may carry a lower version than a stale local one."""
        self.remove(cid.chain, cid.inode, cid.index, cid.index + 1)
        self.write(cid, version, content, 0, True)
        return self.commit(cid, version)

    @abstractmethod
    def list_chain(self, chain: int) -> dict[ChunkId, ChunkMeta]:
        """Committed chunks of one chain, for resynchronising a replica."""

    @abstractmethod
    def usage(self) -> tuple[int, int]:
        """(committed chunks, their bytes) on this target, without scanning anything."""

    def open_committed(self, cid: ChunkId) -> int | None:
        """A read-only file descriptor of the committed version's stored file (the format of
        :mod:`fs3.storage.local`), or None when the chunk is absent; the caller closes it.

        The file's bytes must not change while it is open, whatever is written, committed or
        removed meanwhile: a client on this machine reads and verifies it itself. Engines
        that keep chunks in no such file raise NotImplementedError, and clients then read
        over the socket.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps chunks in no local file")


class MemoryChunkEngine(ChunkEngine):
    """Reference engine in a dict; bytes are checksummed so corruption tests apply to it too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._committed: dict[ChunkId, tuple[int, bytes, int]] = {}
        self._pending: dict[ChunkId, tuple[int, bytes, int]] = {}

    def stat(self, cid: ChunkId) -> tuple[ChunkMeta | None, int | None]:
        with self._lock:
            c = self._committed.get(cid)
            p = self._pending.get(cid)
        return (ChunkMeta(c[0], len(c[1])) if c else None, p[0] if p else None)

    def read(self, cid: ChunkId, offset: int, length: int) -> bytes:
        with self._lock:
            c = self._committed.get(cid)
        if c is None:
            return b""
        if crc32c(c[1]) != c[2]:
            raise ChecksumMismatch(f"chunk {tuple(cid)} fails its CRC32C check", None)
        return c[1][offset : offset + length]

    def write(
        self, cid: ChunkId, version: int, data: bytes | memoryview, offset: int, truncate: bool
    ) -> None:
        with self._lock:
            c = self._committed.get(cid)
            if c is not None and version <= c[0]:
                raise InvalidArgument(f"chunk {tuple(cid)} version {version} <= committed {c[0]}")
            content = patch(c[1] if c else b"", offset, data, truncate)
            self._pending[cid] = (version, content, crc32c(content))

    def commit(self, cid: ChunkId, version: int) -> ChunkMeta:
        with self._lock:
            p = self._pending.get(cid)
            if p is not None and p[0] == version:
                self._committed[cid] = self._pending.pop(cid)
            c = self._committed.get(cid)
            if c is None or c[0] != version:
                raise NotFound(f"chunk {tuple(cid)} has no version {version} to commit")
            return ChunkMeta(c[0], len(c[1]))

    def remove(
        self, chain: int, inode: int, from_index: int = 0, to_index: int | None = None
    ) -> int:
        end = to_index if to_index is not None else 1 << 62
        with self._lock:
            doomed = [
                k
                for k in (*self._committed, *self._pending)
                if k.chain == chain and k.inode == inode and from_index <= k.index < end
            ]
            for k in doomed:
                self._committed.pop(k, None)
                self._pending.pop(k, None)
            return len(set(doomed))

    def list_chain(self, chain: int) -> dict[ChunkId, ChunkMeta]:
        with self._lock:
            items = self._committed.items()
            return {k: ChunkMeta(v[0], len(v[1])) for k, v in items if k.chain == chain}

    def usage(self) -> tuple[int, int]:
        with self._lock:
            return len(self._committed), sum(len(v[1]) for v in self._committed.values())
