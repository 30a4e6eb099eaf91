"""Directory quotas: the namespace rules on every metadata store, usage kept exact under
concurrent operations, and EDQUOT through the fsspec client on a real cluster (the FUSE
mount's EDQUOT is in test_fuse.py)."""

from __future__ import annotations

import errno
import os
import random
import threading
from pathlib import Path

import pytest

from fs3.client import FS3FileSystem
from fs3.errors import NotADirectory, NotFound, QuotaExceeded
from fs3.meta.namespace import Namespace
from fs3.meta.quota import usage_below
from fs3.types import Quota

from .conftest import SMALL_CHUNK


def _used(ns: Namespace, path: str) -> tuple[int, int]:
    q = ns.stat(path).quota
    assert q is not None
    return q.used_bytes, q.used_inodes


def _measured(ns: Namespace, path: str) -> tuple[int, int]:
    """What a fresh walk finds below ``path``."""
    inode = ns.stat(path)
    return ns.store.run(lambda txn: usage_below(txn, inode))


def test_limits_are_enforced_and_usage_follows_every_change(ns: Namespace) -> None:
    ns.mkdir("/q/old", parents=True)
    ns.set_length(ns.create("/q/old/f").id, 30)
    q = ns.set_quota("/q", max_bytes=100, max_inodes=5).quota
    assert q == Quota(100, 5, 30, 2)  # what was there already is measured
    f = ns.create("/q/f")
    ns.set_length(f.id, 50)
    assert _used(ns, "/q") == (80, 3)
    with pytest.raises(QuotaExceeded) as info:
        ns.set_length(f.id, 71)
    assert info.value.errno == errno.EDQUOT and "/q" in str(info.value)
    assert ns.stat("/q/f").length == 50 and _used(ns, "/q") == (80, 3)  # nothing recorded
    with pytest.raises(QuotaExceeded):
        ns.truncate("/q/f", 71)
    assert ns.length_limit(f.id) == 70
    ns.mkdir("/q/d")
    ns.symlink("/q/d/l", "/q/f")
    with pytest.raises(QuotaExceeded) as info:
        ns.create("/q/d/g")
    assert info.value.filename == "/q/d/g" and "limit of 5 inodes on /q" in str(info.value)
    with pytest.raises(QuotaExceeded):
        ns.mkdir("/q/d/e/f", parents=True)
    assert ns.create("/q/f").length == 0  # replacing a file adds no inode and frees bytes
    assert _used(ns, "/q") == (30, 5)
    ns.unlink("/q/d/l")
    ns.rmdir("/q/d")
    assert _used(ns, "/q") == (30, 3) == _measured(ns, "/q")
    assert ns.length_limit(ns.create("/outside").id) is None


def test_renames_move_usage_between_quotas(ns: Namespace) -> None:
    ns.mkdir("/a/inner", parents=True)
    ns.mkdir("/b")
    ns.set_quota("/a", max_inodes=100)
    ns.set_quota("/a/inner", max_bytes=1000)
    ns.set_quota("/b", max_bytes=25)
    ns.mkdir("/a/inner/tree/deep", parents=True)
    ns.set_length(ns.create("/a/inner/tree/deep/f").id, 20)
    assert _used(ns, "/a") == (20, 4) and _used(ns, "/a/inner") == (20, 3)
    ns.rename("/a/inner/tree", "/a/tree")  # leaves /a/inner, stays in /a
    assert _used(ns, "/a") == (20, 4) and _used(ns, "/a/inner") == (0, 0)
    ns.rename("/a/tree", "/b/tree")
    assert _used(ns, "/a") == (0, 1) and _used(ns, "/b") == (20, 3)
    ns.set_length(ns.create("/a/big").id, 10)
    with pytest.raises(QuotaExceeded):
        ns.rename("/a/big", "/b/big")  # 30 bytes would pass /b's 25
    assert ns.stat("/a/big").length == 10 and _used(ns, "/b") == (20, 3)
    ns.rename("/a/inner", "/b/inner")  # a directory with a quota moves by its usage
    assert _used(ns, "/b") == (20, 4)
    ns.set_length(ns.create("/b/victim").id, 5)
    ns.rename("/b/tree/deep/f", "/b/victim")  # the replaced file's bytes are released
    assert _used(ns, "/b") == (20, 4) == _measured(ns, "/b")
    assert ns.set_quota("/b", max_bytes=0).quota is None
    with pytest.raises(NotADirectory):
        ns.set_quota("/a/big", max_bytes=1)
    with pytest.raises(NotFound):
        ns.set_quota("/nope", max_bytes=1)


