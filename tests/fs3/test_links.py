"""Link counts, hard links, fifos and sockets, and ctime over every metadata store
(issue 18): the namespace side of what tests/fs3/test_posix_mount.py checks on the mount."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from fs3.errors import AlreadyExists, NotFound, NotPermitted, QuotaExceeded
from fs3.meta.namespace import Namespace
from fs3.meta.sqlite import SqliteMetaStore
from fs3.meta.trash import Trash
from fs3.types import FIFO, SOCKET


class Clock:
    """A clock the test moves, so that every change shows in ctime."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def tns(ns: Namespace) -> Namespace:
    return Namespace(ns.store, chains=lambda: [1, 2, 3], clock=Clock())


def test_directory_link_count_is_two_plus_subdirectories(tns: Namespace) -> None:
    assert tns.stat("/").nlink == 2
    tns.mkdir("/a/b", parents=True)
    tns.mkdir("/a/c")
    tns.create("/a/f")
    tns.symlink("/a/l", "f")
    assert tns.stat("/").nlink == 3
    assert tns.stat("/a").nlink == 4
    assert tns.stat("/a/b").nlink == 2
    tns.rename("/a/c", "/c")  # moves a ".." from /a to /
    assert (tns.stat("/a").nlink, tns.stat("/").nlink) == (3, 4)
    tns.rename("/c", "/a/b")  # replaces the empty /a/b: / loses one, /a keeps its count
    assert (tns.stat("/a").nlink, tns.stat("/").nlink) == (3, 3)
    tns.rmdir("/a/b")
    assert tns.stat("/a").nlink == 2
    Trash(tns).move("/a", expire_s=60)
    assert tns.stat("/").nlink == 3  # /a left, /.trash came
    (entry,) = Trash(tns).list()
    Trash(tns).restore(entry.name)
    assert tns.stat("/").nlink == 4


def test_hard_link_shares_the_inode_and_unlink_keeps_it(tns: Namespace) -> None:
    tns.mkdir("/d")
    f = tns.create("/d/f")
    tns.set_length(f.id, 100)
    before = tns.stat("/d/f").ctime
    linked = tns.link("/d/f", "/g")
    assert linked.id == f.id and linked.nlink == 2 and linked.ctime > before
    assert tns.stat("/g").id == f.id and tns.stat("/d/f").nlink == 2
    tns.unlink("/d/f")
    kept = tns.stat("/g")
    assert (kept.id, kept.nlink, kept.length) == (f.id, 1, 100)
    assert kept.parent == 1  # counted where a name of it is left
    assert tns.take_garbage() == []  # the data stays
    tns.unlink("/g")
    assert [g.inode for _, g in tns.take_garbage()] == [f.id]


def test_link_errors(tns: Namespace) -> None:
    tns.mkdir("/d")
    tns.create("/f")
    with pytest.raises(AlreadyExists):
        tns.link("/f", "/d")
    with pytest.raises(NotPermitted) as info:
        tns.link("/d", "/e")
    assert info.value.errno == errno.EPERM
    with pytest.raises(NotFound):
        tns.link("/nope", "/e")
    with pytest.raises(NotFound):
        tns.link("/f", "/nope/e")


def test_rename_and_replace_with_links(tns: Namespace) -> None:
    f = tns.create("/f")
    tns.link("/f", "/g")
    assert tns.rename("/f", "/g").id == f.id  # same file: nothing happens
    assert {e.name for e in tns.listdir("/")} == {"f", "g"}
    tns.create("/h")
    tns.rename("/h", "/g")  # replaces one name only
    assert (tns.stat("/f").id, tns.stat("/f").nlink) == (f.id, 1)
    new = tns.create("/f")  # an overwrite makes a new file; other names keep the old one
    assert new.id != f.id and new.nlink == 1


