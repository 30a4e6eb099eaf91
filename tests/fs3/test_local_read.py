"""Zero-copy local reads: chunk files passed as descriptors over each target's Unix socket.

Against real storage processes: the bytes equal the TCP path's, the local path is the one
used (its counters), corruption found there is handled as a TCP read's, a write racing local
reads never shows a mix of versions, and every way the local path can be missing falls back
to TCP without an error.
"""

from __future__ import annotations

import os
import random
import resource
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest

import fs3.client.local_read as local_read
from fs3 import capabilities as caps
from fs3.client import FS3FileSystem
from fs3.client.chunks import read_order
from fs3.client.local_read import LocalReads, LocalReadStats, read_chunk_file
from fs3.client.mapped import is_mapped
from fs3.cluster import LocalCluster
from fs3.config import Timeouts
from fs3.errors import ChecksumMismatch, ChunkBusy, Fs3Error
from fs3.local_bench import RATIOS, format_table, measure, medians
from fs3.storage.local import HEADER_SIZE, LocalChunkEngine
from fs3.storage.local_read import socket_path
from fs3.types import ChunkId, RoutingTable, TargetInfo
from fs3.wire.checksum import BLOCK_SIZE
from fs3.wire.client import ConnectionPool
from fs3.wire.framing import Request
from fs3.wire.ops import READ
from fs3.wire.server import FrameServer

from ..waiting import wait_for
from .conftest import SMALL_CHUNK


def _fs(cluster: LocalCluster, local: bool = True) -> FS3FileSystem:
    fs = FS3FileSystem(cluster.address, chunk_size=SMALL_CHUNK, skip_instance_cache=True)
    if not local:
        fs.chunks.local = None
    return fs


def _stats(fs: FS3FileSystem) -> LocalReadStats:
    assert fs.chunks.local is not None
    return fs.chunks.local.stats


def _sockets(cluster: LocalCluster) -> dict[int, Path]:
    return {i: socket_path(cluster.root / f"storage-{i}") for i in range(1, cluster.targets + 1)}


def _chunk_file(cluster: LocalCluster, target: int, chain: int, inode: int, index: int) -> Path:
    return cluster.root / f"storage-{target}" / str(chain) / f"{inode:016x}.{index:08x}"


def test_local_reads_return_what_tcp_reads_return(cluster: LocalCluster) -> None:
    local_fs, tcp_fs = _fs(cluster), _fs(cluster, local=False)
    data = os.urandom(7 * SMALL_CHUNK + 12_345)
    local_fs.pipe_file("/lr/same", data)
    assert local_fs.cat_file("/lr/same") == tcp_fs.cat_file("/lr/same") == data
    rng = random.Random(5)
    with local_fs.open("/lr/same", "rb") as a, tcp_fs.open("/lr/same", "rb") as b:
        for _ in range(60):  # ranges inside blocks, across blocks and across chunks
            offset, length = rng.randrange(len(data)), rng.randrange(1, 3 * BLOCK_SIZE)
            a.seek(offset)
            b.seek(offset)
            assert a.read(length) == b.read(length) == data[offset : offset + length]
    # Grown by truncate: the chunks past the old end are holes on every target.
    local_fs.truncate("/lr/same", len(data) + 2 * SMALL_CHUNK)
    grown = data + bytes(2 * SMALL_CHUNK)
    assert local_fs.cat_file("/lr/same") == tcp_fs.cat_file("/lr/same") == grown
    stats = _stats(local_fs)
    assert stats.reads > 60 and stats.bytes > len(data)
    assert stats.fallbacks == 0 and stats.checksum_failures == 0
    local_fs.rm("/lr/same")


def test_local_reads_follow_the_preferred_replica_order(cluster: LocalCluster) -> None:
    fs = _fs(cluster)
    chunks = 12
    fs.pipe_file("/lr/order", os.urandom(chunks * SMALL_CHUNK))
    inode = fs.meta.stat("/lr/order")
    table = fs.mgmtd.refresh()
    expected = Counter(
        read_order(table, inode.layout.chain_of(i), inode.id, i)[0] for i in range(chunks)
    )
    fs.cat_file("/lr/order")  # one sequential pass: every chunk read once, ahead of need
    assert Counter(_stats(fs).by_target) == expected
    assert len(expected) > 1  # the chunks spread over several targets, all read locally
    fs.rm("/lr/order")


