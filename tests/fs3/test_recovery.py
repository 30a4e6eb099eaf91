"""Recovery: what targets report to mgmtd (capacity, resync progress), and a returning or
replaced target resynced from its predecessor before it serves reads."""

from __future__ import annotations

import os
import shutil
import threading
from typing import Any

import pytest

from fs3.cli_admin import view
from fs3.client import FS3FileSystem
from fs3.cluster import LocalCluster
from fs3.config import MgmtdConfig
from fs3.mgmtd.core import Mgmtd
from fs3.storage.engine import MemoryChunkEngine
from fs3.storage.target import StorageTarget
from fs3.types import (
    Chain,
    ChainMember,
    ChunkId,
    ResyncProgress,
    RoutingTable,
    TargetInfo,
    TargetStats,
    capacity,
)
from fs3.wire.framing import Request
from fs3.wire.ops import DUMP, SYNC

from ..waiting import wait_for


def test_stats_ride_heartbeats_without_a_new_table_version() -> None:
    core = Mgmtd({1: [1, 2]}, MgmtdConfig())
    core.heartbeat(TargetInfo(1, "h", 10))
    version = core.heartbeat(TargetInfo(2, "h", 20)).version
    one = TargetStats(1, 1000, 400, 50, 2, "host:8:1")
    two = TargetStats(2, 1000, 390, 60, 2, "host:8:1", (ResyncProgress(1, 3, 5, 9),))
    for _ in range(3):
        assert core.heartbeat(TargetInfo(1, "h", 10), one).version == version
        assert core.heartbeat(TargetInfo(2, "h", 20), two).version == version
    assert core.stats() == [one, two]
    assert capacity(core.stats()) == (1000, 390)  # one file system under both: once
    assert capacity([one, TargetStats(3, 500, 100, 0, 0, "other:8:2")]) == (1500, 500)


class _Mgmtd:
    def __init__(self) -> None:
        self.done: list[tuple[int, int]] = []

    def sync_done(self, chain_id: int, target_id: int) -> None:
        self.done.append((chain_id, target_id))


class _Pool:
    """The successor: empty, and it stalls the 20th chunk copied until told to go on."""

    def __init__(self) -> None:
        self.copies = 0
        self.stalled, self.go = threading.Event(), threading.Event()

    def request(self, address: str, req: Request, payload: Any = b"") -> tuple[int, int, bytes]:
        if req.op == DUMP:
            return 0, 0, b""
        assert req.op == SYNC
        self.copies += 1
        if self.copies == 20:
            self.stalled.set()
            assert self.go.wait(10)
        return req.version, 0, b""


def test_resync_reports_its_progress_until_done() -> None:
    engine = MemoryChunkEngine()
    for i in range(50):
        engine.replace(ChunkId(1, 7, i), 1, b"x" * 10)
    mgmtd, pool = _Mgmtd(), _Pool()
    target = StorageTarget(1, engine, mgmtd, pool)  # type: ignore[arg-type]
    table = RoutingTable(
        version=3,
        targets={1: TargetInfo(1, "h", 1), 2: TargetInfo(2, "h", 2)},
        chains={1: Chain(1, (ChainMember(1, "serving"), ChainMember(2, "syncing")))},
    )
    target.start_resyncs(table)
    assert pool.stalled.wait(10)
    (progress,) = target.resync_progress()
    assert (progress.chain_id, progress.target_id, progress.total) == (1, 2, 50)
    assert 16 <= progress.done < 20
    pool.go.set()
    for _ in range(100):
        if mgmtd.done:
            break
        threading.Event().wait(0.05)
    assert mgmtd.done == [(1, 2)] and target.resync_progress() == () and pool.copies == 50


def _core(chains: dict[int, list[int]]) -> Mgmtd:
    return Mgmtd(chains, MgmtdConfig())


def _synced(core: Mgmtd) -> RoutingTable:
    """The table once every syncing member finished its resync."""
    for chain in core.routing().chains.values():
        for m in chain.members:
            if m.state == "syncing":
                core.sync_done(chain.chain_id, m.target_id)
    return core.routing()


def _states(table: RoutingTable, chain_id: int) -> list[tuple[int, str]]:
    return [(m.target_id, m.state) for m in table.chains[chain_id].members]


