"""Listings in pages (keyset on the entries' (parent, name) key): every store, the quota
walk and the trash over directories bigger than a page, and a 20,000-entry directory
through the real meta server, with entries coming and going while it is read."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from fs3.client import FS3FileSystem
from fs3.cluster import LocalCluster
from fs3.errors import QuotaExceeded
from fs3.fuse.listing import DirStream
from fs3.meta.bulk import add_files
from fs3.meta.namespace import Namespace
from fs3.meta.service import LIST_PAGE_BYTES, LIST_PAGE_ENTRIES, MetaServicer
from fs3.meta.store import SCAN_PAGE, MetaTxn
from fs3.meta.trash import Trash
from fs3.proto import fs3_pb2 as pb
from fs3.types import FILE, SYMLINK, Inode

BIG = 20_000


def _fill(
    ns: Namespace,
    folder: str,
    names: list[str],
    length: int = 0,
    kind: str = FILE,
    target: str = "",
) -> None:
    """Entries ``names`` of ``kind`` in ``folder``, in one transaction: faster than an
    operation each, on every store."""
    parent = ns.mkdir(folder, parents=True)

    def fill(txn: MetaTxn) -> None:
        for name in names:
            inode = Inode(
                txn.new_inode_id(), kind, 0o644, length, 0.0, 0.0, parent.id, target=target
            )
            txn.put_inode(inode)
            txn.link(parent.id, name, inode.id)

    ns.store.run(fill)


def test_pages_join_into_the_sorted_listing(ns: Namespace) -> None:
    names = ["b", "B", "a", "é", "e", "a b", "z", "Z9", "日本", "10", "9", "a-", "a_"]
    _fill(ns, "/p", names)
    whole = [e.name for e in ns.listdir("/p")]
    assert whole == sorted(names)  # code-point order on every store
    for size in (1, 3, len(names)):
        paged, after = [], ""
        while page := ns.listdir("/p", after, size):
            assert len(page) <= size
            paged += [e.name for e in page]
            after = page[-1].name
        assert paged == whole
    assert [e.name for e in ns.listdir("/p", "a", 2)] == sorted(n for n in names if n > "a")[:2]
    assert ns.listdir("/p", "\U0010ffff") == []


def test_quota_walk_and_its_message_over_directories_bigger_than_a_page(ns: Namespace) -> None:
    files = SCAN_PAGE + 500  # more than one page of the walk in one directory
    _fill(ns, "/q/many", [f"f{i:05d}" for i in range(files)], length=3)
    _fill(ns, "/q/many/sub", [f"g{i}" for i in range(10)], length=100)
    used = ns.set_quota("/q", max_inodes=files + 12).quota
    assert used is not None
    assert (used.used_bytes, used.used_inodes) == (3 * files + 1000, files + 12)
    ns.set_quota("/q/many/sub", max_bytes=1000)
    with pytest.raises(QuotaExceeded, match="on /q/many/sub"):  # found by the child index
        ns.truncate("/q/many/sub/g0", 101)


def test_trash_deletes_a_directory_bigger_than_a_page(ns: Namespace) -> None:
    names = [f"f{i:05d}" for i in range(SCAN_PAGE + 300)]
    _fill(ns, "/t/many", names)
    ids = [e.inode.id for e in ns.listdir("/t/many")]
    Trash(ns).move("/t", 0)
    assert ns.store.run(lambda txn: [i for i in ids if txn.get_inode(i) is not None]) == []
    assert Trash(ns).list() == []


def test_a_page_is_capped_in_bytes_and_entries(ns: Namespace) -> None:
    target = "/" + "t" * 4000  # near PATH_MAX: about 4 KiB per entry
    count = LIST_PAGE_BYTES // 4000 + 50
    _fill(ns, "/links", [f"l{i:05d}" for i in range(count)], kind=SYMLINK, target=target)
    servicer = MetaServicer(ns)
    first = servicer.List(pb.ListRequest(path="/links", limit=10**9))
    assert first.more and 0 < len(first.entries) < count
    assert first.ByteSize() <= LIST_PAGE_BYTES + 8192
    names, reply = [e.name for e in first.entries], first
    while reply.more:
        reply = servicer.List(pb.ListRequest(path="/links", after=names[-1], limit=10**9))
        names += [e.name for e in reply.entries]
    assert names == [f"l{i:05d}" for i in range(count)]


def test_a_client_from_before_pages_gets_a_page(ns: Namespace) -> None:
    """Such a client sends List a PathRequest: its path is ListRequest's field 1."""
    _fill(ns, "/old", [f"e{i}" for i in range(5)])
    old = pb.PathRequest(path="/old", access=4).SerializeToString()
    reply = MetaServicer(ns).List(pb.ListRequest.FromString(old))
    assert [e.name for e in reply.entries] == [f"e{i}" for i in range(5)] and not reply.more


