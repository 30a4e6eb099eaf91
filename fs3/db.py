"""SQL plumbing shared by the meta and mgmtd stores: one ``--db`` value picks SQLite or
PostgreSQL, conflicts are told apart from failures and retried, and lease rows elect one
holder among processes that share a database.

Both stores speak plain DB-API (``sqlite3``, psycopg 3) rather than an ORM: metadata
operations are a handful of keyed statements each, and the per-statement cost is the
operation's cost. Queries are written with ``?`` placeholders; :class:`Dialect` adapts them.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from fs3.errors import ConfigError, Fs3Error, Unavailable
from fs3.retry import Backoff, retry

log = logging.getLogger("fs3.db")
T = TypeVar("T")

POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")

CONFLICT_RETRY_S = 10.0
"""How long a transaction that keeps losing conflicts is retried before the caller gets
``Unavailable`` (which the fs3 client retries in turn). Conflicts resolve in milliseconds;
ten seconds of them means a hot spot, and the error names it."""


class TxnConflict(Fs3Error):
    """A transaction lost a serialisation or deadlock conflict with a concurrent one and was
    rolled back; running it again from the start may succeed. Stores raise it and
    :func:`run_retrying` catches it, so it never leaves the process."""

    retryable = True


def is_postgres(db: str) -> bool:
    """Whether a ``--db`` value names a PostgreSQL database rather than a SQLite file."""
    return db.startswith(POSTGRES_SCHEMES)


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"


@dataclass(frozen=True)
class Dialect:
    """What differs between the two SQL backends in the statements we issue."""

    name: str
    param: str
    now: str
    """SQL expression: seconds since the epoch by the database's clock. Leases use it, so
    processes on hosts whose clocks disagree still agree on when a lease ran out."""
    for_update: str
    """Suffix that locks the rows a SELECT read until the transaction ends."""

    def sql(self, text: str) -> str:
        return text.replace("?", self.param)


SQLITE = Dialect("sqlite", "?", "((julianday('now') - 2440587.5) * 86400.0)", "")
POSTGRES = Dialect(
    "postgresql", "%s", "extract(epoch from clock_timestamp())::float8", " FOR UPDATE"
)


def connect_postgres(url: str, **settings: Any) -> Any:
    """A psycopg 3 connection to ``url`` (not in autocommit mode).

    Raises:
        ConfigError: psycopg, which fireflyer's ``postgres`` extra installs, is missing.
        Unavailable: the server cannot be reached or refused the login; names the URL.
    """
    try:
        import psycopg
    except ModuleNotFoundError as err:
        if err.name != "psycopg":
            raise
        raise ConfigError(
            f"{redact(url)} needs psycopg 3, which fireflyer's postgres extra installs: "
            "pip install 'fireflyer[postgres]'"
        ) from None
    if url.startswith("postgresql+psycopg://"):
        url = "postgresql://" + url[len("postgresql+psycopg://") :]
    try:
        # 5 s: a PostgreSQL server on a LAN accepts in milliseconds; a dead one should fail
        # the operation (the client retries) rather than hang it.
        return psycopg.connect(url, connect_timeout=5, **settings)
    except psycopg.Error as err:
        raise Unavailable(f"cannot connect to PostgreSQL at {redact(url)}: {err}") from None


def postgres_error(err: Exception, url: str) -> Exception:
    """The fs3 error for a psycopg error: TxnConflict for a serialisation failure or a
    deadlock (SQLSTATE 40001, 40P01), Unavailable for a lost connection, else ``err``."""
    import psycopg

    if isinstance(err, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected):
        return TxnConflict(f"transaction conflict: {err}".strip())
    if isinstance(err, psycopg.OperationalError | psycopg.InterfaceError):
        return Unavailable(f"PostgreSQL at {redact(url)} failed: {err}".strip())
    return err


CONFLICT_BACKOFF = Backoff(first_s=0.001, max_s=0.1)
"""Pauses between conflict retries and WAL-switch retries: a rival's transaction or switch
takes milliseconds, so the first retry comes within 1 ms and none waits over 100 ms."""


def run_retrying(
    transaction: Callable[[], AbstractContextManager[Any]],
    fn: Callable[[Any], T],
    on_retry: Callable[[], None] = lambda: None,
    retry_s: float = CONFLICT_RETRY_S,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Runs ``fn(txn)`` in ``transaction()``; when it (or its commit) loses a conflict, runs
    it again from the start after a short randomised pause (:data:`CONFLICT_BACKOFF`),
    calling ``on_retry()`` before each pause.

    ``fn`` must have no effects outside the transaction, since it may run several times.

    Raises:
        Unavailable: conflicts kept coming for ``retry_s`` seconds.
        whatever ``fn`` raises, after the transaction was rolled back.
    """

    def attempt(_: int) -> T:
        with transaction() as txn:
            return fn(txn)

    return retry(
        attempt,
        budget_s=retry_s,
        backoff=CONFLICT_BACKOFF,
        retryable=lambda err: isinstance(err, TxnConflict),
        give_up=lambda err: Unavailable(
            f"metadata transaction kept conflicting for {retry_s:g}s (a hot spot: many "
            f"writers on one directory or file); last: {err}"
        ),
        before_pause=lambda _: on_retry(),
        sleep=sleep,
    )


