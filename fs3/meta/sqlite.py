"""The default metadata store: one SQLite file in WAL mode, one transaction per operation.

WAL lets readers run beside the single writer; ``BEGIN IMMEDIATE`` takes the write lock up
front so two operations never interleave (serialisable, like FoundationDB in 3FS).
``synchronous=NORMAL`` survives a killed process; a power loss may drop the last commits.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fs3.db import LEASE_TABLE, SQLITE, enter_wal_mode, take_lease
from fs3.meta.store import Garbage, MetaStore, MetaTxn, root_inode
from fs3.types import Inode, Layout, Quota, User

# Shared with the PostgreSQL store: ``groups`` is comma-separated gids, like ``chains``.
USERS_TABLE = """CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, uid BIGINT NOT NULL, gid BIGINT NOT NULL, groups TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE, admin BOOLEAN NOT NULL, mount BOOLEAN NOT NULL)"""
USER_COLUMNS = "name, uid, gid, groups, token_hash, admin, mount"

# The names of an inode, for unlinking one of several hard links (MetaTxn.names).
DENTRIES_BY_CHILD = "CREATE INDEX IF NOT EXISTS dentries_child ON dentries (child)"

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS inodes (
    id INTEGER PRIMARY KEY, kind TEXT, mode INTEGER, length INTEGER, mtime REAL, ctime REAL,
    parent INTEGER, chunk_size INTEGER, chains TEXT, seed INTEGER, target TEXT,
    atime REAL NOT NULL DEFAULT 0, q_max_bytes INTEGER, q_max_inodes INTEGER,
    q_used_bytes INTEGER, q_used_inodes INTEGER)""",
    """CREATE TABLE IF NOT EXISTS dentries (
    parent INTEGER, name TEXT, child INTEGER, PRIMARY KEY (parent, name)) WITHOUT ROWID""",
    DENTRIES_BY_CHILD,
    """CREATE TABLE IF NOT EXISTS garbage (
    id INTEGER PRIMARY KEY AUTOINCREMENT, inode INTEGER, from_index INTEGER, chains TEXT)""",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER)",
    LEASE_TABLE,
    USERS_TABLE,
]

# The columns of an inode row, shared with the PostgreSQL store (fs3.meta.postgres). The
# quota columns are NULL on every inode but the directories that have a quota.
COLUMNS = (
    "id, kind, mode, length, mtime, ctime, parent, chunk_size, chains, seed, target, "
    "atime, q_max_bytes, q_max_inodes, q_used_bytes, q_used_inodes, uid, gid, nlink"
)
ADDED_COLUMNS = {
    "atime": ("REAL NOT NULL DEFAULT 0", "DOUBLE PRECISION NOT NULL DEFAULT 0"),
    **{
        c: ("INTEGER", "BIGINT")
        for c in ("q_max_bytes", "q_max_inodes", "q_used_bytes", "q_used_inodes")
    },
    # Inodes from before owners belong to root, as their files on the mount always did.
    **{c: ("INTEGER NOT NULL DEFAULT 0", "BIGINT NOT NULL DEFAULT 0") for c in ("uid", "gid")},
    "nlink": ("INTEGER NOT NULL DEFAULT 1", "INTEGER NOT NULL DEFAULT 1"),
}
"""Columns later than the first schema, with their SQLite and PostgreSQL types: a store
created before them gets them added when it is opened."""

BACKFILL = {
    # Before hard links every file had one name; a directory counts its subdirectories.
    "nlink": "UPDATE inodes SET nlink = 2 + (SELECT count(*) FROM dentries d JOIN inodes c "
    "ON c.id = d.child WHERE d.parent = inodes.id AND c.kind = 'directory') "
    "WHERE kind = 'directory'",
}
"""What an added column holds in the rows that existed before it, where its default is not
right: run, in the same transaction, right after the column is added."""


_PREFIXED = ", ".join(f"i.{c}" for c in COLUMNS.split(", "))
_PUT_INODE = (
    f"INSERT OR REPLACE INTO inodes ({COLUMNS}) VALUES ({','.join('?' * len(COLUMNS.split(', ')))})"
)


