"""The metadata store interface: inodes, directory entries and garbage, in transactions.

The namespace logic (:mod:`fs3.meta.namespace`) runs each operation as one transaction over
these primitives, so a backend only supplies storage and isolation. :class:`MemoryMetaStore`
is the reference; :mod:`fs3.meta.sqlite` is the default on disk and :mod:`fs3.meta.postgres`
the store that several meta servers share. :func:`MetaStore.run` is how operations use a
store: it runs one again when its transaction lost a conflict with a concurrent one.
"""

from __future__ import annotations

import copy
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TypeVar

from fs3.db import run_retrying
from fs3.types import DIRECTORY, Inode, User

T = TypeVar("T")

ROOT_ID = 1
_MAX_DEPTH = 1 << 16  # a parent loop would be a bug; stop rather than spin
SCAN_PAGE = 1000
"""Entries per query of :meth:`MetaTxn.scan`: a walk holds one such page of a directory."""


@dataclass(frozen=True)
class Garbage:
    """Chunks ``from_index`` onwards of ``inode`` on each of ``chains`` await deletion."""

    inode: int
    from_index: int
    chains: tuple[int, ...]


def root_inode(now: float) -> Inode:
    return Inode(ROOT_ID, DIRECTORY, 0o755, 0, now, now, ROOT_ID, nlink=2)


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
    def names(self, child: int, limit: int | None = None) -> list[tuple[int, str]]:
        """(parent, name) of the entries naming inode ``child``, sorted, at most ``limit``
        (a file's hard links; backends index entries by child for it)."""

    def lookup_inode(self, parent: int, name: str) -> Inode | None:
        """The inode entry ``name`` of ``parent`` names, or None (also when that inode is
        gone). A backend with round trips answers it in one query; this default takes two."""
        child = self.lookup(parent, name)
        return self.get_inode(child) if child is not None else None

    def entries(
        self, parent: int, after: str = "", limit: int | None = None
    ) -> list[tuple[str, Inode]]:
        """One page of ``parent``: its entries whose names sort after ``after`` (code-point
        order), sorted by name, at most ``limit`` (None: all), with their inodes (entries
        whose inode is gone are left out). A backend with round trips answers it in one
        query over its (parent, name) key; this default filters :meth:`children`."""
        out: list[tuple[str, Inode]] = []
        for name, child in self.children(parent):
            if limit is not None and len(out) >= limit:
                break
            if name > after and (inode := self.get_inode(child)) is not None:
                out.append((name, inode))
        return out

    def scan(self, parent: int, page: int = SCAN_PAGE) -> Iterator[tuple[str, Inode]]:
        """Every entry of ``parent`` with its inode, sorted by name, read ``page`` entries
        at a time: a walk of a huge directory never holds it whole. Entries the caller
        removes behind the cursor do not disturb it."""
        after = ""
        while True:
            found = self.entries(parent, after, page)
            yield from found
            if len(found) < page:
                return
            after = found[-1][0]

    def ancestors(self, inode_id: int) -> list[Inode]:
        """The inode and its ancestors up to the root, nearest first (shorter when one is
        missing). A backend with round trips answers it in one query; this default walks
        ``get_inode``."""
        out: list[Inode] = []
        while (inode := self.get_inode(inode_id)) is not None:
            out.append(inode)
            if inode.id == ROOT_ID or len(out) > _MAX_DEPTH:
                break
            inode_id = inode.parent
        return out

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

    @abstractmethod
    def take_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Takes or renews lease ``name`` for ``holder`` for ``ttl_s`` seconds unless another
        holder's lease is still current; True when ``holder`` holds it afterwards.

        Meta servers sharing a store use it to pick one garbage collector. Time is the
        store's clock, so servers on hosts whose clocks disagree still agree.
        """

    # -- users (fs3.meta.users): kept with the namespace, so every meta server sees them --
    @abstractmethod
    def user(self, name: str) -> User | None:
        """The user named ``name``, or None."""

    @abstractmethod
    def user_by_token(self, token_hash: str) -> User | None:
        """The user whose token has SHA-256 ``token_hash``, or None."""

    @abstractmethod
    def users(self) -> list[User]:
        """Every user, by name."""

    @abstractmethod
    def put_user(self, user: User) -> None:
        """Inserts or replaces the user named ``user.name``."""

    @abstractmethod
    def delete_user(self, name: str) -> None:
        """Removes the user; absent is not an error."""


class MetaStore(ABC):
    """A transactional store holding the namespace; safe to use from many threads."""

    retries: int = 0
    """Transactions run again after losing a conflict, since the store was opened."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[MetaTxn]:
        """Context manager: commits on normal exit, rolls back when the block raises.

        Transactions are serialisable: concurrent ones behave as if run one at a time. A
        backend that detects conflicts instead of blocking raises
        :class:`fs3.db.TxnConflict` from a statement or the commit; use :meth:`run`.
        """

    def run(self, fn: Callable[[MetaTxn], T]) -> T:
        """Runs ``fn(txn)`` in one transaction and returns its result. When the transaction
        loses a conflict it is rolled back and ``fn`` runs again from the start, so ``fn``
        must change nothing outside the transaction.

        Raises what ``fn`` raises, or ``Unavailable`` when conflicts persist for
        :data:`fs3.db.CONFLICT_RETRY_S`.
        """
        return run_retrying(self.transaction, fn, self._count_retry)

    def _count_retry(self) -> None:
        self.retries += 1  # a statistic: a lost update under threads only undercounts

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
        self._leases: dict[str, tuple[str, float]] = {}  # name -> holder, monotonic expiry
        self._users: dict[str, User] = {}

    @contextmanager
    def transaction(self) -> Iterator[MetaTxn]:
        with self._lock:
            saved = copy.deepcopy(
                (self._inodes, self._dentries, self._garbage, self._next, self._leases, self._users)
            )
            try:
                yield _MemoryTxn(self)
            except BaseException:
                (
                    self._inodes,
                    self._dentries,
                    self._garbage,
                    self._next,
                    self._leases,
                    self._users,
                ) = saved
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

    def names(self, child: int, limit: int | None = None) -> list[tuple[int, str]]:
        found = [
            (parent, name)
            for parent, entries in self.s._dentries.items()
            for name, c in entries.items()
            if c == child
        ]
        return sorted(found)[:limit]

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

    def take_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        now = time.monotonic()
        current, expires = self.s._leases.get(name, ("", 0.0))
        if current == holder or expires <= now:
            self.s._leases[name] = (holder, now + ttl_s)
            return True
        return False

    def user(self, name: str) -> User | None:
        return self.s._users.get(name)

    def user_by_token(self, token_hash: str) -> User | None:
        return next((u for u in self.s._users.values() if u.token_hash == token_hash), None)

    def users(self) -> list[User]:
        return sorted(self.s._users.values(), key=lambda u: u.name)

    def put_user(self, user: User) -> None:
        self.s._users[user.name] = user

    def delete_user(self, name: str) -> None:
        self.s._users.pop(name, None)