def test_quota_counts_a_linked_file_once(tns: Namespace) -> None:
    tns.mkdir("/q")
    tns.mkdir("/q2")
    tns.set_quota("/q", max_inodes=2)
    tns.set_quota("/q2", max_bytes=10)
    f = tns.create("/q/f")
    tns.set_length(f.id, 50)
    tns.link("/q/f", "/q/g")
    tns.link("/q/f", "/q2/f")
    assert tns.stat("/q").quota.used_inodes == 1  # type: ignore[union-attr]
    tns.unlink("/q/f")
    tns.unlink("/q/g")  # the file is /q2's now, past its limit: deleting never fails
    q, q2 = tns.stat("/q").quota, tns.stat("/q2").quota
    assert (q.used_bytes, q.used_inodes) == (0, 0)  # type: ignore[union-attr]
    assert (q2.used_bytes, q2.used_inodes) == (50, 1)  # type: ignore[union-attr]
    with pytest.raises(QuotaExceeded):
        tns.set_length(f.id, 60)
    tns.unlink("/q2/f")
    assert tns.stat("/q2").quota.used_bytes == 0  # type: ignore[union-attr]


def test_trash_purge_of_one_link_keeps_the_file(tns: Namespace) -> None:
    tns.mkdir("/d")
    f = tns.create("/d/f")
    tns.link("/d/f", "/keep")
    Trash(tns).move("/d", expire_s=0)  # rm -r
    assert (tns.stat("/keep").id, tns.stat("/keep").nlink) == (f.id, 1)
    assert tns.take_garbage() == []


def test_fifo_and_socket_entries(tns: Namespace) -> None:
    p = tns.mknod("/p", FIFO, 0o600)
    s = tns.mknod("/s", SOCKET)
    assert (tns.stat("/p").kind, tns.stat("/p").mode, tns.stat("/s").kind) == (FIFO, 0o600, SOCKET)
    assert {e.name: e.inode.id for e in tns.listdir("/")} == {"p": p.id, "s": s.id}
    with pytest.raises(AlreadyExists):
        tns.mknod("/p", FIFO)
    with pytest.raises(NotPermitted):
        tns.mknod("/dev", "chardev")
    tns.rename("/p", "/q")
    tns.unlink("/q")
    tns.unlink("/s")
    assert tns.listdir("/") == [] and tns.take_garbage() == []


def test_ctime_follows_every_change(tns: Namespace) -> None:
    f = tns.create("/f")
    seen = [f.ctime]
    for change, name in (
        (lambda: tns.set_length(f.id, 10), "/f"),
        (lambda: tns.truncate("/f", 5), "/f"),
        (lambda: tns.set_attr("/f", mode=0o600), "/f"),
        (lambda: tns.set_attr("/f", mtime=5.0), "/f"),
        (lambda: tns.rename("/f", "/g"), "/g"),
        (lambda: tns.link("/g", "/h"), "/g"),
        (lambda: tns.unlink("/h"), "/g"),
    ):
        change()
        seen.append(tns.stat(name).ctime)
    assert seen == sorted(set(seen)), seen  # each change moved it on


def test_old_sqlite_store_gets_link_counts(tmp_path: Path) -> None:
    # A store from before nlink: its directories learn their counts when it is opened.
    path = tmp_path / "m.db"
    ns = Namespace(SqliteMetaStore(path), chains=lambda: [1])
    ns.mkdir("/a/b", parents=True)
    ns.mkdir("/a/c")
    ns.create("/a/f")
    ns.store.close()
    with sqlite3.connect(path) as conn:
        conn.execute("DROP INDEX dentries_child")
        conn.execute("ALTER TABLE inodes DROP COLUMN nlink")
    ns = Namespace(SqliteMetaStore(path), chains=lambda: [1])
    assert [ns.stat(p).nlink for p in ("/", "/a", "/a/b", "/a/f")] == [3, 4, 2, 1]
    ns.link("/a/f", "/g")  # the index is back
    assert ns.stat("/g").nlink == 2
    ns.store.close()


def test_trash_moves_a_linked_file_from_where_quotas_count_it(tns: Namespace) -> None:
    tns.mkdir("/q")
    tns.set_quota("/q", max_inodes=10)
    f = tns.create("/q/f")
    tns.set_length(f.id, 7)
    tns.link("/q/f", "/g")
    Trash(tns).move("/g", expire_s=60)  # the name outside /q goes: /q still counts it
    q = tns.stat("/q").quota
    assert (q.used_bytes, q.used_inodes) == (7, 1)  # type: ignore[union-attr]
    tns.unlink("/q/f")
    (entry,) = Trash(tns).list()
    Trash(tns).restore(entry.name)
    q = tns.stat("/q").quota
    assert (q.used_bytes, q.used_inodes, tns.stat("/g").nlink) == (0, 0, 1)  # type: ignore[union-attr]
