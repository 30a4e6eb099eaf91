"""Where mgmtd keeps the routing table, and the lease row that makes one mgmtd the primary.

Every mgmtd process of a cluster opens the same store (a SQLite file on one machine, a
PostgreSQL database across machines). They campaign for one lease row; the holder is the
primary, and every table it saves is fenced by that lease: the save and the check that the
lease is still the saver's run in one transaction, so a primary that lost its lease (paused,
cut off) can never overwrite what its successor wrote.

Isolation: every write transaction first locks the lease row (``SELECT ... FOR UPDATE`` on
PostgreSQL at its default READ COMMITTED; SQLite's ``BEGIN IMMEDIATE`` locks the file), so
writers queue on that one row and none can fail a serialisation check. mgmtd writes a few
times per second at most; row locking costs it nothing and needs no retry loop.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from fs3.db import (
    LEASE_TABLE,
    POSTGRES,
    SQLITE,
    Lease,
    check_lease,
    connect_postgres,
    enter_wal_mode,
    is_postgres,
    postgres_error,
    redact,
    release_lease,
    take_lease,
)
from fs3.errors import Fs3Error, Unavailable
from fs3.types import Chain, ChainMember, RoutingTable, TargetInfo

PRIMARY_LEASE = "mgmtd-primary"


def not_primary(holder: str, lease: Lease) -> Unavailable:
    """The error a non-primary gives: retryable, its ``path`` the primary's address (the
    mgmtd client goes there next) or None when no primary is known."""
    where = f"the primary is at {lease.address}" if lease.remaining_s > 0 else "no primary yet"
    return Unavailable(
        f"mgmtd {holder} is not the primary; {where}",
        lease.address if lease.remaining_s > 0 else None,
    )


class MgmtdStore(ABC):
    """The routing table and the primary lease, shared by a cluster's mgmtd processes."""

    @abstractmethod
    def campaign(self, holder: str, address: str, ttl_s: float) -> Lease:
        """Takes the primary lease for ``holder`` (reachable at ``address``) if it is free,
        ran out or is ``holder``'s already, renewing it for ``ttl_s`` seconds; returns the
        lease as it stands afterwards. Raises Unavailable when the store is unreachable."""

    @abstractmethod
    def resign(self, holder: str) -> None:
        """Ends ``holder``'s lease now, so a standby takes over at its next campaign."""

    @abstractmethod
    def load(self) -> RoutingTable | None:
        """The last saved table, or None before the first save."""

    @abstractmethod
    def save(self, holder: str, table: RoutingTable) -> None:
        """Stores ``table`` if ``holder`` still holds a current lease.

        Raises:
            Unavailable: ``holder`` is not the primary (``path``: the primary's address), or
                the store is unreachable.
        """

    @abstractmethod
    def close(self) -> None:
        """Releases connections; the store is unusable afterwards."""