def inode_to_row(inode: Inode) -> tuple:
    lay = inode.layout
    chains = ",".join(map(str, lay.chains))
    q = inode.quota
    quota = (None,) * 4 if q is None else (q.max_bytes, q.max_inodes, q.used_bytes, q.used_inodes)
    return (
        inode.id,
        inode.kind,
        inode.mode,
        inode.length,
        inode.mtime,
        inode.ctime,
        inode.parent,
        lay.chunk_size,
        chains,
        lay.seed,
        inode.target,
        inode.atime,
        *quota,
        inode.uid,
        inode.gid,
        inode.nlink,
    )


def row_to_inode(row: tuple) -> Inode:
    id_, kind, mode, length, mtime, ctime, parent, chunk_size, chains, seed, target = row[:11]
    atime, max_bytes, max_inodes, used_bytes, used_inodes, uid, gid, nlink = row[11:19]
    chain_ids = tuple(int(c) for c in chains.split(",")) if chains else ()
    quota = None if max_bytes is None else Quota(max_bytes, max_inodes, used_bytes, used_inodes)
    return Inode(
        id_,
        kind,
        mode,
        length,
        mtime,
        ctime,
        parent,
        Layout(chunk_size, chain_ids, seed),
        target,
        atime,
        quota,
        uid,
        gid,
        nlink,
    )


def user_to_row(user: User) -> tuple:
    groups = ",".join(map(str, user.groups))
    return (user.name, user.uid, user.gid, groups, user.token_hash, user.admin, user.mount)


def row_to_user(row: tuple) -> User:
    name, uid, gid, groups, token_hash, admin, mount = row
    gids = tuple(int(g) for g in groups.split(",") if g)
    return User(name, uid, gid, gids, bool(admin), bool(mount), token_hash)


