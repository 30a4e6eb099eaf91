"""Recovery: what targets report to mgmtd (capacity, resync progress), and a returning or
replaced target resynced from its predecessor before it serves reads."""

from __future__ import annotations

import threading
from typing import Any

from fs3.config import MgmtdConfig
from fs3.mgmtd.core import Mgmtd
from fs3.storage.engine import MemoryChunkEngine
from fs3.storage.target import StorageTarget
from fs3.storage.wire import DUMP, SYNC, Request
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