def test_a_known_target_back_empty_is_rebuilt_once_per_boot() -> None:
    core = _core({1: [1, 2, 3], 2: [2, 3, 1]})
    for t in (1, 2, 3):
        core.heartbeat(TargetInfo(t, "h", t), fresh=True, boot=f"first-{t}")  # a new cluster
    table = _synced(core)
    assert _states(table, 1) == [(1, "serving"), (2, "serving"), (3, "serving")]
    # Target 2's disk is replaced and it restarts within its lease: it must not serve.
    table = core.heartbeat(TargetInfo(2, "h", 2), fresh=True, boot="second")
    assert _states(table, 1) == [(1, "serving"), (3, "serving"), (2, "syncing")]
    assert _states(table, 2) == [(3, "serving"), (1, "serving"), (2, "syncing")]
    assert 2 not in table.chains[1].readers() and table.chains[1].writers() == (1, 3, 2)
    core.sync_done(1, 2)
    table = core.heartbeat(TargetInfo(2, "h", 2), fresh=True, boot="second")  # same boot
    assert _states(table, 1)[-1] == (2, "serving") and _states(table, 2)[-1] == (2, "syncing")
    table = core.heartbeat(TargetInfo(2, "h", 2), fresh=False, boot="third")  # its disk kept
    assert _states(table, 1)[-1] == (2, "serving")


def test_a_chain_whose_members_all_came_back_empty_serves_again() -> None:
    clock = [0.0]
    core = Mgmtd({1: [1, 2]}, MgmtdConfig(lease_s=3.0), clock=lambda: clock[0])
    for t in (1, 2):
        core.heartbeat(TargetInfo(t, "h", t), boot="a")
    _synced(core)
    table = core.heartbeat(TargetInfo(1, "h", 1), fresh=True, boot="b")
    assert _states(table, 1) == [(2, "serving"), (1, "syncing")]
    clock[0] = 10.0  # target 2 went silent: offline, and target 1 holds nothing
    core.heartbeat(TargetInfo(1, "h", 1), boot="b")
    table = core.check_leases()
    assert _states(table, 1) == [(1, "syncing"), (2, "offline")]
    assert table.chains[1].writers() == () and table.chains[1].readers() == ()
    # Target 2 returns with its disk: it serves and target 1 is rebuilt from it.
    table = core.heartbeat(TargetInfo(2, "h", 2), boot="c")
    assert _states(table, 1) == [(1, "syncing"), (2, "serving")]
    # Had it returned empty too, nothing would be left to wait for: the head serves.
    core2 = _core({1: [1, 2]})
    for t in (1, 2):
        core2.heartbeat(TargetInfo(t, "h", t), boot="a")
    _synced(core2)
    core2.heartbeat(TargetInfo(1, "h", 1), fresh=True, boot="b")
    table = core2.heartbeat(TargetInfo(2, "h", 2), fresh=True, boot="b")
    assert [s for _, s in _states(table, 1)].count("serving") == 1


@pytest.mark.slow
def test_a_wiped_target_is_rebuilt_before_it_serves(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c: LocalCluster = make_cluster()
    fs = FS3FileSystem(c.address, chunk_size=16 * 1024, skip_instance_cache=True)
    files = {f"/rebuild/f{i}": os.urandom(100_000 + 997 * i) for i in range(40)}
    for path, data in files.items():
        fs.pipe_file(path, data)
    c.kill("storage-2")
    shutil.rmtree(c.root / "storage-2")  # the disk is replaced: same id, nothing on it
    c.start_process("storage-2")

    # Readers all along: a replica that served before it was rebuilt would hand out holes.
    stop, bad, reads = threading.Event(), [], [0]

    def read() -> None:
        reader = FS3FileSystem(c.address, skip_instance_cache=True)
        while not stop.is_set():
            for path, data in files.items():
                if reader.cat_file(path) != data:
                    bad.append(path)
                reads[0] += 1

    reader = threading.Thread(target=read)
    reader.start()
    seen: set[str] = set()

    def rebuilt() -> bool:
        v = view(c.address, None)
        states = {ch.state_of(2) for ch in v.table.chains.values()}
        seen.update(states, {"progress" for s in v.stats.values() if s.resyncs})
        return states == {"serving"} and "syncing" in seen

    try:
        # Every 20 ms: the syncing state, which must be seen, may last well under a second.
        wait_for("target 2 to sync and then serve in every chain", rebuilt, 60, interval=0.02)
    finally:
        stop.set()
        reader.join(60)
    assert not bad and reads[0] > 0, (seen, bad)
    marker = c.root / "storage-2" / "target.json"
    # Written at the heartbeat that finds it serving.
    wait_for(f"target 2 to write {marker}", marker.exists, timeout=30)

    # Target 2 alone now: every chunk from it, each checked against its CRC32C.
    c.kill("storage-1")
    c.kill("storage-3")
    wait_for(
        "mgmtd to count targets 1 and 3 dead",
        lambda: not any(fs.mgmtd.refresh().targets[t].alive for t in (1, 3)),
        timeout=15,
    )
    for path, data in files.items():
        assert fs.cat_file(path) == data
    assert fs.chunks.bad_replicas == []