def test_flipped_byte_found_locally_is_served_from_another_replica(cluster: LocalCluster) -> None:
    fs = _fs(cluster)
    data = os.urandom(4 * SMALL_CHUNK)
    fs.pipe_file("/lr/flip", data)
    inode = fs.meta.stat("/lr/flip")
    table = fs.mgmtd.refresh()
    bad = []
    # Chunk 0: a byte of its second block; chunk 1: its header's magic. Each on the replica
    # the read tries first, flipped in place (the way a disk would, without a new file).
    for index, position in ((0, HEADER_SIZE + BLOCK_SIZE + 7), (1, 0)):
        chain = inode.layout.chain_of(index)
        first = read_order(table, chain, inode.id, index)[0]
        with open(_chunk_file(cluster, first, chain, inode.id, index), "r+b") as f:
            f.seek(position)
            byte = f.read(1)[0]
            f.seek(position)
            f.write(bytes([byte ^ 0x10]))
        bad.append((first, chain, inode.id, index))
    for _ in range(3):
        assert fs.cat_file("/lr/flip") == data
    for replica in bad:
        assert replica in fs.chunks.bad_replicas
    stats = _stats(fs)
    assert stats.checksum_failures >= 2 * 3 and stats.reads > 0
    # The target hears of it and logs it, as it logs a mismatch a TCP read finds.
    log = cluster.root / f"storage-{bad[0][0]}.log"
    wait_for(
        f"{log.name} to log the mismatch a local client found",
        lambda: "on a local client" in log.read_text(),
        timeout=10,
    )
    assert f"chunk ({bad[0][1]}, {inode.id}, 0)" in log.read_text()
    fs.rm("/lr/flip")


