"""Fills a directory with many empty files straight into a metadata database's tables.

For benchmarks and tests that need a namespace of millions of files: going through the
namespace operations costs a transaction per file (minutes per million), while here SQLite
takes ``executemany`` in one transaction and PostgreSQL ``COPY``, some seconds per million.
The files are what :meth:`fs3.meta.namespace.Namespace.create` would make (empty, owned by
root, no chunks), but nothing is charged to quotas and the directory's times stay as they
were: fill only a directory with no quota at or above it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence

from fs3.db import connect_postgres, is_postgres
from fs3.meta.sqlite import COLUMNS, inode_to_row
from fs3.types import FILE, Inode

_BATCH = 100_000  # rows per executemany: bounds the Python objects alive at once


def add_files(
    db: str | os.PathLike[str], parent: int, names: Sequence[str], now: float = 0.0
) -> None:
    """Adds an empty file named each of ``names`` to directory inode ``parent`` of the
    metadata database ``db`` (a SQLite file or a ``postgresql://`` URL), in one
    transaction. The names must be new in ``parent``.

    Raises:
        sqlite3.IntegrityError, psycopg.errors.UniqueViolation: a name exists already.
    """
    db = os.fspath(db)
    if is_postgres(db):
        _add_postgres(db, parent, names, now)
    else:
        _add_sqlite(db, parent, names, now)


def _rows(first_id: int, parent: int, names: Sequence[str], now: float) -> Iterator[tuple]:
    for i in range(len(names)):
        yield inode_to_row(Inode(first_id + i, FILE, 0o644, 0, now, now, parent))


def _add_sqlite(path: str, parent: int, names: Sequence[str], now: float) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=60.0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        # Ids as SqliteMetaStore hands them out: the counter holds the next one.
        (first,) = conn.execute(
            "UPDATE counters SET value = value + ? WHERE name='inode' RETURNING value - ?",
            (len(names), len(names)),
        ).fetchone()
        marks = ",".join("?" * len(COLUMNS.split(", ")))
        rows = _rows(first, parent, names, now)
        for start in range(0, len(names), _BATCH):
            batch = names[start : start + _BATCH]
            conn.executemany(
                f"INSERT INTO inodes ({COLUMNS}) VALUES ({marks})",
                (next(rows) for _ in batch),
            )
            conn.executemany(
                "INSERT INTO dentries (parent, name, child) VALUES (?,?,?)",
                ((parent, name, first + start + i) for i, name in enumerate(batch)),
            )
        conn.execute("COMMIT")
        # Into the database file now, or the first operations after the fill would pay for it.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _add_postgres(url: str, parent: int, names: Sequence[str], now: float) -> None:
    conn = connect_postgres(url)
    try:
        with conn.transaction(), conn.cursor() as cur:
            # Reserve the ids in one call: nothing else hands them out meanwhile (a fill
            # runs before the servers that use the namespace).
            (last,) = cur.execute(
                "SELECT setval('inode_ids', nextval('inode_ids') + %s - 1)", (len(names),)
            ).fetchone()
            first = last - len(names) + 1
            with cur.copy(f"COPY inodes ({COLUMNS}) FROM STDIN") as copy:
                for row in _rows(first, parent, names, now):
                    copy.write_row(row)
            with cur.copy("COPY dentries (parent, name, child) FROM STDIN") as copy:
                for i, name in enumerate(names):
                    copy.write_row((parent, name, first + i))
        # Fresh statistics, or the planner may take the tables for empty and scan them; and
        # the vacuum autovacuum would otherwise start under the first operations after it.
        conn.autocommit = True
        conn.execute("VACUUM (ANALYZE) inodes, dentries")
    finally:
        conn.close()
