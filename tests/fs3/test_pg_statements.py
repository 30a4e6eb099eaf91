"""The namespace on PostgreSQL sends one statement per operation (issue 22), maps the
functions' errors back to fs3's, and runs beside the Python namespace on the same tables.

Statements are counted on the wire: libpq's protocol trace of the store's one connection
records every message the client sends, so a BEGIN or COMMIT (a simple Query) or a second
statement (another Execute) would show."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fs3.errors import (
    AlreadyExists,
    DirectoryNotEmpty,
    Fs3Error,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotFound,
    NotPermitted,
    PermissionDenied,
    QuotaExceeded,
)
from fs3.meta import permissions
from fs3.meta.backends import namespace_over
from fs3.meta.namespace import Namespace
from fs3.meta.permissions import WRITE, Caller
from fs3.meta.pg_namespace import PostgresNamespace
from fs3.meta.postgres import PostgresMetaStore
from fs3.meta.sqlite import SqliteMetaStore
from fs3.types import FIFO

pytestmark = pytest.mark.postgres


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresMetaStore]:
    """A store with one connection, so that every statement goes through the traced one."""
    s = PostgresMetaStore(postgres_url, max_connections=1)
    yield s
    s.close()


@pytest.fixture
def pns(store: PostgresMetaStore) -> PostgresNamespace:
    ns = namespace_over(store, chains=lambda: [1, 2, 3])
    assert isinstance(ns, PostgresNamespace)
    return ns


class Wire:
    """The messages the client sends on a connection, from libpq's trace."""

    def __init__(self, conn: Any, trace: Path) -> None:
        from psycopg import pq

        self._file = trace.open("w")
        self._trace = trace
        conn.pgconn.trace(self._file.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        self._seen = 0

    def sent(self) -> list[str]:
        """Frontend messages since the last call: 'Query "BEGIN"', 'Execute', 'Parse ...'."""
        self._file.flush()
        lines = self._trace.read_text().splitlines()
        fresh, self._seen = lines[self._seen :], len(lines)
        return [m.group(1) for line in fresh if (m := re.match(r"F\t\d+\t(.*)", line))]

    def statements(self) -> list[str]:
        """The statements run since the last call: 'Query "BEGIN"', 'Execute'..."""
        return [_kind(m) for m in self.sent() if m.startswith(("Query", "Execute"))]


def _kind(message: str) -> str:
    """'Execute' for an executed portal (whichever), a simple query with its text."""
    return message if message.startswith("Query") else message.split("\t")[0]


@pytest.fixture
def wire(store: PostgresMetaStore, tmp_path: Path) -> Wire:
    (conn,) = store._idle  # the one connection (max_connections=1), opened with the store
    return Wire(conn, tmp_path / "trace")


def _operations(ns: PostgresNamespace) -> list[tuple[str, Callable[[], object]]]:
    """Every ported operation, each run in a state where it succeeds (in this order)."""
    ids: dict[str, int] = {}
    return [
        ("mkdir", lambda: ns.mkdir("/d")),
        ("mkdir parents", lambda: ns.mkdir("/d/e/f", parents=True)),
        ("create", lambda: ids.setdefault("f", ns.create("/d/f").id)),
        ("create replacing", lambda: ids.__setitem__("f", ns.create("/d/f").id)),
        ("stat", lambda: ns.stat("/d/f")),
        ("open", lambda: ns.open("/d/f", WRITE)),
        ("listdir", lambda: ns.listdir("/d")),
        ("listdir page", lambda: ns.listdir("/d", after="e", limit=1)),
        ("set_length", lambda: ns.set_length(ids["f"], 10)),
        ("truncate", lambda: ns.truncate("/d/f", 4)),
        ("set_attr", lambda: ns.set_attr("/d/f", mode=0o600, mtime=5.0)),
        ("chown", lambda: ns.chown("/d/f", uid=7, gid=8)),
        ("symlink", lambda: ns.symlink("/d/l", "f")),
        ("readlink", lambda: ns.readlink("/d/l")),
        ("open via symlink", lambda: ns.open("/d/l")),
        ("link", lambda: ns.link("/d/f", "/d/g")),
        ("mknod", lambda: ns.mknod("/d/p", FIFO)),
        ("rename", lambda: ns.rename("/d/g", "/d/e/g")),
        ("rename replacing", lambda: ns.rename("/d/p", "/d/e/g")),
        ("set_quota", lambda: ns.set_quota("/d", max_bytes=1 << 20)),
        ("length_limit", lambda: ns.length_limit(ids["f"])),
        ("unlink", lambda: ns.unlink("/d/e/g")),
        ("rmdir", lambda: ns.rmdir("/d/e/f")),
        ("take_garbage", lambda: ns.take_garbage()),
        ("drop_garbage", lambda: ns.drop_garbage([g for g, _ in ns.take_garbage()])),
        ("take_lease", lambda: ns.take_lease("collector", "me", 10.0)),
    ]


def test_each_operation_is_one_statement(pns: PostgresNamespace, wire: Wire) -> None:
    """Every ported operation sends exactly one statement and no BEGIN/COMMIT; after its
    first run on the connection it is prepared (no Parse). ``drop_garbage`` is counted
    alone: it takes a listing first."""
    for name, op in _operations(pns):
        if name == "drop_garbage":
            ids = [g for g, _ in pns.take_garbage()]
            wire.statements()
            pns.drop_garbage(ids)
        else:
            op()
        statements = wire.statements()
        assert statements == ["Execute"], (name, statements)
    assert pns.store.retries == 0
    for name, op in _operations(pns)[4:8]:  # a second run of the same statement is prepared
        op()
        sent = wire.sent()
        assert not [m for m in sent if m.startswith("Parse")], (name, sent)
        assert [_kind(m) for m in sent if m.startswith(("Query", "Execute"))] == ["Execute"]


def test_python_operations_still_run_in_a_real_transaction(
    pns: PostgresNamespace, wire: Wire
) -> None:
    """An operation left in Python (fsck's inode_status) runs as a SERIALIZABLE BEGIN ...
    COMMIT that takes the gates first, before its snapshot (fs3.meta.postgres)."""
    made = pns.create("/x")
    wire.sent()
    found, _ = pns.inode_status([made.id])
    assert made.id in found
    statements = wire.statements()
    assert statements[0] == 'Query\t "BEGIN ISOLATION LEVEL SERIALIZABLE"', statements
    assert "LOCK TABLE fs3_rename_gate, fs3_quota_gate" in statements[1], statements
    assert statements[-1] == 'Query\t "COMMIT"'
    assert len(statements) > 4, statements


def _error(ns: Namespace, fn: Callable[[Namespace], object]) -> Fs3Error:
    with pytest.raises(Fs3Error) as info:
        fn(ns)
    return info.value


ALICE = Caller(1000, 1000, frozenset({50}))


def _error_cases() -> list[tuple[str, Callable[[Namespace], object], type[Fs3Error]]]:
    """Operations that fail, each with the error it raises (in a tree from _setup)."""

    def alice(fn: Callable[[Namespace], object]) -> Callable[[Namespace], object]:
        def run(ns: Namespace) -> object:
            with permissions.acting(ALICE):
                return fn(ns)

        return run

    return [
        ("missing", lambda ns: ns.stat("/nope/x"), NotFound),
        ("exists", lambda ns: ns.mkdir("/d"), AlreadyExists),
        ("create exclusive", lambda ns: ns.create("/d/f", exclusive=True), AlreadyExists),
        ("through a file", lambda ns: ns.stat("/d/f/x"), NotADirectory),
        ("parent a file", lambda ns: ns.create("/d/f/x"), NotADirectory),
        ("open a dir", lambda ns: ns.open("/d"), IsADirectory),
        ("create over dir", lambda ns: ns.create("/d"), IsADirectory),
        ("rmdir full", lambda ns: ns.rmdir("/d"), DirectoryNotEmpty),
        ("rename into itself", lambda ns: ns.rename("/d", "/d/sub/deeper"), InvalidArgument),
        ("rename dir over file", lambda ns: ns.rename("/d/sub", "/d/f"), NotADirectory),
        ("rename file over dir", lambda ns: ns.rename("/d/f", "/d/sub"), IsADirectory),
        ("rename over full dir", lambda ns: ns.rename("/e", "/d"), DirectoryNotEmpty),
        ("root", lambda ns: ns.unlink("/"), InvalidArgument),
        ("symlink loop", lambda ns: ns.open("/loop"), InvalidArgument),
        ("symlink escapes", lambda ns: ns.open("/d/up"), InvalidArgument),
        ("symlink long name", lambda ns: ns.open("/long"), NameTooLong),
        ("quota", lambda ns: ns.create("/q/two"), QuotaExceeded),
        ("quota bytes", lambda ns: ns.truncate("/q/one", 2000), QuotaExceeded),
        ("deleted inode", lambda ns: ns.set_length(10**9, 1), NotFound),
        ("not allowed", alice(lambda ns: ns.create("/d/g")), PermissionDenied),
        ("not owner", alice(lambda ns: ns.set_attr("/d/f", mode=0o777)), NotPermitted),
        ("quota needs admin", alice(lambda ns: ns.set_quota("/d", 1)), NotPermitted),
        ("link a dir", lambda ns: ns.link("/d", "/d2"), NotPermitted),
        ("sticky", alice(lambda ns: ns.unlink("/tmp/f")), NotPermitted),
    ]


def _setup(ns: Namespace) -> None:
    ns.mkdir("/d/sub", parents=True)
    ns.create("/d/f")
    ns.mkdir("/e/x", parents=True)
    ns.symlink("/loop", "/loop")
    ns.symlink("/d/up", "../../..")
    ns.symlink("/long", "/" + "n" * 300)
    ns.mkdir("/q")
    ns.set_quota("/q", max_bytes=1000, max_inodes=1)
    ns.create("/q/one")
    ns.mkdir("/tmp", mode=0o1777)
    ns.create("/tmp/f")


def test_errors_map_to_what_the_python_namespace_raises(
    pns: PostgresNamespace, tmp_path: Path
) -> None:
    """Each failing operation raises, through the functions, the class, message and path
    the Python namespace raises for it (SQLite as the reference)."""
    reference = Namespace(SqliteMetaStore(str(tmp_path / "ref.db")), chains=lambda: [1, 2, 3])
    for ns in (pns, reference):
        _setup(ns)
    for name, fn, cls in _error_cases():
        got, want = _error(pns, fn), _error(reference, fn)
        assert type(want) is cls, (name, want)
        assert (type(got), str(got), got.path) == (type(want), str(want), want.path), name
    reference.store.close()


def test_python_and_function_operations_share_the_tree(pns: PostgresNamespace) -> None:
    """The Python namespace over the same store sees what the functions wrote and the
    reverse: hard links, quotas and garbage agree whichever side made them."""
    py = Namespace(pns.store, chains=lambda: [1, 2, 3])
    py.mkdir("/q")
    pns.set_quota("/q", max_inodes=3)
    f = pns.create("/q/f")
    py.link("/q/f", "/q/g")
    pns.set_length(f.id, 100)
    assert py.stat("/q").quota.used_bytes == 100  # type: ignore[union-attr]
    py.unlink("/q/f")
    pns.unlink("/q/g")
    assert pns.stat("/q").quota.used_inodes == 0  # type: ignore[union-attr]
    assert [g.inode for _, g in py.take_garbage()] == [f.id]
    assert [e.name for e in py.listdir("/")] == [e.name for e in pns.listdir("/")] == ["q"]