class SqliteMetaStore(MetaStore):
    """Metadata in ``path``; each thread uses its own connection to the shared file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._local = threading.local()
        self._all: dict[threading.Thread, sqlite3.Connection] = {}
        self._all_lock = threading.Lock()
        conn = self._conn()
        enter_wal_mode(conn)
        # Under the write lock: servers opening one database together create or upgrade it
        # once (statement by statement: executescript would commit first).
        with self.transaction() as txn:
            for statement in _SCHEMA:
                conn.execute(statement)
            have = {row[1] for row in conn.execute("PRAGMA table_info(inodes)")}
            for column, (sql_type, _) in ADDED_COLUMNS.items():
                if column not in have:
                    conn.execute(f"ALTER TABLE inodes ADD COLUMN {column} {sql_type}")
                    if column in BACKFILL:
                        conn.execute(BACKFILL[column])
            if txn.get_inode(1) is None:
                txn.put_inode(root_inode(time.time()))
                conn.execute("INSERT OR IGNORE INTO counters VALUES ('inode', 2)")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves; timeout waits on the lock.
            conn = sqlite3.connect(
                self.path, isolation_level=None, timeout=30.0, check_same_thread=False
            )
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            # Checkpoints fsync the database; at the default 1,000 WAL pages one came every ~300
            # creates and cost a third of the op time. 10,000 pages (40 MiB of WAL) cut that
            # tenfold with the same durability: commits themselves never fsync at NORMAL.
            conn.execute("PRAGMA wal_autocheckpoint=10000")
            self._local.conn = conn
            with self._all_lock:
                # The meta server runs a thread per client connection: close the connections
                # of threads that ended, or a long-lived server would pile them up.
                for thread in [t for t in self._all if not t.is_alive()]:
                    self._all.pop(thread).close()
                self._all[threading.current_thread()] = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[MetaTxn]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield _SqliteTxn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all.values():
                conn.close()
            self._all.clear()
        self._local = threading.local()


class _SqliteTxn(MetaTxn):
    """One transaction. It holds the write lock (``BEGIN IMMEDIATE``), so inodes it read
    cannot change under it: they are remembered until it ends, which saves the queries of
    reading a path's directories again (quota charges, touching a parent)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.c = conn
        self._inodes: dict[int, Inode | None] = {}

    def get_inode(self, inode_id: int) -> Inode | None:
        if inode_id not in self._inodes:
            row = self.c.execute(f"SELECT {COLUMNS} FROM inodes WHERE id=?", (inode_id,)).fetchone()
            self._inodes[inode_id] = row_to_inode(row) if row else None
        return self._inodes[inode_id]

    def put_inode(self, inode: Inode) -> None:
        self.c.execute(_PUT_INODE, inode_to_row(inode))
        self._inodes[inode.id] = inode

    def delete_inode(self, inode_id: int) -> None:
        self.c.execute("DELETE FROM inodes WHERE id=?", (inode_id,))
        self._inodes[inode_id] = None

    def lookup(self, parent: int, name: str) -> int | None:
        row = self.c.execute(
            "SELECT child FROM dentries WHERE parent=? AND name=?", (parent, name)
        ).fetchone()
        return row[0] if row else None

    def lookup_inode(self, parent: int, name: str) -> Inode | None:
        row = self.c.execute(
            f"SELECT {_PREFIXED} FROM dentries d JOIN inodes i ON i.id = d.child "
            "WHERE d.parent=? AND d.name=?",
            (parent, name),
        ).fetchone()
        if row is None:
            return None
        return self._inodes.setdefault(row[0], row_to_inode(row))

    def entries(
        self, parent: int, after: str = "", limit: int | None = None
    ) -> list[tuple[str, Inode]]:
        # A range of the (parent, name) key: a page costs its own size, wherever it starts.
        rows = self.c.execute(
            f"SELECT d.name, {_PREFIXED} FROM dentries d JOIN inodes i ON i.id = d.child "
            "WHERE d.parent=? AND d.name > ? ORDER BY d.name LIMIT ?",
            (parent, after, -1 if limit is None else limit),
        )
        return [(row[0], row_to_inode(row[1:])) for row in rows]

    def link(self, parent: int, name: str, child: int) -> None:
        self.c.execute("INSERT OR REPLACE INTO dentries VALUES (?,?,?)", (parent, name, child))

    def unlink(self, parent: int, name: str) -> None:
        self.c.execute("DELETE FROM dentries WHERE parent=? AND name=?", (parent, name))

    def children(self, parent: int, limit: int | None = None) -> list[tuple[str, int]]:
        rows = self.c.execute(
            "SELECT name, child FROM dentries WHERE parent=? ORDER BY name LIMIT ?",
            (parent, -1 if limit is None else limit),
        )
        return [(name, child) for name, child in rows]

    def names(self, child: int, limit: int | None = None) -> list[tuple[int, str]]:
        rows = self.c.execute(
            "SELECT parent, name FROM dentries WHERE child=? ORDER BY parent, name LIMIT ?",
            (child, -1 if limit is None else limit),
        )
        return [(parent, name) for parent, name in rows]

    def new_inode_id(self) -> int:
        (value,) = self.c.execute(
            "UPDATE counters SET value = value + 1 WHERE name='inode' RETURNING value - 1"
        ).fetchone()
        return value

    def add_garbage(self, garbage: Garbage) -> None:
        self.c.execute(
            "INSERT INTO garbage (inode, from_index, chains) VALUES (?,?,?)",
            (garbage.inode, garbage.from_index, ",".join(map(str, garbage.chains))),
        )

    def garbage(self, limit: int) -> list[tuple[int, Garbage]]:
        rows = self.c.execute(
            "SELECT id, inode, from_index, chains FROM garbage ORDER BY id LIMIT ?", (limit,)
        )
        return [
            (gid, Garbage(inode, start, tuple(int(c) for c in chains.split(",") if c)))
            for gid, inode, start, chains in rows
        ]

    def drop_garbage(self, garbage_id: int) -> None:
        self.c.execute("DELETE FROM garbage WHERE id=?", (garbage_id,))

    def take_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        return take_lease(self.c.cursor(), SQLITE, name, holder, "", ttl_s).holder == holder

    def user(self, name: str) -> User | None:
        row = self.c.execute(f"SELECT {USER_COLUMNS} FROM users WHERE name=?", (name,)).fetchone()
        return row_to_user(row) if row else None

    def user_by_token(self, token_hash: str) -> User | None:
        row = self.c.execute(
            f"SELECT {USER_COLUMNS} FROM users WHERE token_hash=?", (token_hash,)
        ).fetchone()
        return row_to_user(row) if row else None

    def users(self) -> list[User]:
        rows = self.c.execute(f"SELECT {USER_COLUMNS} FROM users ORDER BY name")
        return [row_to_user(row) for row in rows]

    def put_user(self, user: User) -> None:
        self.c.execute(
            f"INSERT OR REPLACE INTO users ({USER_COLUMNS}) VALUES (?,?,?,?,?,?,?)",
            user_to_row(user),
        )

    def delete_user(self, name: str) -> None:
        self.c.execute("DELETE FROM users WHERE name=?", (name,))
