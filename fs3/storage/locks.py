"""Per-chunk locks that exist only while someone holds or waits for them.

A storage target serialises writes, replication and resync of one chunk with a lock of
that chunk's own (stripes shared across chains running in opposite directions deadlock,
see :mod:`fs3.storage.target`). Kept forever, one lock per chunk ever written would grow
without bound on a long-lived target; each entry here counts its users and goes away with
the last one.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterator
from contextlib import contextmanager


class ChunkLocks:
    def __init__(self) -> None:
        self._entries: dict[Hashable, tuple[threading.Lock, list[int]]] = {}
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, key: Hashable) -> Iterator[None]:
        """Holds ``key``'s lock for the ``with`` body; other holders of ``key`` wait."""
        with self._guard:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = (threading.Lock(), [0])
            entry[1][0] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._guard:
                entry[1][0] -= 1
                if entry[1][0] == 0:
                    del self._entries[key]

    def __len__(self) -> int:
        """Keys held or waited for right now."""
        with self._guard:
            return len(self._entries)
