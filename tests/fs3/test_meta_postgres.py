"""Metadata stores shared by several meta servers: conflicts are retried, not surfaced, and
concurrent operations through two stores on one database leave one consistent namespace."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fs3.client import FS3FileSystem
from fs3.client.meta import caller_prefix
from fs3.cluster import LocalCluster
from fs3.errors import (
    AlreadyExists,
    DirectoryNotEmpty,
    Fs3Error,
    InvalidArgument,
    NotFound,
    QuotaExceeded,
    Unavailable,
)
from fs3.meta.backends import namespace_over, open_meta_store
from fs3.meta.namespace import Namespace
from fs3.meta.store import ROOT_ID, MetaStore, MetaTxn
from fs3.proto import fs3_pb2 as pb
from fs3.wire.client import ConnectionPool
from fs3.wire.framing import Request
from fs3.wire.ops import METHODS


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A ``--db`` value on each backend that several meta servers can share."""
    if request.param == "sqlite":
        return str(tmp_path / "meta.db")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def two_stores(db: str) -> Iterator[tuple[MetaStore, MetaStore]]:
    """Two stores on one database, as two meta servers would open it."""
    a, b = open_meta_store(db), open_meta_store(db)
    yield a, b
    a.close()
    b.close()


def _tree(ns: Namespace) -> dict[str, tuple[int, int]]:
    """Every path below the root: (inode id, recorded parent id), walking the entries."""
    out: dict[str, tuple[int, int]] = {}
    todo = ["/"]
    while todo:
        path = todo.pop()
        for entry in ns.listdir(path):
            child = path.rstrip("/") + "/" + entry.name
            out[child] = (entry.inode.id, entry.inode.parent)
            if entry.inode.is_dir:
                todo.append(child)
    return out


@pytest.mark.postgres
def test_conflict_is_retried_not_surfaced(postgres_url: str) -> None:
    """Meta server A reads the root, B changes it and commits, then A writes it: PostgreSQL
    aborts A (could not serialize) and A's operation runs again, seeing B's change."""
    a, b = open_meta_store(postgres_url), open_meta_store(postgres_url)
    other = Namespace(b, chains=lambda: [1])
    attempts: list[float] = []

    def op(txn: MetaTxn) -> int:
        root = txn.get_inode(ROOT_ID)
        assert root is not None
        attempts.append(root.mtime)
        if len(attempts) == 1:
            other.mkdir("/made-meanwhile")  # commits a new root mtime under A's snapshot
        txn.put_inode(dataclasses.replace(root, mode=0o700))
        return len(attempts)

    try:
        assert a.run(op) == 2
        assert a.retries == 1 and attempts[1] > attempts[0]
        ns = Namespace(a, chains=lambda: [1])
        assert ns.stat("/").mode == 0o700 and ns.stat("/made-meanwhile").is_dir
    finally:
        a.close()
        b.close()


