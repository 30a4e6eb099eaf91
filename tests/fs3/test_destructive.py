"""Destructive commands check first: ``rm -r`` refuses before it touches anything and takes
a tree whole or not at all; a second ``hai fs3 up`` leaves a running cluster alone; ``hai fs3
down`` stops the cluster's processes also when some were restarted by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fs3.cli import fs3 as fs3_cli
from fs3.client import FS3FileSystem
from fs3.cluster import LocalCluster, running
from fs3.errors import InvalidArgument, NotFound
from fs3.meta.namespace import Namespace
from fs3.meta.store import MetaStore
from fs3.meta.trash import TRASH, Trash
from fs3.storage.local_read import socket_path

from ..second_account import invoke_as_nobody
from ..waiting import wait_for
from .conftest import SMALL_CHUNK

FS3 = [sys.executable, "-m", "fs3"]


def _fs3(*args: str) -> subprocess.CompletedProcess[str]:
    """``hai fs3 ARGS`` as a user runs it (a cluster it starts outlives it)."""
    return subprocess.run(FS3 + list(args), capture_output=True, text=True, timeout=120)


def _error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused command says; fails on anything else (a traceback)."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    return lines[0]


def _every_path(fs: FS3FileSystem) -> list[str]:
    return sorted(fs.find("/", withdirs=True))


@pytest.fixture
def tree_fs(make_cluster) -> FS3FileSystem:  # type: ignore[no-untyped-def]
    """A private cluster holding files at depths 1 to 4, and a trash entry."""
    cluster = make_cluster(targets=2, replicas=2)
    fs = FS3FileSystem(cluster.address, chunk_size=SMALL_CHUNK, skip_instance_cache=True)
    for path in ("/top.txt", "/a/one.txt", "/a/b/two.txt", "/a/b/c/three.txt", "/keep/x.txt"):
        fs.pipe_file(path, path.encode())
    fs.pipe_file("/old/file.txt", b"old")
    fs.trash("/old", 3600)
    return fs


def test_rm_r_root_leaves_every_file(tree_fs: FS3FileSystem) -> None:
    fs = tree_fs
    before = _every_path(fs)
    line = _error_line(_fs3("rm", "-r", "--address", fs.config.client.address, "/"))
    assert line == "Error: /: refusing to remove the root"
    assert _every_path(fs) == before
    with pytest.raises(InvalidArgument, match="root"):
        fs.rm("/", recursive=True)
    assert _every_path(fs) == before


def test_rm_r_refuses_up_front(tree_fs: FS3FileSystem) -> None:
    """What would be refused midway (the trash folder, a missing path, a directory without
    -r) is refused before the paths named before it go."""
    fs = tree_fs
    before = _every_path(fs)
    address = ["--address", fs.config.client.address]
    trash = _error_line(_fs3("rm", "-r", *address, "/a", TRASH, "/keep"))
    assert trash == f"Error: {TRASH}: refusing to remove the trash; its entries may go"
    missing = _error_line(_fs3("rm", "-r", *address, "/a", "/nope"))
    assert missing.startswith("Error: /nope: no such file or directory")
    assert (
        _error_line(_fs3("rm", *address, "/top.txt", "/a")) == "Error: /a: is a directory (use -r)"
    )
    assert _every_path(fs) == before
    with pytest.raises(InvalidArgument):
        fs.rm("/*", recursive=True)  # the glob takes in the trash folder
    with pytest.raises(OSError, match="not empty"):
        fs.rm(["/top.txt", "/a"])
    assert _every_path(fs) == before
    # What may go does, whole: a tree, a file, and a trash entry for good.
    (entry,) = fs.trash_list()
    done = _fs3("rm", "-r", *address, "/a", "/top.txt", f"{TRASH}/{entry.name}")
    assert done.returncode == 0, done.stderr
    assert _every_path(fs) == ["/", TRASH, "/keep", "/keep/x.txt"]
    assert fs.trash_list() == []


@pytest.fixture
def trash(store: MetaStore) -> Trash:
    return Trash(Namespace(store, chains=lambda: [1, 2]))


def test_a_tree_goes_in_one_transaction_and_is_purged(trash: Trash) -> None:
    ns = trash.ns
    ns.mkdir("/run/sub/deeper", parents=True)
    files = {ns.create(f"/run/{name}").id for name in ("a", "sub/b", "sub/deeper/c")}
    entry = trash.move("/run", 0)
    with pytest.raises(NotFound):
        ns.stat("/run")
    assert ns.listdir(TRASH) == []  # the holder and every inode below it are gone
    assert files <= {g.inode for _, g in ns.take_garbage()}  # their chunks are queued
    with pytest.raises(NotFound):
        trash.restore(entry.name)
    with pytest.raises(InvalidArgument):
        trash.move("/", 0)
    with pytest.raises(InvalidArgument):
        trash.move(TRASH, 0)


def test_a_holder_left_by_a_stopped_removal_is_finished_by_the_collector(
    trash: Trash, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Meta stopping between the detaching transaction and the last purge leaves an expired
    holder; no one can restore it, and the collector's purge deletes the rest."""
    ns = trash.ns
    ns.mkdir("/run/sub", parents=True)
    ns.create("/run/sub/a")
    with monkeypatch.context() as m:  # meta stops right after the detaching transaction
        m.setattr(trash, "_purge_holder", lambda name, holder_id, budget: 0)
        entry = trash.move("/run", 0)
    assert trash.list() == []
    with pytest.raises(NotFound, match="expired"):
        trash.restore(entry.name)
    assert trash.purge() == 4  # a, sub, run, the holder
    assert ns.listdir(TRASH) == []