def enter_wal_mode(
    conn: Any, timeout_s: float = 30.0, sleep: Callable[[float], None] = time.sleep
) -> None:
    """Puts the SQLite database behind ``conn`` (a connection or cursor) in WAL mode.

    Switching a fresh file to WAL takes an exclusive lock and SQLite answers "database is
    locked" at once, without its busy handler, when another process is switching the same
    file; two servers started together on one new database hit that. Retried until
    ``timeout_s``, when the last "locked" error is raised; a database already in WAL answers
    at once.
    """
    retry(
        lambda _: conn.execute("PRAGMA journal_mode=WAL"),
        budget_s=timeout_s,
        backoff=CONFLICT_BACKOFF,
        retryable=lambda err: isinstance(err, sqlite3.OperationalError) and "locked" in str(err),
        sleep=sleep,
    )


# -- leases --------------------------------------------------------------------------------
LEASE_TABLE = """CREATE TABLE IF NOT EXISTS leases (
    name TEXT PRIMARY KEY, holder TEXT NOT NULL, address TEXT NOT NULL,
    expires DOUBLE PRECISION NOT NULL)"""


@dataclass(frozen=True)
class Lease:
    """A lease row as it stands: who holds it, where to reach them, and seconds left by the
    database clock (<= 0 once it ran out)."""

    name: str
    holder: str
    address: str
    remaining_s: float


def take_lease(
    cur: Any, dialect: Dialect, name: str, holder: str, address: str, ttl_s: float
) -> Lease:
    """Within the caller's transaction: takes lease ``name`` for ``holder`` when it is free,
    ran out or is already ``holder``'s, for ``ttl_s`` seconds from the database's now.

    Returns the lease as it stands afterwards (another holder's when that one is current).
    The row is locked (PostgreSQL) or the database is (SQLite) until the transaction ends, so
    two candidates never both win.
    """
    q = dialect.sql
    cur.execute(
        q("INSERT INTO leases VALUES (?, '', '', 0) ON CONFLICT (name) DO NOTHING"), (name,)
    )
    cur.execute(
        q(
            f"SELECT holder, address, expires, {dialect.now} FROM leases WHERE name=?"
            f"{dialect.for_update}"
        ),
        (name,),
    )
    current, current_address, expires, now = cur.fetchone()
    if current == holder or expires <= now:
        cur.execute(
            q("UPDATE leases SET holder=?, address=?, expires=? WHERE name=?"),
            (holder, address, now + ttl_s, name),
        )
        if current != holder:
            log.info("lease %s: %s takes over from %s", name, holder, current or "nobody")
        return Lease(name, holder, address, ttl_s)
    return Lease(name, current, current_address, expires - now)


def check_lease(cur: Any, dialect: Dialect, name: str, holder: str) -> Lease:
    """Within the caller's transaction: the lease ``name``, locked until the transaction
    ends, so a write made after ``holder`` saw it current cannot race a takeover."""
    q = dialect.sql
    cur.execute(
        q(
            f"SELECT holder, address, expires - {dialect.now} FROM leases WHERE name=?"
            f"{dialect.for_update}"
        ),
        (name,),
    )
    row = cur.fetchone()
    return Lease(name, *row) if row else Lease(name, "", "", 0.0)


def release_lease(cur: Any, dialect: Dialect, name: str, holder: str) -> None:
    """Within the caller's transaction: gives lease ``name`` up if ``holder`` has it, so a
    standby need not wait for it to run out."""
    cur.execute(
        dialect.sql("UPDATE leases SET expires=0 WHERE name=? AND holder=?"), (name, holder)
    )
