"""The metadata store several meta servers share: PostgreSQL, with row locks for the
namespace operations and SERIALIZABLE transactions for the rest.

Two kinds of transaction share the tables:

- The namespace operations (:mod:`fs3.meta.pg_functions`) are one statement each, a call of
  a server-side function, and run at READ COMMITTED with row locks: each locks the rows it
  changes or decides on (``SELECT ... FOR UPDATE``), which waits for a concurrent holder and
  then returns the latest committed version, and decides on what the lock returned. Under
  SERIALIZABLE every create in one directory aborted the others that had read that
  directory's inode (each updates its mtime); locks make them wait their turn (~100-200 us,
  no client round trip inside) instead. The protocol is in :mod:`fs3.meta.pg_functions`.
- The operations that run in Python over :class:`_PgTxn` (trash, users, fsck), written
  against a serialisable store and reading before they write without saying what they
  depend on, run in real SERIALIZABLE transactions (``BEGIN ISOLATION LEVEL SERIALIZABLE``).

How they meet on one row: a serialisable transaction that updates or deletes a row which a
concurrent transaction (of either kind) updated and committed after its snapshot gets
SQLSTATE 40001 and runs again; a READ COMMITTED lock or update of a row that a serialisable
transaction holds waits for it and then sees its committed version. Every change of a
directory's entries also updates that directory's inode (mtime), in both kinds, so neither
loses the other's update. SSI's read tracking covers only serialisable transactions.

Any transaction that loses a conflict (SQLSTATE 40001, also raised by a function that finds
the rows it locked changed under it, or 40P01 for a deadlock) is run again whole by
:meth:`MetaStore.run` / :meth:`PostgresMetaStore.call`.

SSI tracks reads with predicate locks on index pages; a sequential scan locks a whole table
and makes every concurrent writer conflict. Every query here is keyed on a primary key, so
sessions turn sequential scans off (the planner picks them for tiny tables). Inode ids come
from a sequence, which no transaction conflicts on (a rolled-back create leaves a gap).

Round trips: connections run in autocommit with READ COMMITTED as the session's default, so
one statement is one transaction. :meth:`PostgresMetaStore.call` sends one prepared
statement and is the whole operation; :meth:`PostgresMetaStore.transaction` opens a real
SERIALIZABLE transaction for the operations that run in Python over :class:`_PgTxn`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from fs3.db import (
    LEASE_TABLE,
    POSTGRES,
    connect_postgres,
    postgres_error,
    redact,
    run_retrying,
    take_lease,
)
from fs3.errors import Unavailable
from fs3.meta import pg_functions
from fs3.meta.pg_prepared import PreparedStatements
from fs3.meta.sqlite import (
    ADDED_COLUMNS,
    BACKFILL,
    COLUMNS,
    DENTRIES_BY_CHILD,
    USER_COLUMNS,
    USERS_TABLE,
    inode_to_row,
    row_to_inode,
    row_to_user,
    user_to_row,
)
from fs3.meta.store import ROOT_ID, Garbage, MetaStore, MetaTxn, root_inode
from fs3.types import Inode, User

# COLLATE "C": entries sort by code point, as Python's sorted() does for the other stores,
# whatever locale the database was created with.
_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS inodes (
        id BIGINT PRIMARY KEY, kind TEXT NOT NULL, mode INTEGER NOT NULL, length BIGINT NOT NULL,
        mtime DOUBLE PRECISION NOT NULL, ctime DOUBLE PRECISION NOT NULL, parent BIGINT NOT NULL,
        chunk_size INTEGER NOT NULL, chains TEXT NOT NULL, seed INTEGER NOT NULL,
        target TEXT NOT NULL, atime DOUBLE PRECISION NOT NULL DEFAULT 0, q_max_bytes BIGINT,
        q_max_inodes BIGINT, q_used_bytes BIGINT, q_used_inodes BIGINT)""",
    """CREATE TABLE IF NOT EXISTS dentries (
        parent BIGINT, name TEXT COLLATE "C", child BIGINT NOT NULL, PRIMARY KEY (parent, name))""",
    DENTRIES_BY_CHILD,
    # The directories with a quota: an operation charging quotas asks it first, and finds
    # it empty in most namespaces (fs3.meta.pg_functions, fs3_quota_dirs).
    "CREATE INDEX IF NOT EXISTS inodes_with_quota ON inodes (id) WHERE q_max_bytes IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS garbage (
        id BIGSERIAL PRIMARY KEY, inode BIGINT NOT NULL, from_index BIGINT NOT NULL,
        chains TEXT NOT NULL)""",
    "CREATE SEQUENCE IF NOT EXISTS inode_ids START 2",
    # Gates, tables only ever locked (fs3.meta.pg_functions): renames that move a directory
    # to another parent, and a set_quota starting a quota, hold theirs EXCLUSIVE.
    "CREATE TABLE IF NOT EXISTS fs3_rename_gate ()",
    "CREATE TABLE IF NOT EXISTS fs3_quota_gate ()",
    LEASE_TABLE,
    USERS_TABLE,
]
_GATES = "LOCK TABLE fs3_rename_gate, fs3_quota_gate IN ROW SHARE MODE"
_SCHEMA_LOCK = 0x0F53_3E7A  # pg_advisory_xact_lock key: servers starting at once take turns
_UPDATE = ", ".join(f"{c}=EXCLUDED.{c}" for c in COLUMNS.split(", ")[1:])
_PUT_INODE = (
    f"INSERT INTO inodes ({COLUMNS}) VALUES ({', '.join(['%s'] * len(COLUMNS.split(', ')))}) "
    f"ON CONFLICT (id) DO UPDATE SET {_UPDATE}"
)


class PostgresMetaStore(MetaStore):
    """Metadata in the PostgreSQL database at ``url``; connections are pooled.

    Args:
        url: ``postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE``.
        max_connections: transactions in flight at once (``meta.db_connections``); more
            wait (up to ``wait_s``).
        wait_s: how long a transaction waits for a free connection before Unavailable.

    Raises:
        Unavailable: the database cannot be reached.
    """

    def __init__(self, url: str, max_connections: int = 16, wait_s: float = 10.0) -> None:
        self.url = url
        self._wait_s = wait_s
        self._idle: list[Any] = []
        self._statements: dict[Any, PreparedStatements] = {}  # connection: what call() ran
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        conn = connect_postgres(url)
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in _SCHEMA:
                    cur.execute(statement)
                # ALTER TABLE locks the table even when it changes nothing: only when needed.
                cur.execute(
                    "SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'inodes' AND table_schema = current_schema()"
                )
                have = {row[0] for row in cur.fetchall()}
                for column, (_, pg_type) in ADDED_COLUMNS.items():
                    if column not in have:
                        cur.execute(f"ALTER TABLE inodes ADD COLUMN {column} {pg_type}")
                        if column in BACKFILL:
                            cur.execute(BACKFILL[column])
                cur.execute(
                    _PUT_INODE.replace("DO UPDATE SET " + _UPDATE, "DO NOTHING"),
                    inode_to_row(root_inode(_now(cur))),
                )
                pg_functions.install(cur)
        except Exception as err:
            conn.close()
            raise postgres_error(err, url) from None
        self._prepare(conn)
        self._idle.append(conn)

    def _prepare(self, conn: Any) -> None:
        from psycopg import IsolationLevel

        conn.commit()
        # Autocommit: a statement is a transaction, at the session's default isolation (the
        # row-locked functions); the BEGIN of transaction() names SERIALIZABLE.
        conn.autocommit = True
        conn.isolation_level = IsolationLevel.SERIALIZABLE
        with conn.cursor() as cur:
            cur.execute("SET default_transaction_isolation = 'read committed'")
            cur.execute("SET enable_seqscan = off")
            # Every query here is keyed the same way whatever its parameters: plan it once.
            # By default a parameterised query (each in the plpgsql functions) is planned
            # again on every run while its custom plans look cheaper than the generic one,
            # which for these small queries costs more than running them.
            cur.execute("SET plan_cache_mode = force_generic_plan")
            # A generic plan cannot see a listing's LIMIT and would page a huge directory with
            # parallel workers, whose start costs a page milliseconds: a metadata operation
            # reads a handful of rows, so none is worth a worker.
            cur.execute("SET max_parallel_workers_per_gather = 0")
            # call() sends its parameters as UTF-8 text (fs3.meta.pg_prepared).
            cur.execute("SET client_encoding = 'UTF8'")

    def _take(self) -> Any:
        if not self._slots.acquire(timeout=self._wait_s):
            raise Unavailable(f"all connections to {redact(self.url)} busy for {self._wait_s:g}s")
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            try:
                conn = connect_postgres(self.url)
                self._prepare(conn)
            except BaseException:
                self._slots.release()
                raise
        return conn

    def _give(self, conn: Any, reusable: bool) -> None:
        if reusable:
            with self._lock:
                self._idle.append(conn)
        else:
            conn.close()
            self._statements.pop(conn, None)
        self._slots.release()

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection for the block, given back afterwards (closed when broken)."""
        import psycopg

        conn = self._take()
        try:
            yield conn
        except psycopg.Error as err:
            raise store_error(err, self.url) from None
        finally:
            self._give(conn, _idle(conn))

    @contextmanager
    def transaction(self) -> Iterator[MetaTxn]:
        """A real SERIALIZABLE transaction (BEGIN ISOLATION LEVEL SERIALIZABLE ... COMMIT), for
        operations in Python."""
        with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            # First, before the snapshot (LOCK takes none): no directory moves to another
            # parent, and no quota starts, between the snapshot and the commit, since the
            # row-locked functions doing those are not seen by SSI.
            cur.execute(_GATES)
            yield _PgTxn(cur, self.url)

    def _call_once(self, sql: str, params: tuple) -> list[tuple]:
        """One try of :meth:`call`, on a pooled connection's own prepared statements (kept
        with it)."""
        import psycopg

        conn = self._take()
        reusable = False
        try:
            statements = self._statements.get(conn)
            if statements is None:
                statements = self._statements[conn] = PreparedStatements(conn)
            rows = statements.run(sql, params)
            reusable = True  # autocommit: the statement was its whole transaction
            return rows
        except psycopg.Error as err:
            reusable = _idle(conn)
            raise store_error(err, self.url) from None
        finally:
            self._give(conn, reusable)

    def call(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Runs one statement that returns rows, prepared on its connection, as a READ
        COMMITTED transaction of its own and returns its rows; it runs again whole when it
        loses a conflict (:meth:`run`).

        Raises:
            the fs3 error a namespace function raised (:mod:`fs3.meta.pg_functions`);
            Unavailable: the database failed, or conflicts persisted.
        """
        return run_retrying(nullcontext, lambda _: self._call_once(sql, params), self._count_retry)

    def close(self) -> None:
        with self._lock:
            for conn in self._idle:
                conn.close()
            self._idle.clear()
            self._statements.clear()


GARBAGE_QUERY = "SELECT id, inode, from_index, chains FROM garbage ORDER BY id LIMIT %s"
"""The oldest queued garbage, ``limit`` items (rows for :func:`garbage_from_rows`)."""


def garbage_from_rows(rows: list[tuple]) -> list[tuple[int, Garbage]]:
    """(queue id, item) of each row :data:`GARBAGE_QUERY` returned."""
    return [
        (gid, Garbage(inode, start, tuple(int(c) for c in chains.split(",") if c)))
        for gid, inode, start, chains in rows
    ]


def _idle(conn: Any) -> bool:
    """Reusable: not broken, and no transaction or query left half done."""
    from psycopg.pq import TransactionStatus

    return not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE


def store_error(err: Exception, url: str) -> Exception:
    """The error to raise for a psycopg error: the fs3 error a namespace function raised,
    else what :func:`fs3.db.postgres_error` makes of it (TxnConflict, Unavailable)."""
    return pg_functions.namespace_error(err) or postgres_error(err, url)


def _now(cur: Any) -> float:
    cur.execute(f"SELECT {POSTGRES.now}")
    return cur.fetchone()[0]


_PREFIXED = ", ".join(f"i.{c}" for c in COLUMNS.split(", "))
# An inode and its ancestors, nearest first, in one round trip (quota charges by inode id).
_ANCESTORS = (
    f"WITH RECURSIVE up AS (SELECT {COLUMNS}, 0 AS depth FROM inodes WHERE id=%s "
    f"UNION ALL SELECT {_PREFIXED}, up.depth + 1 FROM inodes i JOIN up ON i.id = up.parent "
    f"WHERE up.id <> {ROOT_ID}) SELECT {COLUMNS} FROM up ORDER BY depth"
)


class _PgTxn(MetaTxn):
    """One transaction. Rows read are remembered until it ends: at SERIALIZABLE a second
    read of a row returns what the first did (or this transaction's own write, which the
    cache records too), so the cache only saves round trips. A rename resolves the same
    parents two or three times."""

    def __init__(self, cur: Any, url: str) -> None:
        self.cur = cur
        self.url = url
        self._inodes: dict[int, Inode | None] = {}
        self._entries: dict[tuple[int, str], int | None] = {}

    def _x(self, sql: str, params: tuple = ()) -> Any:
        """Runs one statement; a conflict raises TxnConflict at once, not at commit."""
        import psycopg

        try:
            return self.cur.execute(sql, params)
        except psycopg.Error as err:
            raise store_error(err, self.url) from None

    def get_inode(self, inode_id: int) -> Inode | None:
        if inode_id not in self._inodes:
            row = self._x(f"SELECT {COLUMNS} FROM inodes WHERE id=%s", (inode_id,)).fetchone()
            self._inodes[inode_id] = row_to_inode(row) if row else None
        return self._inodes[inode_id]

    def put_inode(self, inode: Inode) -> None:
        self._x(_PUT_INODE, inode_to_row(inode))
        self._inodes[inode.id] = inode

    def delete_inode(self, inode_id: int) -> None:
        self._x("DELETE FROM inodes WHERE id=%s", (inode_id,))
        self._inodes[inode_id] = None

    def lookup(self, parent: int, name: str) -> int | None:
        key = (parent, name)
        if key not in self._entries:
            row = self._x("SELECT child FROM dentries WHERE parent=%s AND name=%s", key).fetchone()
            self._entries[key] = row[0] if row else None
        return self._entries[key]

    def lookup_inode(self, parent: int, name: str) -> Inode | None:
        key = (parent, name)
        if key in self._entries:
            child = self._entries[key]
            return self.get_inode(child) if child is not None else None
        row = self._x(
            f"SELECT d.child, {_PREFIXED} FROM dentries d LEFT JOIN inodes i ON i.id = d.child "
            "WHERE d.parent=%s AND d.name=%s",
            key,
        ).fetchone()
        if row is None:
            self._entries[key] = None
            return None
        self._entries[key] = row[0]
        if row[0] not in self._inodes:
            self._inodes[row[0]] = row_to_inode(row[1:]) if row[1] is not None else None
        return self._inodes[row[0]]

    def entries(
        self, parent: int, after: str = "", limit: int | None = None
    ) -> list[tuple[str, Inode]]:
        rows = self._x(
            f"SELECT d.name, {_PREFIXED} FROM dentries d JOIN inodes i ON i.id = d.child "
            "WHERE d.parent=%s AND d.name > %s ORDER BY d.name LIMIT %s",
            (parent, after, limit),
        ).fetchall()
        return [(row[0], row_to_inode(row[1:])) for row in rows]

    def ancestors(self, inode_id: int) -> list[Inode]:
        out: list[Inode] = []
        while inode_id in self._inodes:  # what this transaction read or wrote wins
            inode = self._inodes[inode_id]
            if inode is None:
                return out
            out.append(inode)
            if inode.id == ROOT_ID:
                return out
            inode_id = inode.parent
        rows = self._x(_ANCESTORS, (inode_id,)).fetchall()
        for row in rows:
            inode = row_to_inode(row)
            inode = self._inodes.setdefault(inode.id, inode) or inode
            out.append(inode)
        return out

    def link(self, parent: int, name: str, child: int) -> None:
        self._x(
            "INSERT INTO dentries VALUES (%s,%s,%s) ON CONFLICT (parent, name) "
            "DO UPDATE SET child=EXCLUDED.child",
            (parent, name, child),
        )
        self._entries[(parent, name)] = child

    def unlink(self, parent: int, name: str) -> None:
        self._x("DELETE FROM dentries WHERE parent=%s AND name=%s", (parent, name))
        self._entries[(parent, name)] = None

    def children(self, parent: int, limit: int | None = None) -> list[tuple[str, int]]:
        rows = self._x(
            "SELECT name, child FROM dentries WHERE parent=%s ORDER BY name LIMIT %s",
            (parent, limit),
        ).fetchall()
        return [(name, child) for name, child in rows]

    def names(self, child: int, limit: int | None = None) -> list[tuple[int, str]]:
        rows = self._x(
            "SELECT parent, name FROM dentries WHERE child=%s ORDER BY parent, name LIMIT %s",
            (child, limit),
        ).fetchall()
        return [(parent, name) for parent, name in rows]

    def new_inode_id(self) -> int:
        return self._x("SELECT nextval('inode_ids')").fetchone()[0]

    def add_garbage(self, garbage: Garbage) -> None:
        self._x(
            "INSERT INTO garbage (inode, from_index, chains) VALUES (%s,%s,%s)",
            (garbage.inode, garbage.from_index, ",".join(map(str, garbage.chains))),
        )

    def garbage(self, limit: int) -> list[tuple[int, Garbage]]:
        return garbage_from_rows(self._x(GARBAGE_QUERY, (limit,)).fetchall())

    def drop_garbage(self, garbage_id: int) -> None:
        self._x("DELETE FROM garbage WHERE id=%s", (garbage_id,))

    def take_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        import psycopg

        try:
            return take_lease(self.cur, POSTGRES, name, holder, "", ttl_s).holder == holder
        except psycopg.Error as err:
            raise postgres_error(err, self.url) from None

    def user(self, name: str) -> User | None:
        row = self._x(f"SELECT {USER_COLUMNS} FROM users WHERE name=%s", (name,)).fetchone()
        return row_to_user(row) if row else None

    def user_by_token(self, token_hash: str) -> User | None:
        row = self._x(
            f"SELECT {USER_COLUMNS} FROM users WHERE token_hash=%s", (token_hash,)
        ).fetchone()
        return row_to_user(row) if row else None

    def users(self) -> list[User]:
        rows = self._x(f"SELECT {USER_COLUMNS} FROM users ORDER BY name").fetchall()
        return [row_to_user(row) for row in rows]

    def put_user(self, user: User) -> None:
        self._x(
            f"INSERT INTO users ({USER_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s) "
            "ON CONFLICT (name) DO UPDATE SET uid=EXCLUDED.uid, gid=EXCLUDED.gid, "
            "groups=EXCLUDED.groups, token_hash=EXCLUDED.token_hash, admin=EXCLUDED.admin, "
            "mount=EXCLUDED.mount",
            user_to_row(user),
        )

    def delete_user(self, name: str) -> None:
        self._x("DELETE FROM users WHERE name=%s", (name,))
