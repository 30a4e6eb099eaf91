"""Namespace semantics over every metadata store: the conformance suite of MetaStore."""

from __future__ import annotations

import errno
import threading
from pathlib import Path

import pytest

from fs3.errors import (
    AlreadyExists,
    DirectoryNotEmpty,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotFound,
)
from fs3.meta.namespace import Namespace
from fs3.meta.sqlite import SqliteMetaStore


def test_create_stat_list(ns: Namespace) -> None:
    ns.mkdir("/a/b", parents=True)
    f = ns.create("/a/b/f", chunk_size=1024)
    assert f.layout.chunk_size == 1024 and sorted(f.layout.chains) == [1, 2, 3]
    assert ns.stat("/a/b/f").id == f.id
    assert [e.name for e in ns.listdir("/a")] == ["b"]
    assert ns.mkdir("/a/b", parents=True).is_dir
    with pytest.raises(AlreadyExists):
        ns.mkdir("/a/b")
    with pytest.raises(AlreadyExists):
        ns.create("/a/b/f", exclusive=True)
    with pytest.raises(NotFound):
        ns.create("/nope/f")
    with pytest.raises(NotADirectory):
        ns.create("/a/b/f/g")
    with pytest.raises(IsADirectory):
        ns.create("/a/b")
    with pytest.raises(NotADirectory):
        ns.listdir("/a/b/f")


def test_recreate_replaces_and_collects_garbage(ns: Namespace) -> None:
    first = ns.create("/f")
    second = ns.create("/f")
    assert first.id != second.id
    assert [g.inode for _, g in ns.take_garbage()] == [first.id]


def test_rename_rules(ns: Namespace) -> None:
    ns.mkdir("/d/e", parents=True)
    ns.create("/d/e/f")
    with pytest.raises(InvalidArgument):
        ns.rename("/d", "/d/e/x")
    ns.rename("/d/e", "/e")
    assert ns.stat("/e/f").kind == "file"
    ns.create("/g")
    old = ns.stat("/e/f").id
    ns.rename("/g", "/e/f")  # replaces the file atomically
    assert [g.inode for _, g in ns.take_garbage()] == [old]
    with pytest.raises(NotFound):
        ns.stat("/g")
    ns.mkdir("/empty")
    with pytest.raises(NotADirectory):
        ns.rename("/empty", "/e/f")
    with pytest.raises(IsADirectory):
        ns.rename("/e/f", "/empty")
    with pytest.raises(DirectoryNotEmpty):
        ns.rename("/empty", "/e")
    ns.rename("/e", "/empty")
    assert ns.stat("/empty/f").kind == "file"


def test_unlink_rmdir_truncate(ns: Namespace) -> None:
    ns.mkdir("/d")
    ns.create("/d/f", chunk_size=10)
    with pytest.raises(DirectoryNotEmpty) as info:
        ns.rmdir("/d")
    assert info.value.errno == errno.ENOTEMPTY and "/d" in str(info.value)
    with pytest.raises(IsADirectory):
        ns.unlink("/d")
    f = ns.set_length(ns.stat("/d/f").id, 35)
    assert ns.truncate("/d/f", 12).length == 12
    assert [(g.inode, g.from_index) for _, g in ns.take_garbage()] == [(f.id, 2)]
    with pytest.raises(InvalidArgument):
        ns.truncate("/d/f", -1)
    ns.unlink("/d/f")
    ns.rmdir("/d")
    with pytest.raises(InvalidArgument):
        ns.rmdir("/")


def test_symlinks(ns: Namespace) -> None:
    ns.create("/target")
    ns.symlink("/link", "target")
    assert ns.readlink("/link") == "target"
    assert ns.open("/link").id == ns.stat("/target").id
    assert ns.stat("/link").kind == "symlink"
    ns.symlink("/loop", "/loop")
    with pytest.raises(InvalidArgument):
        ns.open("/loop")


def test_set_attr_keeps_mode_and_times(ns: Namespace) -> None:
    f = ns.create("/f", mode=0o644)
    changed = ns.set_attr("/f", mode=0o600, atime=1.5, mtime=2.5)
    assert (changed.mode, changed.atime, changed.mtime) == (0o600, 1.5, 2.5)
    assert ns.stat("/f") == changed and changed.id == f.id
    ns.set_attr("/f", mode=0o640)
    again = ns.stat("/f")
    assert (again.mode, again.atime, again.mtime) == (0o640, 1.5, 2.5)
    ns.mkdir("/d")
    assert ns.set_attr("/d", mtime=7.0).mtime == 7.0
    with pytest.raises(NotFound):
        ns.set_attr("/nope", mode=0o600)
    with pytest.raises(InvalidArgument):
        ns.set_attr("/f", mode=0o17777)


