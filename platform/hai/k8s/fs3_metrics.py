"""fs3's targets and chains as Prometheus metrics (``hai operator fs3-exporter``).

fs3's services export no metrics of their own; this sidecar of mgmtd reads mgmtd's
routing table (what ``hai fs3 status`` shows) and serves it, so the chart's alert
"fs3 chain degraded" has something to watch. :func:`chain_metrics` is the pure part.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

if TYPE_CHECKING:
    from fs3.config import TlsConfig

log = logging.getLogger("hai.k8s.fs3_metrics")
MEMBER_STATES = ("serving", "syncing", "offline")
"""fs3.types' chain member states."""


@dataclass
class ChainSnapshot:
    targets_alive: int = 0
    targets_down: int = 0
    chains: int = 0
    degraded: int = 0
    """Chains with a member not serving: a replica lost or still resynchronising."""
    without_reader: int = 0
    """Chains with no serving member: their data cannot be read."""
    members: dict[str, int] = field(default_factory=dict)


def chain_metrics(table: Any) -> ChainSnapshot:
    """Counts from an fs3 ``RoutingTable``."""
    alive = sum(1 for t in table.targets.values() if t.alive)
    members: Counter[str] = Counter()
    degraded = without_reader = 0
    for chain in table.chains.values():
        states = [m.state for m in chain.members]
        members.update(states)
        degraded += any(s != "serving" for s in states)
        without_reader += "serving" not in states
    return ChainSnapshot(
        alive,
        len(table.targets) - alive,
        len(table.chains),
        degraded,
        without_reader,
        {s: members[s] for s in MEMBER_STATES},
    )


class Fs3Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.up = Gauge("fs3_mgmtd_up", "Whether the last read of mgmtd worked", registry=r)
        self.targets = Gauge("fs3_targets", "Storage targets per state", ["state"], registry=r)
        self.chains = Gauge("fs3_chains", "Replication chains", registry=r)
        self.degraded = Gauge("fs3_chains_degraded", "Chains with a member not serving", registry=r)
        self.unreadable = Gauge(
            "fs3_chains_without_reader", "Chains with no serving member", registry=r
        )
        self.members = Gauge("fs3_chain_members", "Chain members per state", ["state"], registry=r)

    def observe(self, snap: ChainSnapshot) -> None:
        self.up.set(1)
        self.targets.labels("alive").set(snap.targets_alive)
        self.targets.labels("down").set(snap.targets_down)
        self.chains.set(snap.chains)
        self.degraded.set(snap.degraded)
        self.unreadable.set(snap.without_reader)
        for state, count in snap.members.items():
            self.members.labels(state).set(count)


def serve(
    mgmtd: str, port: int, host: str, interval_s: float, tls: TlsConfig | None = None
) -> None:
    """Reads mgmtd every ``interval_s`` (over TLS with ``tls.enabled``) and serves the counts
    on ``host:port`` until killed. mgmtd's routing table needs no token or cluster secret."""
    from fs3.errors import Fs3Error
    from fs3.mgmtd.client import MgmtdClient

    metrics = Fs3Metrics()
    start_http_server(port, addr=host, registry=metrics.registry)
    client = MgmtdClient(mgmtd, timeout=10.0, tls=tls)
    while True:
        try:
            metrics.observe(chain_metrics(client.refresh()))
        except Fs3Error as err:
            metrics.up.set(0)
            log.warning("cannot read mgmtd at %s: %s", mgmtd, err)
        time.sleep(interval_s)