class MemoryMgmtdStore(MgmtdStore):
    """Reference store for tests: one process, a clock of the caller's choosing."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._lease = ("", "", 0.0)  # holder, address, expiry
        self._table: RoutingTable | None = None

    def _current(self) -> Lease:
        holder, address, expires = self._lease
        return Lease(PRIMARY_LEASE, holder, address, expires - self._clock())

    def campaign(self, holder: str, address: str, ttl_s: float) -> Lease:
        with self._lock:
            lease = self._current()
            if lease.holder == holder or lease.remaining_s <= 0:
                self._lease = (holder, address, self._clock() + ttl_s)
            return self._current()

    def resign(self, holder: str) -> None:
        with self._lock:
            if self._lease[0] == holder:
                self._lease = (holder, self._lease[1], 0.0)

    def load(self) -> RoutingTable | None:
        with self._lock:
            return self._table

    def save(self, holder: str, table: RoutingTable) -> None:
        with self._lock:
            lease = self._current()
            if lease.holder != holder or lease.remaining_s <= 0:
                raise not_primary(holder, lease)
            self._table = table

    def close(self) -> None:
        """Nothing to release."""


_STATE_TABLE = """CREATE TABLE IF NOT EXISTS mgmtd_state (
    id INTEGER PRIMARY KEY, version BIGINT NOT NULL, routing TEXT NOT NULL)"""
_SCHEMA_LOCK = 0x0F53_3A9D  # pg_advisory_xact_lock key for creating the tables


class SqlMgmtdStore(MgmtdStore):
    """The store in a SQLite file or a PostgreSQL database (``db`` is a path or a URL);
    one connection, used under a lock (mgmtd's writes are few and small).

    Raises:
        Unavailable: the database cannot be reached.
    """

    def __init__(self, db: str | os.PathLike[str]) -> None:
        self.db = os.fspath(db)
        self._pg = is_postgres(self.db)
        self._dialect = POSTGRES if self._pg else SQLITE
        self._lock = threading.Lock()
        self._conn: Any = None
        with self._txn() as cur:
            if self._pg:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            cur.execute(LEASE_TABLE)
            cur.execute(_STATE_TABLE)

    def _connect(self) -> Any:
        if self._pg:
            return connect_postgres(self.db)
        conn = sqlite3.connect(self.db, isolation_level=None, timeout=30.0, check_same_thread=False)
        enter_wal_mode(conn)
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    @contextmanager
    def _txn(self) -> Iterator[Any]:
        with self._lock:
            if self._conn is None:
                self._conn = self._connect()
            conn = self._conn
            try:
                if not self._pg:
                    conn.execute("BEGIN IMMEDIATE")
                cur = conn.cursor()
                yield cur
                if self._pg:
                    conn.commit()
                else:
                    conn.execute("COMMIT")
            except Fs3Error:
                self._rollback()
                raise
            except Exception as err:
                self._rollback()
                raise self._error(err) from None

    def _rollback(self) -> None:
        try:
            self._conn.rollback() if self._pg else self._conn.execute("ROLLBACK")
        except Exception:  # noqa: BLE001 - a broken connection: open a new one next time
            self._conn.close()
            self._conn = None

    def _error(self, err: Exception) -> Exception:
        if self._pg:
            translated = postgres_error(err, self.db)
            if translated is not err:
                self._conn.close()
                self._conn = None
                return translated
            return err
        if isinstance(err, sqlite3.OperationalError):
            return Unavailable(f"mgmtd state in {self.db}: {err}")
        return err

    def campaign(self, holder: str, address: str, ttl_s: float) -> Lease:
        with self._txn() as cur:
            return take_lease(cur, self._dialect, PRIMARY_LEASE, holder, address, ttl_s)

    def resign(self, holder: str) -> None:
        with self._txn() as cur:
            release_lease(cur, self._dialect, PRIMARY_LEASE, holder)

    def load(self) -> RoutingTable | None:
        with self._txn() as cur:
            cur.execute("SELECT routing FROM mgmtd_state WHERE id=1")
            row = cur.fetchone()
        return table_from_json(row[0]) if row else None

    def save(self, holder: str, table: RoutingTable) -> None:
        q = self._dialect.sql
        with self._txn() as cur:
            lease = check_lease(cur, self._dialect, PRIMARY_LEASE, holder)
            if lease.holder != holder or lease.remaining_s <= 0:
                raise not_primary(holder, lease)
            cur.execute(
                q(
                    "INSERT INTO mgmtd_state VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE "
                    "SET version=excluded.version, routing=excluded.routing"
                ),
                (table.version, table_to_json(table)),
            )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"SqlMgmtdStore({redact(self.db)!r})"


def open_mgmtd_store(db: str | os.PathLike[str]) -> MgmtdStore:
    """The store a ``--db`` value names: a ``postgresql://`` URL or a SQLite file path."""
    return SqlMgmtdStore(db)


def table_to_json(t: RoutingTable) -> str:
    return json.dumps(
        {
            "version": t.version,
            "meta_addresses": list(t.meta_addresses),
            "targets": [dataclasses.asdict(i) for i in t.targets.values()],
            "chains": {
                str(c): [[m.target_id, m.state] for m in ch.members] for c, ch in t.chains.items()
            },
        }
    )


def table_from_json(text: str) -> RoutingTable:
    data = json.loads(text)
    metas = tuple(data["meta_addresses"])
    return RoutingTable(
        version=data["version"],
        targets={i["target_id"]: TargetInfo(**i) for i in data["targets"]},
        chains={
            int(c): Chain(int(c), tuple(ChainMember(t, s) for t, s in members))
            for c, members in data["chains"].items()
        },
        meta_address=metas[0] if metas else "",
        meta_addresses=metas,
    )
