"""fs3.db's retry loops on real SQLite: conflicting transactions are run again, and the
switch to WAL waits out another process's lock; both pause with jitter and stop on time."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fs3.db import TxnConflict, enter_wal_mode, run_retrying
from fs3.errors import NotFound, Unavailable


@contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    with db:  # commits, or rolls back on an error
        yield db


def _table(tmp_path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(tmp_path / "t.db")
    db.execute("CREATE TABLE t (n INTEGER)")
    return db


def test_a_conflicting_transaction_runs_again_until_it_commits(tmp_path: Path, pauses: Any) -> None:
    db = _table(tmp_path)
    retries: list[int] = []

    def fn(txn: sqlite3.Connection) -> int:
        txn.execute("INSERT INTO t VALUES (1)")
        if len(retries) < 6:
            raise TxnConflict("lost to a concurrent writer")
        return 7

    assert run_retrying(lambda: _transaction(db), fn, lambda: retries.append(1), sleep=pauses) == 7
    # The failed runs were rolled back: one row, from the run that committed.
    assert db.execute("SELECT count(*) FROM t").fetchone() == (1,)
    assert len(retries) == len(pauses.pauses) == 6
    assert len(set(pauses.pauses)) > 1


def test_conflicts_past_the_budget_become_unavailable(tmp_path: Path, pauses: Any) -> None:
    db = _table(tmp_path)

    def fn(txn: sqlite3.Connection) -> None:
        raise TxnConflict("lost again")

    with pytest.raises(Unavailable, match=r"kept conflicting for 0.2s .*; last: lost again"):
        run_retrying(lambda: _transaction(db), fn, retry_s=0.2, sleep=pauses)
    assert len(pauses.pauses) > 2 and len(set(pauses.pauses)) > 1


def test_other_errors_are_not_retried(tmp_path: Path, pauses: Any) -> None:
    db = _table(tmp_path)

    def fn(txn: sqlite3.Connection) -> None:
        raise NotFound("/gone")

    with pytest.raises(NotFound):
        run_retrying(lambda: _transaction(db), fn, sleep=pauses)
    assert pauses.pauses == []


def _locked_file(path: Path) -> sqlite3.Connection:
    """Another connection that holds ``path`` exclusively until it rolls back."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    return holder


def test_the_switch_to_wal_waits_out_a_lock(tmp_path: Path, pauses: Any) -> None:
    holder = _locked_file(tmp_path / "t.db")
    # timeout=0: no busy handler, the way SQLite answers a second switch to WAL.
    conn = sqlite3.connect(tmp_path / "t.db", timeout=0)
    pauses.on_pause = lambda count: count == 4 and holder.rollback()
    enter_wal_mode(conn, sleep=pauses)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert len(pauses.pauses) == 4 and len(set(pauses.pauses)) > 1


def test_the_switch_to_wal_gives_up_with_the_lock_error(tmp_path: Path, pauses: Any) -> None:
    holder = _locked_file(tmp_path / "t.db")
    conn = sqlite3.connect(tmp_path / "t.db", timeout=0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        enter_wal_mode(conn, timeout_s=0.2, sleep=pauses)
    assert len(pauses.pauses) > 2
    holder.rollback()
