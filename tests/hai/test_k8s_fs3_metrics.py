"""fs3's chain state as metrics (hai operator fs3-exporter), from mgmtd's routing table."""

from __future__ import annotations

from fs3.types import Chain, ChainMember, RoutingTable, TargetInfo
from hai.k8s.fs3_metrics import Fs3Metrics, chain_metrics


def test_a_chain_with_an_offline_replica_is_degraded_and_one_with_none_serving_unreadable():
    table = RoutingTable(
        version=3,
        targets={1: TargetInfo(1, alive=True), 2: TargetInfo(2, alive=True), 3: TargetInfo(3)},
        chains={
            1: Chain(1, (ChainMember(1, "serving"), ChainMember(2, "serving"))),
            2: Chain(2, (ChainMember(2, "serving"), ChainMember(3, "offline"))),
            3: Chain(3, (ChainMember(1, "syncing"), ChainMember(3, "offline"))),
        },
    )
    snap = chain_metrics(table)
    assert (snap.targets_alive, snap.targets_down, snap.chains) == (2, 1, 3)
    assert (snap.degraded, snap.without_reader) == (2, 1)
    assert snap.members == {"serving": 3, "syncing": 1, "offline": 2}
    metrics = Fs3Metrics()
    metrics.observe(snap)
    assert metrics.registry.get_sample_value("fs3_chains_degraded") == 2
    assert metrics.registry.get_sample_value("fs3_targets", {"state": "down"}) == 1
    assert metrics.registry.get_sample_value("fs3_mgmtd_up") == 1