def test_sqlite_store_of_the_first_schema_gets_the_new_columns(tmp_path: Path) -> None:
    """A metadata file written before atime and quotas existed opens, keeps its files and
    stores the new attributes."""
    import sqlite3

    old = sqlite3.connect(tmp_path / "old.db")
    old.executescript(
        "CREATE TABLE inodes (id INTEGER PRIMARY KEY, kind TEXT, mode INTEGER, length INTEGER,"
        " mtime REAL, ctime REAL, parent INTEGER, chunk_size INTEGER, chains TEXT,"
        " seed INTEGER, target TEXT);"
        "CREATE TABLE dentries (parent INTEGER, name TEXT, child INTEGER,"
        " PRIMARY KEY (parent, name)) WITHOUT ROWID;"
        "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER);"
        "INSERT INTO inodes VALUES (1, 'directory', 493, 0, 1.0, 1.0, 1, 0, '', 0, '');"
        "INSERT INTO inodes VALUES (2, 'file', 420, 5, 1.0, 1.0, 1, 1024, '1', 0, '');"
        "INSERT INTO dentries VALUES (1, 'f', 2); INSERT INTO counters VALUES ('inode', 3);"
    )
    old.commit()
    old.close()
    store = SqliteMetaStore(tmp_path / "old.db")
    ns = Namespace(store, chains=lambda: [1])
    assert ns.stat("/f").length == 5 and ns.stat("/f").atime == 0.0
    assert ns.set_attr("/f", atime=3.0).atime == 3.0
    assert ns.create("/g").id == 3
    store.close()


def test_invalid_paths(ns: Namespace) -> None:
    with pytest.raises(InvalidArgument):
        ns.create("/a\x00b")
    with pytest.raises(InvalidArgument):
        ns.stat("/../etc")
    assert ns.stat("/a/../").is_dir


def test_concurrent_creates_get_distinct_inodes(ns: Namespace) -> None:
    ids: list[int] = []

    def work(k: int) -> None:
        for i in range(20):
            ids.append(ns.create(f"/f{k}-{i}").id)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 80 and len(ns.listdir("/")) == 80


def test_leases_have_one_holder_until_they_run_out(ns: Namespace) -> None:
    assert ns.take_lease("gc", "a", 60.0)
    assert not ns.take_lease("gc", "b", 60.0)
    assert ns.take_lease("gc", "a", 0.0)  # renewed by its holder, here to run out at once
    assert ns.take_lease("gc", "b", 60.0)
    assert not ns.take_lease("gc", "a", 60.0)


def test_sqlite_closes_connections_of_ended_threads(tmp_path: Path) -> None:
    """The meta server runs a thread per client connection; their handles must not pile up."""
    store = SqliteMetaStore(tmp_path / "m.db")
    for _ in range(20):
        worker = threading.Thread(target=lambda: Namespace(store, chains=list).stat("/"))
        worker.start()
        worker.join()
    assert len(store._all) <= 2  # this thread's and the last worker's
    store.close()


def test_crossed_directory_renames_never_make_a_cycle(ns: Namespace) -> None:
    """Each rename alone passes the "not into its own subtree" check; together they would
    cut /a and /b off the tree. A serialisable store lets only one of them happen."""

    def move(start: threading.Barrier, outcomes: list[str], src: str, dst: str) -> None:
        start.wait()
        try:
            ns.rename(src, dst)
            outcomes.append("ok")
        except (InvalidArgument, NotFound) as err:
            outcomes.append(type(err).__name__)

    for round_ in range(10):
        base = f"/r{round_}"
        ns.mkdir(f"{base}/a", parents=True)
        ns.mkdir(f"{base}/b")
        start, outcomes = threading.Barrier(2), []
        threads = [
            threading.Thread(target=move, args=(start, outcomes, f"{base}/a", f"{base}/b/a")),
            threading.Thread(target=move, args=(start, outcomes, f"{base}/b", f"{base}/a/b")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert outcomes.count("ok") == 1, outcomes
        top = [e.name for e in ns.listdir(base)]
        assert len(top) == 1 and [e.name for e in ns.listdir(f"{base}/{top[0]}")] != top
