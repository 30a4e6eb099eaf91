"""The trash: moving a tree in with one rename, listing, restoring, and purging once it
expired, on every metadata store; and on a real cluster, expiry deleting the chunks."""

from __future__ import annotations

import pytest

from fs3.client import FS3FileSystem
from fs3.cluster import LocalCluster
from fs3.errors import AlreadyExists, InvalidArgument, NotFound, QuotaExceeded
from fs3.meta.namespace import Namespace
from fs3.meta.store import MetaStore
from fs3.meta.trash import TRASH, Trash

from ..waiting import wait_for
from .conftest import SMALL_CHUNK


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def trash(store: MetaStore, clock: Clock) -> Trash:
    return Trash(Namespace(store, chains=lambda: [1, 2], clock=clock))


def _tree(ns: Namespace, base: str) -> None:
    ns.mkdir(f"{base}/sub/deeper", parents=True)
    for name in ("a", "sub/b", "sub/deeper/c"):
        ns.set_length(ns.create(f"{base}/{name}").id, 10)


def test_move_list_restore(trash: Trash, clock: Clock) -> None:
    ns = trash.ns
    _tree(ns, "/data/run")
    entry = trash.move("/data/run", 3600)
    assert entry.path == "/data/run" and entry.expires == clock.now + 3600
    with pytest.raises(NotFound):
        ns.stat("/data/run")
    assert ns.stat(f"{TRASH}/{entry.name}/run/sub/deeper/c").length == 10
    assert [(e.name, e.path, e.inode.id) for e in trash.list()] == [
        (entry.name, "/data/run", entry.inode.id)
    ]
    ns.mkdir("/data/run")
    with pytest.raises(AlreadyExists):
        trash.restore(entry.name)
    ns.rmdir("/data/run")
    assert trash.restore(entry.name).id == entry.inode.id
    assert ns.stat("/data/run/sub/b").length == 10 and trash.list() == []
    second = trash.move("/data/run/a", 60)  # a single file too
    assert trash.restore(second.name, to="/data/elsewhere").kind == "file"
    assert ns.stat("/data/elsewhere").length == 10
    with pytest.raises(NotFound):
        trash.restore("20200101T000000Z-5")
    with pytest.raises(InvalidArgument):
        trash.move(TRASH, 60)
    with pytest.raises(InvalidArgument):
        trash.move("/data", -1)
    with pytest.raises(NotFound):
        trash.move("/nope", 60)


def test_expired_entries_are_purged_with_their_chunks_queued(trash: Trash, clock: Clock) -> None:
    ns = trash.ns
    _tree(ns, "/old")
    _tree(ns, "/young")
    files = {ns.stat(f"/old/{n}").id for n in ("a", "sub/b", "sub/deeper/c")}
    old, young = trash.move("/old", 10), trash.move("/young", 1000)
    clock.now += 11
    with pytest.raises(NotFound, match="expired"):
        trash.restore(old.name)
    assert trash.purge(budget=3) >= 3  # bounded: part of the tree per call
    assert trash.purge() > 0
    assert [e.name for e in trash.list()] == [young.name]
    assert [e.name for e in ns.listdir(TRASH)] == [young.name]
    assert files <= {g.inode for _, g in ns.take_garbage()}
    assert trash.purge() == 0


def test_trash_leaves_quotas_and_restore_charges_them(trash: Trash) -> None:
    ns = trash.ns
    ns.mkdir("/q")
    ns.set_quota("/q", max_bytes=35)
    _tree(ns, "/q/t")
    assert ns.stat("/q").quota.used_bytes == 30
    entry = trash.move("/q/t", 60)
    assert ns.stat("/q").quota.used_bytes == 0
    ns.set_length(ns.create("/q/new").id, 20)
    with pytest.raises(QuotaExceeded):  # 20 + 30 > 35
        trash.restore(entry.name)
    ns.unlink("/q/new")
    trash.restore(entry.name)
    assert ns.stat("/q").quota.used_bytes == 30


def test_expiry_deletes_the_chunks(cluster: LocalCluster, fs3fs: FS3FileSystem) -> None:
    fs3fs.pipe_file("/trash-expiry/big", b"x" * 3 * SMALL_CHUNK)
    inode = fs3fs.info("/trash-expiry/big")["inode"]
    chunk_files = f"*/{inode:016x}.*"
    assert len(list(cluster.root.glob(f"storage-*/{chunk_files}"))) == 9  # 3 chunks x 3
    entry = fs3fs.trash("/trash-expiry", expire_s=0.5)
    assert fs3fs.cat_file(f"{TRASH}/{entry.name}/trash-expiry/big")[:1] == b"x"
    wait_for(
        "the expired entry's chunk files to go",
        lambda: not list(cluster.root.glob(f"storage-*/{chunk_files}")),
        timeout=20,
    )
    assert entry.name not in [e.name for e in fs3fs.trash_list()]