def test_two_stores_serve_one_namespace(two_stores: tuple[MetaStore, MetaStore]) -> None:
    """Creates and renames in one directory through two stores at once (four writers on
    each), the pattern of checkpoint writers: write a tmp name, rename it into place. One
    store serves the backend's own namespace (on PostgreSQL: one statement per operation),
    the other the Python namespace's transactions: both kinds interleave on one tree."""
    a, b = two_stores
    spaces = [namespace_over(a, chains=lambda: [1, 2, 3]), Namespace(b, chains=lambda: [1, 2, 3])]
    spaces[0].mkdir("/shared")
    errors: list[BaseException] = []

    def work(ns: Namespace, me: str) -> None:
        try:
            for i in range(15):
                ns.create(f"/shared/{me}-{i}.tmp")
                ns.rename(f"/shared/{me}-{i}.tmp", f"/shared/{me}-{i}")
                ns.create(f"/shared/latest.tmp-{me}")
                ns.rename(f"/shared/latest.tmp-{me}", "/shared/latest")
            ns.mkdir(f"/{me}")
            ns.rename(f"/{me}", f"/shared/dir-{me}")
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    writers = [f"{side}{k}" for side in "ab" for k in range(4)]
    threads = [threading.Thread(target=work, args=(spaces[w[0] == "b"], w)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for ns in spaces:  # both servers see the same, complete tree
        tree = _tree(ns)
        expected = {f"/shared/{w}-{i}" for w in writers for i in range(15)}
        expected |= {f"/shared/dir-{w}" for w in writers} | {"/shared", "/shared/latest"}
        assert set(tree) == expected
        ids = [inode for inode, _ in tree.values()]
        assert len(set(ids)) == len(ids)  # every inode reached once: no cycle, no sharing
        for path, (_, parent) in tree.items():
            parent_path = path.rsplit("/", 1)[0] or "/"
            assert parent == (tree[parent_path][0] if parent_path != "/" else ROOT_ID)
    # 8 writers x 15 replaced "latest" files (all but the last) wait for the collector.
    assert len(spaces[1].take_garbage(limit=1000)) == 8 * 15 - 1


def test_overlapping_moves_keep_one_consistent_tree(
    two_stores: tuple[MetaStore, MetaStore],
) -> None:
    """Writers on both stores move directories into each other (each pair of moves could
    make a cycle), create, replace and delete files under one quota, all at once. Every
    operation either happens whole or fails with an fs3 error; the tree stays a tree, link
    counts and the quota's usage match what is there."""
    spaces = [namespace_over(s, chains=lambda: [1, 2, 3]) for s in two_stores]
    spaces[0].mkdir("/t/x", parents=True)
    spaces[0].mkdir("/t/y")
    spaces[0].set_quota("/t", max_inodes=10_000)
    errors: list[BaseException] = []
    moves = [("/t/x", "/t/y/x"), ("/t/y", "/t/x/y"), ("/t/y/x", "/t/x"), ("/t/x/y", "/t/y")]

    def work(ns: Namespace, me: int) -> None:
        for i in range(25):
            src, dst = moves[(me + i) % len(moves)]
            steps: list[tuple[Callable[..., object], tuple]] = [
                (ns.rename, (src, dst)),
                (ns.create, (f"/t/f{i % 3}",)),
                (ns.mkdir, (f"/t/d{me}/e", True)),
                (ns.rename, (f"/t/d{me}", f"/t/x/d{me}")),
                (ns.unlink, (f"/t/f{(i + 1) % 3}",)),
                (ns.rmdir, (f"/t/x/d{me}/e",)),
            ]
            for op, args in steps:
                try:
                    op(*args)
                except Fs3Error:
                    pass  # lost a race to another writer: NotFound, AlreadyExists...
                except BaseException as err:  # noqa: BLE001 - reported by the main thread
                    errors.append(err)

    threads = [threading.Thread(target=work, args=(spaces[k % 2], k)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for ns in spaces:
        tree = _tree(ns)
        ids = [inode for inode, _ in tree.values()]
        assert len(set(ids)) == len(ids)  # no cycle, no directory reached twice
        for path, (_, parent) in tree.items():
            parent_path = path.rsplit("/", 1)[0] or "/"
            assert parent == (tree[parent_path][0] if parent_path != "/" else ROOT_ID)
            if ns.stat(path).is_dir:
                subdirs = [e for e in ns.listdir(path) if e.inode.is_dir]
                assert ns.stat(path).nlink == 2 + len(subdirs), path
        below = [p for p in tree if p.startswith("/t/")]
        assert ns.stat("/t").quota.used_inodes == len(below)  # type: ignore[union-attr]
        # x and y are never deleted: a cycle between them would cut both off the tree.
        assert {"x", "y"} <= {p.rsplit("/", 1)[1] for p in tree if ns.stat(p).is_dir}


def _meta_call(
    pool: ConnectionPool, address: str, token: str, name: str, request: object
) -> object:
    """One request by ``token`` to the meta server at ``address`` itself (clients pick one
    via mgmtd)."""
    method = METHODS[name]
    payload = caller_prefix(pb.Caller(token=token)) + request.SerializeToString()  # type: ignore[attr-defined]
    _, _, body = pool.request(address, Request(method.op, length=len(payload)), payload)
    return method.reply.FromString(bytes(body))


@pytest.mark.slow
def test_two_meta_processes_serve_one_database(make_cluster, db: str) -> None:  # type: ignore[no-untyped-def]
    """Two meta servers (processes) on one database, both listed by mgmtd; writers on each
    create and rename in one directory at once, and both then list the same tree."""
    c: LocalCluster = make_cluster(metas=2, meta_db=db if "://" in db else "")
    servers = [c.meta_address("meta"), c.meta_address("meta-2")]
    fs = FS3FileSystem(c.address, skip_instance_cache=True)
    assert sorted(fs.mgmtd.info()["meta_addresses"]) == sorted(servers)
    fs.makedirs("/both")
    token = (c.root / "token").read_text().strip()  # the cluster's admin
    pool = ConnectionPool(3.0, 30.0)
    errors: list[BaseException] = []

    def work(address: str, me: str) -> None:
        try:
            for i in range(20):
                tmp, final = f"/both/{me}-{i}.tmp", f"/both/{me}-{i}"
                _meta_call(
                    pool, address, token, "Create", pb.CreateRequest(path=tmp, chunk_size=65536)
                )
                _meta_call(pool, address, token, "Rename", pb.RenameRequest(src=tmp, dst=final))
                _meta_call(
                    pool,
                    address,
                    token,
                    "Create",
                    pb.CreateRequest(path=f"/both/l-{me}", chunk_size=65536),
                )
                _meta_call(
                    pool,
                    address,
                    token,
                    "Rename",
                    pb.RenameRequest(src=f"/both/l-{me}", dst="/both/latest"),
                )
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    writers = [(servers[k % 2], f"w{k}") for k in range(4)]
    threads = [threading.Thread(target=work, args=w) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    pool.close()
    assert not errors, errors
    expected = sorted([f"{w}-{i}" for _, w in writers for i in range(20)] + ["latest"])
    listings = []
    reader = ConnectionPool(3.0, 30.0)
    for address in servers:
        listing = _meta_call(reader, address, token, "List", pb.PathRequest(path="/both"))
        listings.append([(e.name, e.inode.id) for e in listing.entries])  # type: ignore[attr-defined]
    reader.close()
    assert listings[0] == listings[1]
    assert [name for name, _ in listings[0]] == expected
    assert len({inode for _, inode in listings[0]}) == len(expected)
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls("/both", detail=False)) == expected


def test_conflicts_that_persist_end_as_unavailable() -> None:
    """Past the retry budget the caller gets a retryable Unavailable naming the hot spot."""
    from contextlib import nullcontext

    from fs3.db import TxnConflict, run_retrying
    from fs3.errors import Unavailable

    def always(_txn: object) -> None:
        raise TxnConflict("could not serialize access")

    with pytest.raises(Unavailable, match="kept conflicting") as info:
        run_retrying(nullcontext, always, retry_s=0.05)
    assert info.value.retryable


@pytest.mark.postgres
def test_a_listing_function_of_an_older_shape_is_replaced(postgres_url: str) -> None:
    """A database whose fs3_listdir returns one inodes value per entry (an earlier version)
    gets the flat one when a store opens it, and listings read right through it."""
    import psycopg

    first = open_meta_store(postgres_url)
    namespace_over(first, chains=lambda: [1]).mkdir("/d")
    first.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP FUNCTION fs3_listdir(fs3_caller, text, text, bigint)")
        conn.execute(
            "CREATE FUNCTION fs3_listdir(c fs3_caller, path TEXT, after_name TEXT, page BIGINT) "
            "RETURNS TABLE (entry_name TEXT, entry inodes) AS $$ SELECT NULL::TEXT, NULL::inodes "
            "$$ LANGUAGE sql"
        )
    store = open_meta_store(postgres_url)
    try:
        ns = namespace_over(store, chains=lambda: [1])
        made = ns.create("/d/f")
        ns.mkdir("/d/sub")
        listed = ns.listdir("/d")
        assert [e.name for e in listed] == ["f", "sub"]
        assert listed[0].inode == made
        assert listed[1].inode.is_dir and listed[1].inode.nlink == 2
        assert [e.name for e in ns.listdir("/d", after="f", limit=5)] == ["sub"]
    finally:
        store.close()


def test_a_quota_set_through_one_store_is_charged_through_another(
    two_stores: tuple[MetaStore, MetaStore],
) -> None:
    """Operations skip the quota walk while no quota exists anywhere; a quota another meta
    server sets is charged from the next operation on, by servers that skipped it before."""
    a, b = (namespace_over(s, chains=lambda: [1]) for s in two_stores)
    a.mkdir("/q")
    for i in range(3):  # a's statements run (and are planned) while there is no quota
        a.create(f"/q/before{i}")
    b.set_quota("/q", max_inodes=5)
    assert b.stat("/q").quota.used_inodes == 3  # type: ignore[union-attr]
    a.create("/q/after")
    a.mkdir("/q/dir")
    assert b.stat("/q").quota.used_inodes == 5  # type: ignore[union-attr]
    with pytest.raises(Fs3Error, match="disk quota exceeded: 6 inodes"):
        a.create("/q/one_too_many")
    a.unlink("/q/after")
    assert b.stat("/q").quota.used_inodes == 4  # type: ignore[union-attr]


# Concurrency of the row-locked functions (fs3.meta.pg_functions): each test runs threads
# over two stores on one PostgreSQL database, the same operations racing round after round,
# and checks what a wrong lock protocol would break.


def _race(*ops: Callable[[int], object], rounds: int) -> list[list[object]]:
    """Runs ``ops`` (each given the round's number) in threads of their own, released
    together each round; each round's outcome per op: its result or the fs3 error it raised."""
    gate = threading.Barrier(len(ops))
    outcomes: list[list[object]] = [[None] * len(ops) for _ in range(rounds)]
    errors: list[BaseException] = []

    def run(k: int, op: Callable[[int], object]) -> None:
        for r in range(rounds):
            gate.wait()
            try:
                outcomes[r][k] = op(r)
            except Fs3Error as err:
                outcomes[r][k] = err
            except BaseException as err:  # noqa: BLE001 - reported by the main thread
                errors.append(err)

    threads = [threading.Thread(target=run, args=(k, op)) for k, op in enumerate(ops)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return outcomes


@pytest.fixture
def pg_spaces(postgres_url: str) -> Iterator[tuple[Namespace, Namespace, MetaStore]]:
    """Two PostgreSQL namespaces on one database, through two stores, and the first store."""
    a, b = open_meta_store(postgres_url), open_meta_store(postgres_url)
    yield namespace_over(a, chains=lambda: [1]), namespace_over(b, chains=lambda: [1]), a
    a.close()
    b.close()


def _count(store: MetaStore, sql: str) -> int:
    ((n,),) = store.call(sql)  # type: ignore[attr-defined]
    return int(n)


@pytest.mark.postgres
def test_concurrent_creates_of_one_name_have_one_winner(
    pg_spaces: tuple[Namespace, Namespace, MetaStore],
) -> None:
    """Six writers over two stores create (exclusively) and mkdir the same names at once:
    each name is made exactly once, the others get AlreadyExists."""
    a, b, _ = pg_spaces
    a.mkdir("/race")

    def maker(ns: Namespace) -> Callable[[int], object]:
        return lambda r: (
            ns.create(f"/race/f{r}", exclusive=True) if r % 2 else ns.mkdir(f"/race/d{r}")
        )

    outcomes = _race(*(maker(ns) for ns in (a, b) * 3), rounds=30)
    for r, results in enumerate(outcomes):
        won = [x for x in results if not isinstance(x, Fs3Error)]
        assert len(won) == 1, (r, results)
        assert all(isinstance(x, AlreadyExists) for x in results if x not in won), results
    names = {e.name: e.inode.id for e in b.listdir("/race")}
    assert len(names) == 30
    assert b.stat("/race").nlink == 2 + 15  # each directory made once


@pytest.mark.postgres
def test_create_racing_rmdir_of_its_directory_never_lands_in_a_deleted_one(
    pg_spaces: tuple[Namespace, Namespace, MetaStore],
) -> None:
    """A create into a directory races that directory's rmdir: either the create wins (and
    rmdir finds it not empty) or the rmdir does (and the create finds no directory)."""
    a, b, store = pg_spaces
    for r in range(40):
        a.mkdir(f"/p/d{r}", parents=True)
    outcomes = _race(lambda r: a.create(f"/p/d{r}/f"), lambda r: b.rmdir(f"/p/d{r}"), rounds=40)
    for r, (made, removed) in enumerate(outcomes):
        if isinstance(removed, Fs3Error):
            assert isinstance(removed, DirectoryNotEmpty) and not isinstance(made, Fs3Error)
            assert [e.name for e in b.listdir(f"/p/d{r}")] == ["f"]
        else:
            assert isinstance(made, NotFound), (r, made)
            with pytest.raises(NotFound):
                b.stat(f"/p/d{r}")
    orphans = (
        "SELECT count(*) FROM dentries d "
        "WHERE NOT EXISTS (SELECT 1 FROM inodes i WHERE i.id = d.parent)"
    )
    assert _count(store, orphans) == 0
    assert b.stat("/p").nlink == 2 + len(b.listdir("/p"))


@pytest.mark.postgres
def test_link_racing_unlink_of_one_file_keeps_link_counts_exact(
    pg_spaces: tuple[Namespace, Namespace, MetaStore],
) -> None:
    """A hard link to a file races the unlink of its only name: the link count of every
    inode equals its names, and no inode is left without a name."""
    a, b, store = pg_spaces
    a.mkdir("/u")
    for r in range(40):
        a.create(f"/u/f{r}")
    outcomes = _race(
        lambda r: a.link(f"/u/f{r}", f"/u/g{r}"), lambda r: b.unlink(f"/u/f{r}"), rounds=40
    )
    for r, (linked, unlinked) in enumerate(outcomes):
        assert unlinked is None, (r, unlinked)  # the name was there to unlink
        names = {e.name: e.inode for e in b.listdir("/u")}
        assert f"f{r}" not in names
        if isinstance(linked, Fs3Error):
            assert isinstance(linked, NotFound) and f"g{r}" not in names
        else:
            assert names[f"g{r}"].nlink == 1
    wrong = (
        "SELECT count(*) FROM inodes i WHERE i.kind <> 'directory' "
        "AND i.nlink <> (SELECT count(*) FROM dentries d WHERE d.child = i.id)"
    )
    assert _count(store, wrong) == 0


@pytest.mark.postgres
def test_charges_at_a_quota_limit_never_pass_it(
    pg_spaces: tuple[Namespace, Namespace, MetaStore],
) -> None:
    """Round after round, six writers over two stores, each in a directory of its own (so
    that only the quota orders them), race for the last inode and the last 10 bytes of a
    fresh quota: one create and one growth win each round, the others fail with
    QuotaExceeded, and the recorded usage equals what is there."""
    a, b, _ = pg_spaces
    rounds, writers = 20, 6
    files: dict[tuple[int, int], int] = {}
    for r in range(rounds):
        for k in range(writers):
            a.mkdir(f"/q{r}/w{k}", parents=True)
            files[r, k] = a.create(f"/q{r}/w{k}/g").id
        # Each w{k} and its g: 2 inodes per writer, and one more to win; 10 bytes to win.
        a.set_quota(f"/q{r}", max_bytes=10, max_inodes=2 * writers + 1)

    def writer(ns: Namespace, k: int) -> Callable[[int], object]:
        def op(r: int) -> object:
            outcome: list[object] = []
            steps = (lambda: ns.create(f"/q{r}/w{k}/f"), lambda: ns.set_length(files[r, k], 10))
            for step in steps:
                try:
                    outcome.append(step())
                except QuotaExceeded as err:
                    outcome.append(err)
            return outcome

        return op

    outcomes = _race(*(writer(ns, k) for k, ns in enumerate((a, b) * 3)), rounds=rounds)
    for r, results in enumerate(outcomes):
        for step in range(2):  # the create, the growth
            won = [x for x in results if not isinstance(x[step], QuotaExceeded)]  # type: ignore[index]
            assert len(won) == 1, (r, step, results)
        quota = b.stat(f"/q{r}").quota
        assert quota is not None and (quota.used_inodes, quota.used_bytes) == (2 * writers + 1, 10)


@pytest.mark.postgres
def test_crossing_directory_renames_never_make_a_cycle(
    pg_spaces: tuple[Namespace, Namespace, MetaStore],
) -> None:
    """Two directories in different parents are each moved into a subdirectory of the other
    at once, round after round, through two stores. The two renames lock no row in common
    (parents p, y/s and x; q, x/s and y): only the rename gate orders them. Exactly one
    wins each round, the other finds its destination gone or inside what it moves; the
    tree stays a tree."""
    a, b, _ = pg_spaces
    for made in ("/c/p/x/s", "/c/q/y/s"):
        a.mkdir(made, parents=True)
    homes = {"/c/q/y/s/x": "/c/p/x", "/c/p/x/s/y": "/c/q/y"}

    def mover(ns: Namespace, src: str, dst: str) -> Callable[[int], object]:
        def op(r: int) -> object:
            if r % 2 == 0:
                return ns.rename(src, dst)
            if src == "/c/p/x":  # odd rounds: one of the two puts the winner back
                for moved, home in homes.items():
                    with contextlib.suppress(NotFound):
                        return ns.rename(moved, home)
            return None

        return op

    outcomes = _race(mover(a, "/c/p/x", "/c/q/y/s/x"), mover(b, "/c/q/y", "/c/p/x/s/y"), rounds=60)
    expected = {"/c", "/c/p", "/c/q", "/c/p/x", "/c/p/x/s", "/c/q/y", "/c/q/y/s"}
    for r in range(0, 60, 2):
        won = [x for x in outcomes[r] if not isinstance(x, Fs3Error)]
        assert len(won) == 1, (r, outcomes[r])
        lost = [x for x in outcomes[r] if isinstance(x, Fs3Error)]
        assert isinstance(lost[0], NotFound | InvalidArgument), lost
    tree = _tree(a)
    ids = [inode for inode, _ in tree.values()]
    assert len(set(ids)) == len(ids) and set(tree) == expected


@pytest.mark.postgres
def test_a_serializable_writer_and_a_row_locked_one_lose_no_update(postgres_url: str) -> None:
    """A Python transaction (SERIALIZABLE) changes the root's mode and holds it; a mkdir
    (row-locked, READ COMMITTED) in the root waits for it, then adds its link on top: both
    changes stand. The other order is test_conflict_is_retried_not_surfaced."""
    import psycopg

    a, b = open_meta_store(postgres_url), open_meta_store(postgres_url)
    other = namespace_over(b, chains=lambda: [1])
    done: list[object] = []
    watcher = psycopg.connect(postgres_url, autocommit=True)

    def op(txn: MetaTxn) -> None:
        root = txn.get_inode(ROOT_ID)
        assert root is not None
        txn.put_inode(dataclasses.replace(root, mode=0o700))
        worker = threading.Thread(target=lambda: done.append(other.mkdir("/waited")))
        worker.start()
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        while watcher.execute(waiting).fetchone()[0] == 0:  # type: ignore[index]
            assert worker.is_alive()  # it may not finish before this transaction does
        done.append(worker)

    try:
        nlink = Namespace(a, chains=lambda: [1]).stat("/").nlink
        a.run(op)
        worker = done.pop(0)
        assert isinstance(worker, threading.Thread)
        worker.join(30)
        root = other.stat("/")
        assert root.mode & 0o777 == 0o700 and root.nlink == nlink + 1
        assert other.stat("/waited").is_dir and a.retries == 0
    finally:
        watcher.close()
        a.close()
        b.close()


@pytest.mark.postgres
def test_a_connection_lost_under_a_call_is_dropped_not_reused(postgres_url: str) -> None:
    """The server ends the session of a pooled connection (a restart, an admin's kill): the
    next operation on it fails Unavailable, and the one after gets a new connection."""
    import psycopg

    store = open_meta_store(postgres_url)
    ns = namespace_over(store, chains=lambda: [1])
    ns.mkdir("/d")
    try:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        with pytest.raises(Unavailable):
            ns.stat("/d")
        assert ns.stat("/d").is_dir
    finally:
        store.close()
