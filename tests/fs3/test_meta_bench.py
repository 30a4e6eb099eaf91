"""The metadata benchmark runs end to end (tiny sizes; its figures are not checked), and its
bulk fill makes files the namespace treats like any other."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from fs3.meta.backends import namespace_over, open_meta_store
from fs3.meta.bench import (
    OPERATIONS,
    MetaBenchResults,
    bench_backends,
    bench_meta_stores,
    format_meta_table,
    open_backend,
    workloads,
)
from fs3.meta.bulk import add_files
from fs3.types import FILE


def _cells(backends: tuple[str, ...], results: MetaBenchResults) -> set[tuple[str, ...]]:
    return {
        (b, wl.name, op, space)
        for b in backends
        for wl in workloads(results.threads)
        for op in ("cycle", *OPERATIONS)
        for space in ("empty", results.full)
    }


def test_sqlite_bench_fills_both_namespaces_and_measures_every_cell(tmp_path: Path) -> None:
    results = MetaBenchResults(files=300, ops=8, threads=2, repeat=2)
    backend = open_backend(results, "sqlite", tmp_path / "empty.db", tmp_path / "full.db")
    bench_backends(results, [backend])
    for s in backend.stores:
        s.close()
    assert set(results.rates) == _cells(("sqlite",), results)
    assert all(rate > 0 for rate in results.rates.values())
    # The workloads clean up after themselves: the full namespace holds the fill, the
    # directories of the own-dirs workloads and nothing else.
    store = open_meta_store(tmp_path / "full.db")
    listed = [e.name for e in namespace_over(store, chains=lambda: [1]).listdir("/big")]
    store.close()
    assert listed == [f"f{i:07d}" for i in range(300)] + ["t0", "t1"]
    table = format_meta_table(results)
    assert "bulk fill of 300 files: SQLite" in table
    assert "SQLite 2 servers / 1 server (2 threads, own dirs), cycle, 300 files" in table
    assert "SQLite N-file/empty rate, worst" in table and "PG/SQLite" not in table


@pytest.mark.postgres
def test_meta_bench_reports_both_stores_and_the_targets(postgres_server: str) -> None:
    results = bench_meta_stores(files=200, threads=2, postgres_url=postgres_server, ops=8, repeat=1)
    assert set(results.rates) == _cells(("sqlite", "postgresql"), results)
    assert all(rate > 0 for rate in results.rates.values())
    assert set(results.bulk_s) == {"sqlite", "postgresql"}
    table = format_meta_table(results)
    assert "PG/SQLite, 1 thread, cycle, 200 files" in table
    assert "PG ops/s, 2 threads, own dirs, cycle, empty" in table
    assert "PostgreSQL N-file/empty rate, worst" in table


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "m.db")
    return request.getfixturevalue("postgres_url")


def test_bulk_files_are_ordinary_files(db: str) -> None:
    store = open_meta_store(db)
    try:
        ns = namespace_over(store, chains=lambda: [1, 2])
        folder = ns.mkdir("/d")
        names = [f"n{i:04d}" for i in range(1500)]
        add_files(db, folder.id, names[::-1])
        assert [e.name for e in ns.listdir("/d")] == names
        assert [e.name for e in ns.listdir("/d", "n0999", 2)] == ["n1000", "n1001"]
        bulk = ns.stat("/d/n0007")
        assert (bulk.kind, bulk.length, bulk.parent) == (FILE, 0, folder.id)
        made = ns.create("/d/new")  # inode ids continue after the fill's
        assert made.id not in {e.inode.id for e in ns.listdir("/d") if e.name != "new"}
        ns.rename("/d/n0007", "/d/moved")
        ns.unlink("/d/moved")
        with pytest.raises((psycopg.errors.UniqueViolation, sqlite3.IntegrityError)):
            add_files(db, folder.id, ["zz-fresh", "n0001"])
        assert ns.listdir("/d", "z") == []  # the failed fill left nothing behind
    finally:
        store.close()
