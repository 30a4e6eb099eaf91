"""mgmtd without a single point of failure: one primary by lease, fenced saves, standbys that
point at the primary, clients that fail over, and a primary killed while a write runs."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fs3.client import FS3FileSystem
from fs3.cluster import LocalCluster
from fs3.config import MgmtdConfig
from fs3.errors import Unavailable
from fs3.mgmtd.client import MgmtdClient
from fs3.mgmtd.election import MgmtdNode
from fs3.mgmtd.service import first_chains, for_caller
from fs3.mgmtd.store import MemoryMgmtdStore, MgmtdStore, SqlMgmtdStore
from fs3.types import SERVING, RoutingTable, TargetInfo

from ..waiting import wait_for
from .conftest import SMALL_CHUNK

MiB = 1 << 20
CONFIG = MgmtdConfig(lease_s=1.5, heartbeat_s=0.2, primary_lease_s=2.0)
CHAINS = {1: [1, 2], 2: [2, 1]}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_primary_standby_points_to_it_and_takes_over() -> None:
    clock = Clock()
    store = MemoryMgmtdStore(clock)
    a = MgmtdNode(store, "host-a:1", CHAINS, CONFIG, clock)
    b = MgmtdNode(store, "host-b:2", CHAINS, CONFIG, clock)
    a.step()
    b.step()
    assert a.info()["role"] == "primary" and b.info()["role"] == "standby"
    with pytest.raises(Unavailable, match="the primary is at host-a:1") as info:
        b.core()
    assert info.value.path == "host-a:1"  # where the mgmtd client goes next
    a.core().heartbeat(TargetInfo(1, "h", 10))
    version = a.core().routing().version

    clock.now += 0.2 * CONFIG.primary_lease_s  # a renews in time: b stays a standby
    a.step()
    b.step()
    assert b.info()["role"] == "standby"

    clock.now += CONFIG.primary_lease_s  # a died: its lease runs out, b takes over
    b.step()
    assert b.info()["role"] == "primary"
    table = b.core().routing()
    assert table.version > version and table.targets[1].alive  # continued, not restarted
    with pytest.raises(Unavailable):
        a.core()  # a's trust ran out before b could start

    # a wakes up with its old core: its changes are fenced off in the store.
    stale = a._core
    assert stale is not None
    with pytest.raises(Unavailable, match="not the primary"):
        stale.heartbeat(TargetInfo(2, "h", 20))
    assert 2 not in store.load().targets  # type: ignore[union-attr]
    a.step()
    assert a.info()["role"] == "standby" and a.info()["primary"] == "host-b:2"


def test_a_resigning_primary_hands_over_at_once() -> None:
    clock = Clock()
    store = MemoryMgmtdStore(clock)
    a = MgmtdNode(store, "a:1", CHAINS, CONFIG, clock)
    b = MgmtdNode(store, "b:2", CHAINS, CONFIG, clock)
    a.step()
    b.step()
    a.close()  # a clean stop (SIGTERM)
    b.step()
    assert b.info()["role"] == "primary"


def test_meta_servers_are_listed_spread_and_expire() -> None:
    clock = Clock()
    a = MgmtdNode(MemoryMgmtdStore(clock), "a:1", CHAINS, CONFIG, clock)
    a.step()
    core = a.core()
    core.register_meta("m1:1")
    table = core.register_meta("m2:2")
    assert table.meta_addresses == ("m1:1", "m2:2")
    picks = {
        for_caller(table, f"ipv4:127.0.0.1:{port}").meta_address for port in range(40000, 40020)
    }
    assert picks == {"m1:1", "m2:2"}  # callers spread over both
    clock.now += CONFIG.lease_s / 2
    core.register_meta("m2:2")
    clock.now += CONFIG.lease_s / 2 + 0.1
    assert core.check_leases().meta_addresses == ("m2:2",)  # m1 stopped registering
    clock.now += 2 * CONFIG.lease_s
    assert core.check_leases().meta_addresses == ("m2:2",)  # the last one stays listed


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def two_sql_stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[MgmtdStore, MgmtdStore]]:
    """Two mgmtd processes' views of one database."""
    db = (
        str(tmp_path / "mgmtd.db")
        if request.param == "sqlite"
        else (request.getfixturevalue("postgres_url"))
    )
    a, b = SqlMgmtdStore(db), SqlMgmtdStore(db)
    yield a, b
    a.close()
    b.close()


