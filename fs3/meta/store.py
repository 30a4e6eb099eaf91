"""The metadata store interface: inodes, directory entries and garbage, in transactions.

The namespace logic (:mod:`fs3.meta.namespace`) runs each operation as one transaction over
these primitives, so a backend only supplies storage and isolation. :class:`MemoryMetaStore`
is the reference; :mod:`fs3.meta.sqlite` is the default on disk.
"""

from __future__ import annotations

import copy
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fs3.types import DIRECTORY, Inode

ROOT_ID = 1


@dataclass(frozen=True)
class Garbage:
    """Chunks ``from_index`` onwards of ``inode`` on each of ``chains`` await deletion."""

    inode: int
    from_index: int
    chains: tuple[int, ...]


def root_inode(now: float) -> Inode:
    return Inode(ROOT_ID, DIRECTORY, 0o755, 0, now, now, ROOT_ID)


class MetaTxn(ABC):
    """One transaction. Every read sees the writes made earlier in the same transaction."""

    @abstractmethod
    def get_inode(self, inode_id: int) -> Inode | None:
        """The inode, or None when it does not exist."""

    @abstractmethod
    def put_inode(self, inode: Inode) -> None:
        """Inserts or replaces the inode with ``inode.id``."""

    @abstractmethod
    def delete_inode(self, inode_id: int) -> None:
        """Removes the inode; absent is not an error."""

    @abstractmethod
    def lookup(self, parent: int, name: str) -> int | None:
        """The child inode id named ``name`` in directory ``parent``, or None."""

    @abstractmethod
    def link(self, parent: int, name: str, child: int) -> None:
        """Inserts or replaces the entry ``name`` in ``parent``."""

    @abstractmethod
    def unlink(self, parent: int, name: str) -> None:
        """Removes the entry; absent is not an error."""

    @abstractmethod
    def children(self, parent: int, limit: int | None = None) -> list[tuple[str, int]]:
        """Entries of ``parent`` sorted by name, at most ``limit`` of them."""

    @abstractmethod
    def new_inode_id(self) -> int:
        """An id never handed out before by this store."""

    @abstractmethod
    def add_garbage(self, garbage: Garbage) -> None:
        """Queues chunks for deletion by the collector."""

    @abstractmethod
    def garbage(self, limit: int) -> list[tuple[int, Garbage]]:
        """Up to ``limit`` queued items with their queue ids, oldest first."""

    @abstractmethod
    def drop_garbage(self, garbage_id: int) -> None:
        """Removes a queued item once its chunks are gone."""


class MetaStore(ABC):
    """A transactional store holding the namespace; safe to use from many threads."""

    @abstractmethod
    def transaction(self) -> Iterator[MetaTxn]:
        """Context manager: commits on normal exit, rolls back when the block raises.

        Transactions are serialisable: concurrent ones behave as if run one at a time.
        """

    @abstractmethod
    def close(self) -> None:
        """Releases connections and files; the store is unusable afterwards."""


class MemoryMetaStore(MetaStore):
    """Reference store in dicts; one lock serialises transactions, a snapshot undoes them."""

    def __init__(self, now: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._inodes: dict[int, Inode] = {ROOT_ID: root_inode(now)}
        self._dentries: dict[int, dict[str, int]] = {ROOT_ID: {}}
        self._garbage: dict[int, Garbage] = {}
        self._next = [ROOT_ID + 1, 1]  # next inode id, next garbage id

    @contextmanager
    def transaction(self) -> Iterator[MetaTxn]:
        with self._lock:
            saved = copy.deepcopy((self._inodes, self._dentries, self._garbage, self._next))
            try:
                yield _MemoryTxn(self)
            except BaseException:
                self._inodes, self._dentries, self._garbage, self._next = saved
                raise

    def close(self) -> None:
        """Nothing to release: the data lives only in this object."""


class _MemoryTxn(MetaTxn):
    def __init__(self, store: MemoryMetaStore) -> None:
        self.s = store

    def get_inode(self, inode_id: int) -> Inode | None:
        return self.s._inodes.get(inode_id)

    def put_inode(self, inode: Inode) -> None:
        self.s._inodes[inode.id] = inode

    def delete_inode(self, inode_id: int) -> None:
        self.s._inodes.pop(inode_id, None)
        self.s._dentries.pop(inode_id, None)

    def lookup(self, parent: int, name: str) -> int | None:
        return self.s._dentries.get(parent, {}).get(name)

    def link(self, parent: int, name: str, child: int) -> None:
        self.s._dentries.setdefault(parent, {})[name] = child

    def unlink(self, parent: int, name: str) -> None:
        self.s._dentries.get(parent, {}).pop(name, None)

    def children(self, parent: int, limit: int | None = None) -> list[tuple[str, int]]:
        return sorted(self.s._dentries.get(parent, {}).items())[:limit]

    def new_inode_id(self) -> int:
        self.s._next[0] += 1
        return self.s._next[0] - 1

    def add_garbage(self, garbage: Garbage) -> None:
        self.s._next[1] += 1
        self.s._garbage[self.s._next[1] - 1] = garbage

    def garbage(self, limit: int) -> list[tuple[int, Garbage]]:
        return sorted(self.s._garbage.items())[:limit]

    def drop_garbage(self, garbage_id: int) -> None:
        self.s._garbage.pop(garbage_id, None)