@pytest.fixture(scope="module")
def big_dir(cluster: LocalCluster) -> tuple[str, list[str]]:
    """A directory of 20,000 files in the shared cluster, filled straight into its
    database (as a second meta server on it could), and their names."""
    fs = FS3FileSystem(cluster.address, skip_instance_cache=True)
    path = "/pages-big"
    inode = fs.meta.mkdir(path, True)
    names = [f"f{i:05d}" for i in range(BIG)]
    add_files(cluster.meta_db or Path(cluster.root) / "meta.db", inode.id, names)
    return path, names


def test_a_huge_directory_streams_in_pages_through_meta(
    fs3fs: FS3FileSystem, big_dir: tuple[str, list[str]]
) -> None:
    path, names = big_dir
    assert [e.name for e in fs3fs.meta.iter_listdir(path, page=1000)] == names
    assert [e.name for e in fs3fs.meta.listdir(path)] == names
    assert len(fs3fs.ls(path, detail=False)) == BIG
    hostile, more = fs3fs.meta.list_page(path, "", 10**9)  # the server's cap, not 10^9
    assert len(hostile) == LIST_PAGE_ENTRIES and more
    assert [e.name for e in hostile] == names[:LIST_PAGE_ENTRIES]
    last, more = fs3fs.meta.list_page(path, names[-2], 10**9)
    assert [e.name for e in last] == names[-1:] and not more


def test_entries_present_throughout_come_once_while_others_change(
    fs3fs: FS3FileSystem, big_dir: tuple[str, list[str]]
) -> None:
    """Entries are created and deleted between the pages' names while the listing runs:
    keyset pages neither repeat nor skip the ones that stay."""
    path, names = big_dir
    stop, churning = threading.Event(), threading.Event()
    churned = 0

    def churn() -> None:
        nonlocal churned
        i = 0
        while not stop.is_set():
            # Names sorting among the fixed ones, on both sides of wherever the reader is.
            made = [f"{path}/f{(i * 7919) % BIG:05d}-new{i}", f"{path}/f{(i * 104729) % BIG:05d}x"]
            for p in made:
                fs3fs.meta.create(p, False, 1 << 20, 0)
            for p in made:
                fs3fs.meta.unlink(p)
            churned += 1
            churning.set()
            i += 1

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        churning.wait(60)
        seen = [e.name for e in fs3fs.meta.iter_listdir(path, page=250)]
        stream = DirStream(fs3fs.meta.list_page, page=300)
        streamed, cookie = [], 0
        while batch := stream.from_cookie(path, cookie)[:37]:  # the kernel takes what fits
            streamed += [entry.name for _, entry in batch]
            cookie = batch[-1][0]
    finally:
        stop.set()
        worker.join()
    assert churned > 0
    fixed = set(names)
    for listing in (seen, streamed):
        assert len(listing) == len(set(listing))  # no entry twice
        assert listing == sorted(listing)
        assert [n for n in listing if n in fixed] == names  # none of the fixed skipped


def test_a_directory_stream_resumes_from_any_cookie(
    fs3fs: FS3FileSystem, big_dir: tuple[str, list[str]]
) -> None:
    path, names = big_dir
    stream = DirStream(fs3fs.meta.list_page, hidden=names[3], page=100)
    shown = [n for n in names if n != names[3]]
    first = stream.from_cookie(path, 0)  # a page of 100 names, one of them hidden
    assert [e.name for _, e in first] == shown[:99]
    assert [c for c, _ in first] == list(range(1, 100))
    # Past the page (the next one is read), back to an old cookie (counted again), the end.
    for cookie in (100, 250, 7, 12_345, len(shown) - 1):
        got = stream.from_cookie(path, cookie)
        assert got[0][0] == cookie + 1 and got[0][1].name == shown[cookie]
    assert stream.from_cookie(path, len(shown)) == []