def test_a_lowered_limit_stops_growth_but_not_deletes(ns: Namespace) -> None:
    ns.mkdir("/q")
    ids = [ns.create(f"/q/f{i}").id for i in range(3)]
    for i in ids:
        ns.set_length(i, 10)
    ns.set_quota("/q", max_bytes=15, max_inodes=2)
    with pytest.raises(QuotaExceeded):
        ns.create("/q/more")
    with pytest.raises(QuotaExceeded):
        ns.set_length(ids[0], 11)
    ns.set_length(ids[0], 5)  # shrinking is always allowed
    ns.unlink("/q/f1")
    ns.unlink("/q/f2")
    assert _used(ns, "/q") == (5, 1)
    ns.create("/q/more")


def test_usage_stays_exact_under_concurrent_operations(ns: Namespace) -> None:
    ns.mkdir("/q/a", parents=True)
    ns.mkdir("/q/b")
    ns.mkdir("/out")
    ns.set_quota("/q", max_bytes=10**9, max_inodes=10**6)
    ns.set_quota("/q/a", max_bytes=10**9)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        rng = random.Random(k)
        try:
            for i in range(12):
                home = rng.choice(["/q/a", "/q/b", "/out"])
                f = ns.create(f"{home}/f{k}-{i}")
                ns.set_length(f.id, rng.randrange(1, 1000))
                there = rng.choice(["/q/a", "/q/b", "/out"])
                ns.rename(f"{home}/f{k}-{i}", f"{there}/f{k}-{i}")
                if i % 3 == 0:
                    ns.unlink(f"{there}/f{k}-{i}")
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert _used(ns, "/q") == _measured(ns, "/q")
    assert _used(ns, "/q/a") == _measured(ns, "/q/a")


def check_quota_on_cluster(fs: FS3FileSystem, base: str) -> None:
    """EDQUOT at create and at write through the client; usage after deletes."""
    fs.mkdir(base)
    fs.set_quota(base, max_bytes=4 * SMALL_CHUNK, max_inodes=3)
    fs.pipe_file(f"{base}/one", b"x" * SMALL_CHUNK)
    fs.pipe_file(f"{base}/two", b"y" * 100)
    fs.mkdir(f"{base}/d")
    with pytest.raises(OSError) as info:
        fs.touch(f"{base}/d/three")
    assert info.value.errno == errno.EDQUOT and info.value.filename == f"{base}/d/three"
    with pytest.raises(OSError) as info, fs.open(f"{base}/two", "ab") as f:
        f.write(b"z" * SMALL_CHUNK)
        f.write(b"z" * 3 * SMALL_CHUNK)  # ships chunks past the limit: refused here
    assert info.value.errno == errno.EDQUOT and info.value.filename == f"{base}/two"
    assert fs.cat_file(f"{base}/two") == b"y" * 100 + b"z" * SMALL_CHUNK
    with pytest.raises(OSError) as info:
        fs.pipe_file(f"{base}/one", b"w" * 4 * SMALL_CHUNK)  # caught when the length is set
    assert info.value.errno == errno.EDQUOT and info.value.filename == f"{base}/one"
    assert fs.cat_file(f"{base}/one") == b""  # re-created empty; its bytes past 0 dropped
    q = fs.quota(base)
    assert q is not None and (q.used_bytes, q.used_inodes) == (100 + SMALL_CHUNK, 3)
    fs.rm(f"{base}/two")
    fs.rmdir(f"{base}/d")
    q = fs.quota(base)
    assert q is not None and (q.used_bytes, q.used_inodes) == (0, 1)
    fs.pipe_file(f"{base}/one", b"v" * 4 * SMALL_CHUNK)  # room again
    fs.rm(base, recursive=True)


def test_edquot_through_the_client(fs3fs: FS3FileSystem) -> None:
    check_quota_on_cluster(fs3fs, "/quota-client")


def test_a_copy_refused_by_a_quota_leaves_no_new_file(fs3fs: FS3FileSystem, tmp_path: Path) -> None:
    base = "/quota-copy"
    fs3fs.mkdir(base)
    fs3fs.set_quota(base, max_bytes=2 * SMALL_CHUNK)
    fs3fs.pipe_file(f"{base}/kept", b"k" * 100)
    data = os.urandom(4 * SMALL_CHUNK)
    (tmp_path / "big").write_bytes(data)
    fs3fs.pipe_file("/quota-copy-source", data)
    copies = {
        "put": lambda to: fs3fs.put_file(str(tmp_path / "big"), to),
        "cp": lambda to: fs3fs.cp_file("/quota-copy-source", to),
    }
    for how, copy in copies.items():
        with pytest.raises(OSError) as info:
            copy(f"{base}/new")
        assert info.value.errno == errno.EDQUOT, how
        assert not fs3fs.exists(f"{base}/new"), how
        q = fs3fs.quota(base)
        assert q is not None and (q.used_bytes, q.used_inodes) == (100, 1), (how, q)
    with pytest.raises(OSError):
        copies["put"](f"{base}/kept")
    assert fs3fs.exists(f"{base}/kept")  # there before: not this copy's to remove
    fs3fs.rm([base, "/quota-copy-source"], recursive=True)