def test_rm_recursive_deletes_the_chunks(cluster: LocalCluster, fs3fs: FS3FileSystem) -> None:
    fs3fs.pipe_file("/rm-tree/sub/big", b"x" * 2 * SMALL_CHUNK)
    inode = fs3fs.info("/rm-tree/sub/big")["inode"]
    fs3fs.rm("fs3:///rm-tree", recursive=True)
    assert not fs3fs.exists("/rm-tree")
    wait_for(
        "the removed file's chunk files to go",
        lambda: not list(cluster.root.glob(f"storage-*/*/{inode:016x}.*")),
        timeout=20,
    )


@pytest.fixture
def detached(tmp_path: Path) -> Iterator[Path]:
    """A cluster started by ``hai fs3 up --detach``, as a user starts one; always stopped."""
    root = tmp_path / "fs3"
    up = _fs3("up", str(root), "--targets", "2", "--replicas", "2", "--detach")
    try:
        assert up.returncode == 0, up.stderr
        yield root
    finally:
        for _, proc in running(root):
            proc.kill()


def test_a_second_up_is_refused_and_the_cluster_still_works(detached: Path) -> None:
    root = detached
    fs = FS3FileSystem((root / "address").read_text().strip(), skip_instance_cache=True)
    fs.pipe_file("/before.txt", b"written before")
    pids = (root / "pids.json").read_text()
    targets = [p for p in root.glob("storage-*") if p.is_dir()]
    sockets = {p: p.stat().st_ino for p in map(socket_path, targets)}
    # A staged (uncommitted) chunk version, as a write in flight leaves one.
    staged = next(root.glob("storage-1/*/*")).with_suffix(".p")
    staged.write_bytes(b"in flight")
    line = _error_line(_fs3("up", str(root), "--targets", "2", "--replicas", "2", "--detach"))
    assert line.startswith(f"Error: fs3 up: an fs3 cluster already runs in {root} (mgmtd (pid ")
    assert line.endswith(f"`hai fs3 down {root}` stops it")
    assert (root / "pids.json").read_text() == pids
    assert {p: p.stat().st_ino for p in sockets} == sockets
    assert staged.read_bytes() == b"in flight"
    assert fs.cat_file("/before.txt") == b"written before"
    fs.pipe_file("/after.txt", b"and after")
    assert fs.cat_file("/after.txt") == b"and after"
    staged.unlink()


def test_down_stops_a_process_restarted_by_hand(detached: Path) -> None:
    root = detached
    pids = json.loads((root / "pids.json").read_text())
    first = psutil.Process(pids["storage-2"])
    command = first.cmdline()
    first.kill()
    first.wait(timeout=30)
    # Restarted by hand with the command line `ps` showed for it, from another folder (not
    # the cluster's parent: its folder `fs3` would shadow the editable-installed package).
    by_hand = subprocess.Popen(
        command,
        cwd="/",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        assert ("storage-2", by_hand.pid) in [(n, p.pid) for n, p in running(root)]
        down = _fs3("down", str(root))
        assert down.returncode == 0, down.stderr
        assert f"storage-2 (pid {by_hand.pid})" in down.stdout
        assert f"mgmtd (pid {pids['mgmtd']})" in down.stdout
        assert f"pid {first.pid})" not in down.stdout  # gone before
        by_hand.wait(timeout=30)
        assert running(root) == [] and not (root / "pids.json").exists()
        assert _fs3("down", str(root)).stdout.strip() == f"no fs3 cluster runs in {root}"
    finally:
        if by_hand.poll() is None:
            by_hand.kill()
            by_hand.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid 65534 needs root")
def test_down_says_what_it_may_not_stop() -> None:
    parent = Path(tempfile.mkdtemp(prefix="fs3-down-"))
    parent.chmod(0o755)  # the second account may reach the folder, not what runs in it
    root = parent / "fs3"
    assert _fs3("up", str(root), "--targets", "1", "--replicas", "1", "--detach").returncode == 0
    try:
        found = sorted(f"{name} (pid {proc.pid})" for name, proc in running(root))
        code, out, err = invoke_as_nobody(fs3_cli, ["down", str(root)])
        assert (code, out) == (1, ""), err
        assert sorted(line.split(": it runs")[0] for line in err.splitlines()) == [
            f"Error: could not stop {label}" for label in found
        ]
        assert "it runs as root, and this account may not signal it" in err
        assert sorted(f"{n} (pid {p.pid})" for n, p in running(root)) == found
        down = _fs3("down", str(root))
        assert down.returncode == 0 and down.stdout.count("(pid ") == len(found) == 3
    finally:
        for _, proc in running(root):
            proc.kill()