@pytest.mark.parametrize("mapped", [False, True], ids=["copied", "mapped"])
def test_writes_racing_local_reads_never_show_a_mix(cluster: LocalCluster, mapped: bool) -> None:
    """Mapped, each read's view is also held across the next: a later version, renamed over
    the file it maps, must not show through it."""
    reader, writer = _fs(cluster), _fs(cluster, local=False)
    writer.pipe_file("/lr/race", bytes(2 * SMALL_CHUNK))
    inode = reader.meta.open("/lr/race")  # the reader's capability
    done = threading.Event()
    problems: list[object] = []
    seen: list[set[int]] = [set(), set()]

    def write() -> None:
        try:
            for k in range(1, 31):  # whole chunks of one repeated byte, k, as version k
                for index in (0, 1):
                    writer.chunks.write(
                        inode.layout, inode.id, index, 0, bytes([k]) * SMALL_CHUNK, True
                    )
        finally:
            done.set()

    def read(index: int) -> None:
        last, held = 0, (memoryview(b""), b"")
        while not done.is_set() and not problems:
            view = reader.chunks.read(inode.layout, inode.id, index, 0, SMALL_CHUNK, mapped)
            got = bytes(view)
            if is_mapped(view) != mapped or bytes(held[0]) != held[1]:
                problems.append((index, "mapped", is_mapped(view), "changed", held[1][:1]))
            held = (view, got)
            values = set(got)
            if len(got) != SMALL_CHUNK or len(values) != 1:
                problems.append((index, len(got), sorted(values)[:5]))
            elif got[0] < last:  # CRAQ: a later read never sees an older version
                problems.append((index, "went back", last, got[0]))
            else:
                last = got[0]
                seen[index].add(last)

    threads = [threading.Thread(target=write)]
    threads += [threading.Thread(target=read, args=(i,)) for i in (0, 1, 0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not problems
    assert all(len(s) > 1 for s in seen)  # the reads did overlap the writes
    stats = _stats(reader)
    assert stats.reads >= sum(map(len, seen)) and stats.fallbacks == 0
    # A torn read would fail its block CRCs (and be read again elsewhere): none may.
    assert stats.checksum_failures == 0 and not reader.chunks.bad_replicas
    writer.rm("/lr/race")


def test_a_local_read_after_a_newer_one_never_sees_an_older_version(
    cluster: LocalCluster,
) -> None:
    """CRAQ through the local path: the tail commits first, so a read of the head right after
    one of the tail must not return the head's older committed version (the head answers
    busy while its newer version is pending)."""
    reader, writer = _fs(cluster), _fs(cluster, local=False)
    writer.pipe_file("/lr/craq", bytes(SMALL_CHUNK))
    inode = reader.meta.open("/lr/craq")  # the reader's capability
    chain = inode.layout.chain_of(0)
    local = reader.chunks.local
    assert local is not None
    done = threading.Event()
    problems: list[object] = []
    busy = 0

    def write() -> None:
        try:
            for k in range(1, 41):
                writer.chunks.write(inode.layout, inode.id, 0, 0, bytes([k]) * SMALL_CHUNK, True)
        finally:
            done.set()

    def read(target: int) -> int:
        nonlocal busy
        while True:
            table = reader.mgmtd.table()
            capability = reader.chunks.grants.get(inode.id, caps.READ)
            req = Request(
                READ, chain, table.version, inode.id, 0, 0, SMALL_CHUNK, capability=capability
            )
            try:
                got = local.read(table, target, req)
            except ChunkBusy:
                busy += 1
                continue
            assert got is not None, "local path not used"
            return bytes(got)[0]

    thread = threading.Thread(target=write)
    thread.start()
    head, *_, tail = reader.mgmtd.table().chains[chain].writers()
    while not done.is_set() and not problems:
        newer = read(tail)
        older = read(head)
        if older < newer:
            problems.append((newer, older))
    thread.join(60)
    assert not problems
    assert busy > 0  # the head was caught with a pending version at least once
    writer.rm("/lr/craq")


@pytest.mark.parametrize("local", [True, False], ids=["local", "tcp"])
def test_forked_child_reads_on_connections_of_its_own(cluster: LocalCluster, local: bool) -> None:
    fs = _fs(cluster, local)
    chunks = 6
    data = os.urandom(chunks * SMALL_CHUNK)
    fs.pipe_file("/lr/fork", data)
    inode = fs.meta.open("/lr/fork")

    def check(rounds: int) -> bool:
        for _ in range(rounds):
            for i in range(chunks):
                got = fs.chunks.read(inode.layout, inode.id, i, 0, SMALL_CHUNK)
                if bytes(got) != data[i * SMALL_CHUNK : (i + 1) * SMALL_CHUNK]:
                    return False
        return True

    def reads() -> int:
        return _stats(fs).reads if local else 0

    assert check(1)  # the parent's pools now hold a connection to each target
    before = reads()
    child = os.fork()
    if child == 0:  # the child reads through the inherited client at the same time
        ok = check(50) and (not local or reads() >= before + 50 * chunks)
        os._exit(0 if ok else 1)
    try:
        assert check(50)
    finally:
        try:
            _, status = wait_for(
                "the forked reader to exit",
                lambda: (reaped := os.waitpid(child, os.WNOHANG))[0] == child and reaped,
                timeout=60,
            )
        except AssertionError:
            os.kill(child, 9)
            os.waitpid(child, 0)
            raise
    assert os.waitstatus_to_exitcode(status) == 0
    if local:
        assert _stats(fs).reads == before + 50 * chunks and _stats(fs).fallbacks == 0
    fs.rm("/lr/fork")


def _committed_chunk(root: Path, cid: ChunkId, data: bytes) -> tuple[LocalChunkEngine, int]:
    """An engine under ``root`` holding ``data`` as version 1 of ``cid``, and a descriptor
    of its chunk file as a target passes one to a local client."""
    engine = LocalChunkEngine(root, fsync=False)
    engine.write(cid, 1, data, 0, True)
    engine.commit(cid, 1)
    fd = engine.open_committed(cid)
    assert fd is not None
    return engine, fd


def test_a_passed_descriptor_keeps_reading_its_version(tmp_path: Path) -> None:
    cid = ChunkId(1, 7, 0)
    v1 = os.urandom(3 * BLOCK_SIZE + 5)
    engine, held = _committed_chunk(tmp_path, cid, v1)
    try:
        engine.write(cid, 2, b"x" * 100, 0, False)  # staged beside it...
        assert bytes(read_chunk_file(held, 0, len(v1), "v1")) == v1
        engine.commit(cid, 2)  # ...then renamed over it
        newer = engine.open_committed(cid)
        assert newer is not None
        assert bytes(read_chunk_file(newer, 0, len(v1), "v2")) == b"x" * 100 + v1[100:]
        os.close(newer)
        engine.replace(cid, 1, b"resynced")  # resync's replace, then removal
        engine.remove(cid.chain, cid.inode)
        assert engine.open_committed(cid) is None
        for offset, length in ((0, len(v1)), (BLOCK_SIZE - 3, 10), (2 * BLOCK_SIZE, 1 << 20)):
            got = read_chunk_file(held, offset, length, "v1")
            assert bytes(got) == v1[offset : offset + length]
        assert read_chunk_file(held, len(v1), 10, "v1") == b""
    finally:
        os.close(held)


@pytest.mark.parametrize("mapped", [False, True], ids=["copied", "mapped"])
def test_a_chunk_file_cut_short_fails_its_check_and_a_whole_one_is_read_once(
    tmp_path: Path, mapped: bool
) -> None:
    cid = ChunkId(1, 8, 0)
    data = os.urandom(3 * BLOCK_SIZE + 5)
    _, fd = _committed_chunk(tmp_path, cid, data)
    try:
        whole = read_chunk_file(fd, 0, len(data), "whole", mapped)
        assert isinstance(whole, memoryview) and bytes(whole) == data
        if mapped:  # no copy: the file's own pages
            assert is_mapped(whole)
        else:  # one copy: the page cache's bytes land in one bytes object the view covers
            assert isinstance(whole.obj, bytes) and whole.obj == data
        # Only what no committed chunk file ever does, cutting it in place, may take pages
        # from under a mapping (SIGBUS if read): this test lets go of it first.
        del whole
        # The file loses its tail (mid-block, then at a block boundary): a short block, or
        # a missing one, fails as a flipped byte does, never reads as a shorter chunk.
        for keep in (HEADER_SIZE + 2 * BLOCK_SIZE + 100, HEADER_SIZE + 2 * BLOCK_SIZE):
            os.truncate(tmp_path / str(cid.chain) / f"{cid.inode:016x}.{cid.index:08x}", keep)
            for offset, length in ((0, len(data)), (2 * BLOCK_SIZE + 200, 10)):
                with pytest.raises(ChecksumMismatch, match="block 2 fails CRC32C"):
                    read_chunk_file(fd, offset, length, "cut", mapped)
            start = read_chunk_file(fd, 0, BLOCK_SIZE, "cut", mapped)
            assert bytes(start) == data[:BLOCK_SIZE] and is_mapped(start) == mapped
            del start
    finally:
        os.close(fd)


def _mappings_of(path: Path) -> int:
    """How many of this process's mappings show ``path`` (renamed over or not)."""
    with open("/proc/self/maps") as maps:
        return sum(str(path) in line for line in maps)


def test_a_mapped_read_is_checked_and_unmapped_when_its_last_view_goes(tmp_path: Path) -> None:
    cid = ChunkId(1, 9, 0)
    data = os.urandom(3 * BLOCK_SIZE + 5)
    engine, fd = _committed_chunk(tmp_path, cid, data)
    path = tmp_path / str(cid.chain) / f"{cid.inode:016x}.{cid.index:08x}"
    try:
        part = read_chunk_file(fd, BLOCK_SIZE + 7, 100, "part", mapped=True)
        assert is_mapped(part) and bytes(part) == data[BLOCK_SIZE + 7 : BLOCK_SIZE + 107]
        assert _mappings_of(path) == 1
        piece = part[10:20]
        del part
        assert _mappings_of(path) == 1 and bytes(piece) == data[BLOCK_SIZE + 17 : BLOCK_SIZE + 27]
        del piece
        assert _mappings_of(path) == 0
        # A byte of block 1 flipped in place, as a disk would: the mapping shows it, and
        # the block's check fails as it does for copied bytes.
        with open(path, "r+b") as f:
            f.seek(HEADER_SIZE + BLOCK_SIZE + 3)
            f.write(bytes([data[BLOCK_SIZE + 3] ^ 1]))
        for mapped in (True, False):
            with pytest.raises(ChecksumMismatch, match="block 1 fails CRC32C"):
                read_chunk_file(fd, 0, len(data), "flipped", mapped)
        assert _mappings_of(path) == 0  # nothing stays mapped after a failed check
    finally:
        os.close(fd)
        del engine


def test_a_read_that_may_not_lock_memory_is_copied_instead(tmp_path: Path) -> None:
    """A mapping is used only when it can be locked; an unprivileged process whose memlock
    limit is 0 (a real limit, set in a child) reads the same bytes by copying."""
    data = os.urandom(2 * BLOCK_SIZE)
    _, fd = _committed_chunk(tmp_path, ChunkId(1, 10, 0), data)
    child = os.fork()
    if child == 0:
        code = 3
        try:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
            if os.geteuid() == 0:
                os.setuid(65534)  # root locks memory whatever its limit (CAP_IPC_LOCK)
            got = read_chunk_file(fd, 0, len(data), "limited", mapped=True)
            code = 0 if bytes(got) == data and not is_mapped(got) else 1
        except OSError:
            code = 2  # could not drop root here
        finally:
            os._exit(code)
    os.close(fd)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 2:
        pytest.skip("this container does not let root become an unprivileged user")
    assert code == 0, "the read was mapped despite the limit, or read other bytes"


def test_missing_or_unreachable_socket_falls_back_to_tcp(cluster: LocalCluster) -> None:
    data = os.urandom(9 * SMALL_CHUNK)
    _fs(cluster).pipe_file("/lr/fallback", data)
    sockets = _sockets(cluster)
    away = {i: p.with_name(p.name + ".away") for i, p in sockets.items()}
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        for i, path in sockets.items():
            path.rename(away[i])
        # Target 1: nothing at its path. Target 2: a socket nobody accepts on. Target 3:
        # target 1's socket at its path (another container's target at the same path).
        dead.bind(str(sockets[2]))
        os.link(away[1], sockets[3])
        fs = _fs(cluster)
        assert fs.cat_file("/lr/fallback") == data
        stats = _stats(fs)
        assert stats.reads == 0 and stats.fallbacks >= 1
        failed = stats.fallbacks
        assert fs.cat_file("/lr/fallback") == data
        assert stats.fallbacks == failed  # a failed target is not tried again at every read
    finally:
        dead.close()
        sockets[2].unlink(missing_ok=True)
        sockets[3].unlink(missing_ok=True)
        for i, path in sockets.items():
            away[i].rename(path)
    fs = _fs(cluster)
    assert fs.cat_file("/lr/fallback") == data
    assert _stats(fs).reads > 0 and _stats(fs).fallbacks == 0
    fs.rm("/lr/fallback")


@pytest.mark.skipif(os.geteuid() == 0, reason="root connects to a socket whatever its mode")
def test_socket_without_permission_falls_back_to_tcp(cluster: LocalCluster) -> None:
    data = os.urandom(3 * SMALL_CHUNK)
    _fs(cluster).pipe_file("/lr/denied", data)
    sockets = _sockets(cluster).values()
    try:
        for path in sockets:
            path.chmod(0)
        fs = _fs(cluster)
        assert fs.cat_file("/lr/denied") == data
        assert _stats(fs).reads == 0 and _stats(fs).fallbacks >= 1
    finally:
        for path in sockets:
            path.chmod(0o660)
    _fs(cluster).rm("/lr/denied")


def test_client_on_another_machine_reads_over_tcp(cluster: LocalCluster) -> None:
    fs = _fs(cluster)
    fs.chunks.local = LocalReads(fs.pool, fs.config.timeouts, machine="another-boot/another-host")
    data = os.urandom(3 * SMALL_CHUNK)
    fs.pipe_file("/lr/remote", data)
    assert fs.cat_file("/lr/remote") == data
    assert _stats(fs) == LocalReadStats()  # not local: not even a failed attempt
    fs.rm("/lr/remote")


def test_target_without_local_reads_is_read_over_tcp() -> None:
    def refuse(req: Request, payload: memoryview) -> tuple[bytes, bytes]:
        raise Fs3Error(f"unknown data-path op {req.op}")  # what a target from before answers

    server = FrameServer(("127.0.0.1", 0), lambda req: 0, refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        table = RoutingTable(1, {1: TargetInfo(1, "127.0.0.1", port, alive=True)})
        local = LocalReads(ConnectionPool(1.0, 1.0), Timeouts())
        assert local.read(table, 1, Request(READ, 1, 1, 9, 0, 0, 100)) is None
        assert local.stats == LocalReadStats()
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_restarted_target_is_read_locally_again(make_cluster, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(local_read, "RECHECK_S", 0.3)
    c: LocalCluster = make_cluster(replicas=1)
    fs = _fs(c)
    data = os.urandom(6 * SMALL_CHUNK)
    fs.pipe_file("/restart", data)
    assert fs.cat_file("/restart") == data
    before = dict(_stats(fs).by_target)
    assert before.get(1)
    c.kill("storage-1")
    c.start_process("storage-1")
    c.wait_ready(60)
    # The pooled connection to the old process is dead: those reads go over TCP (retried
    # until the new process listens; mgmtd may still hold the old one's lease)...
    assert fs.cat_file("/restart") == data

    # ...and soon (RECHECK_S, or 1 s after a probe the new process did not answer yet) the
    # new process's socket is found and used.
    def read_locally() -> bool:
        assert fs.cat_file("/restart") == data
        return _stats(fs).by_target[1] > before[1]

    wait_for("reads from target 1 to take its new process's local path", read_locally, 10)


def test_local_bench_measures_both_paths(cluster: LocalCluster) -> None:
    results = measure(cluster, os.urandom(8 << 20), rounds=1, seconds=0.05)
    for key in ("local MB/s", "tcp MB/s", "disk MB/s", "local CPU s/GB", *RATIOS):
        assert len(results[key]) == 1 and results[key][0] > 0
    assert "local path local/tcp" in medians(results)
    assert "fs3 r3" in format_table({"fs3 r3": results}, 8, 1)