def test_sql_store_lease_and_fenced_saves(two_sql_stores: tuple[MgmtdStore, MgmtdStore]) -> None:
    a, b = two_sql_stores
    assert a.load() is None
    assert a.campaign("A", "a:1", 30.0).holder == "A"
    lease = b.campaign("B", "b:2", 30.0)
    assert (lease.holder, lease.address) == ("A", "a:1") and 0 < lease.remaining_s <= 30
    table = RoutingTable(7, {1: TargetInfo(1, "h", 5, 6, True)}, meta_addresses=("m:1",))
    a.save("A", table)
    with pytest.raises(Unavailable, match="the primary is at a:1"):
        b.save("B", RoutingTable(8))
    loaded = b.load()
    assert loaded is not None and loaded.version == 7 and loaded.targets == table.targets
    assert loaded.meta_address == "m:1"
    a.resign("A")
    assert b.campaign("B", "b:2", 30.0).holder == "B"
    with pytest.raises(Unavailable):
        a.save("A", RoutingTable(9))  # the old primary, fenced off
    b.save("B", RoutingTable(9))
    assert a.load() == RoutingTable(9)


def test_first_chain_table_uses_the_planner_for_nodes() -> None:
    targets = list(range(101, 122))  # 7 nodes x 3 targets, listed node by node
    chains = first_chains(targets, 3, targets_per_node=3)
    assert len(chains) == 7
    node = {t: (t - 101) // 3 for t in targets}
    for members in chains.values():
        assert len({node[t] for t in members}) == 3
    pairs = [
        frozenset((node[x], node[y]))
        for ms in chains.values()
        for x in ms
        for y in ms
        if node[x] < node[y]
    ]
    assert len(pairs) == len(set(pairs)) == 21  # the Fano plane: each pair of nodes once
    assert first_chains([1, 2, 3], 2, targets_per_node=0) == {1: [1, 2], 2: [2, 3], 3: [3, 1]}


def _primary(c: LocalCluster) -> str:
    roles = {i["address"]: i["role"] for i in MgmtdClient(c.address, 2.0).info_all()}
    primaries = [a for a, r in roles.items() if r == "primary"]
    assert len(primaries) == 1, roles
    return primaries[0]


@pytest.mark.slow
def test_kill_primary_mgmtd_during_write(make_cluster) -> None:  # type: ignore[no-untyped-def]
    """The write runs before the kill and goes on past the takeover (whose new table version
    sends it back to mgmtd), so it spans the whole fail-over."""
    c: LocalCluster = make_cluster(mgmtds=2)
    names = {c.mgmtd_address(n): n for n in ("mgmtd", "mgmtd-2")}
    primary = _primary(c)
    fs = FS3FileSystem(c.address, chunk_size=SMALL_CHUNK, skip_instance_cache=True)
    pieces = [os.urandom(MiB) for _ in range(7)]
    written: list[bytes] = []
    started, taken_over, errors = threading.Event(), threading.Event(), []

    def write() -> None:
        try:
            with fs.open("/ha/big", "wb") as f:
                after = 0
                while after < 16:  # MiB written once the standby is primary
                    piece = pieces[len(written) % len(pieces)]
                    f.write(piece)
                    written.append(piece)
                    after += taken_over.is_set()
                    if len(written) == 8:
                        started.set()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)
            started.set()

    writer = threading.Thread(target=write)
    writer.start()
    assert started.wait(60)
    killed = time.monotonic()
    c.kill(names[primary])
    assert writer.is_alive()
    standby = next(a for a in names if a != primary)
    wait_for(
        f"the standby {standby} to take over as primary",
        lambda: MgmtdClient(standby, 1.0).info()["role"] == "primary",
        timeout=15,
    )
    took_over = time.monotonic() - killed
    taken_over.set()
    writer.join(120)
    assert not writer.is_alive() and not errors, errors
    assert fs.cat_file("/ha/big") == b"".join(written)
    assert took_over < CONFIG.primary_lease_s + 5, took_over
    table = c.wait_ready(30)  # every target still serving, via the new primary only
    assert all(m.state == SERVING for ch in table.chains.values() for m in ch.members)
    fs.pipe_file("/ha/after", b"still serving")  # a new file, chains from the new primary
    assert fs.cat_file("/ha/after") == b"still serving"
