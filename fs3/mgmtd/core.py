"""The cluster manager's core: target leases, the chain table and its version.

Heartbeats are leases: a target silent for ``lease_s`` goes offline and moves to the end of
each of its chains (so heads and middles stay live members). A returning target becomes
``syncing`` in chains that still have a serving member — it must first receive what it
missed from its predecessor — or ``serving`` where it is the only hope left. State is saved
to a JSON file on every change, so a restarted mgmtd keeps the chain order and versions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fs3.config import MgmtdConfig
from fs3.errors import ConfigError, NotFound
from fs3.types import OFFLINE, SERVING, SYNCING, Chain, ChainMember, RoutingTable, TargetInfo


def build_chains(target_ids: list[int], replicas: int) -> dict[int, list[int]]:
    """One chain per target, each ``replicas`` long, rotated so heads spread evenly.

    Raises ConfigError when there are fewer targets than replicas.
    """
    if not 1 <= replicas <= len(target_ids):
        raise ConfigError(f"replicas must be in [1, {len(target_ids)}] targets, got {replicas}")
    n = len(target_ids)
    return {i + 1: [target_ids[(i + k) % n] for k in range(replicas)] for i in range(n)}


class Mgmtd:
    """Owns the routing table. Thread-safe; every method returns the current table."""

    def __init__(
        self,
        chains: dict[int, list[int]],
        config: MgmtdConfig,
        state_file: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._clock = clock
        self._file = state_file
        self._lock = threading.Lock()
        self._last_seen: dict[int, float] = {}
        self._table = RoutingTable(
            version=1,
            chains={
                cid: Chain(cid, tuple(ChainMember(t, OFFLINE) for t in members))
                for cid, members in chains.items()
            },
        )
        if state_file is not None and state_file.exists():
            self._table = _load(state_file)
            # Known targets get one lease of grace to re-register after an mgmtd restart.
            now = clock()
            self._last_seen = {t: now for t in self._table.targets}

    def routing(self) -> RoutingTable:
        with self._lock:
            return self._table

    def heartbeat(self, target: TargetInfo) -> RoutingTable:
        with self._lock:
            self._last_seen[target.target_id] = self._clock()
            targets = dict(self._table.targets)
            changed = targets.get(target.target_id) != dataclasses.replace(target, alive=True)
            targets[target.target_id] = dataclasses.replace(target, alive=True)
            chains = dict(self._table.chains)
            for cid, chain in chains.items():
                if chain.state_of(target.target_id) != OFFLINE or not any(
                    m.target_id == target.target_id for m in chain.members
                ):
                    continue
                has_serving = bool(chain.readers())
                chains[cid] = _set_state(
                    chain, target.target_id, SYNCING if has_serving else SERVING
                )
                changed = True
            if changed:
                self._publish(targets, chains)
            return self._table

    def check_leases(self) -> RoutingTable:
        """Takes targets whose lease lapsed offline; call it about every heartbeat period."""
        with self._lock:
            now = self._clock()
            expired = {
                t for t, info in self._table.targets.items()
                if info.alive and now - self._last_seen.get(t, 0.0) > self._config.lease_s
            }  # fmt: skip
            if expired:
                targets = {t: dataclasses.replace(i, alive=i.alive and t not in expired)
                           for t, i in self._table.targets.items()}  # fmt: skip
                chains = dict(self._table.chains)
                for cid, chain in chains.items():
                    for t in expired:
                        if chain.state_of(t) != OFFLINE:
                            chain = _move_to_end(_set_state(chain, t, OFFLINE), t)
                    chains[cid] = chain
                self._publish(targets, chains)
            return self._table

    def sync_done(self, chain_id: int, target_id: int) -> RoutingTable:
        with self._lock:
            chain = self._table.chains.get(chain_id)
            if chain is None:
                raise NotFound(f"no chain {chain_id}")
            if chain.state_of(target_id) == SYNCING:
                chains = {**self._table.chains, chain_id: _set_state(chain, target_id, SERVING)}
                self._publish(dict(self._table.targets), chains)
            return self._table

    def register_meta(self, address: str) -> RoutingTable:
        with self._lock:
            if self._table.meta_address != address:
                self._table = dataclasses.replace(
                    self._table, meta_address=address, version=self._table.version + 1
                )
                self._save()
            return self._table

    def _publish(self, targets: dict[int, TargetInfo], chains: dict[int, Chain]) -> None:
        self._table = RoutingTable(self._table.version + 1, targets, chains,
                                   self._table.meta_address)  # fmt: skip
        self._save()

    def _save(self) -> None:
        if self._file is None:
            return
        t = self._table
        data = {
            "version": t.version,
            "meta_address": t.meta_address,
            "targets": [dataclasses.asdict(i) for i in t.targets.values()],
            "chains": {
                str(c): [[m.target_id, m.state] for m in ch.members] for c, ch in t.chains.items()
            },  # fmt: skip
        }
        tmp = self._file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self._file)


def _load(file: Path) -> RoutingTable:
    data = json.loads(file.read_text())
    return RoutingTable(
        version=data["version"] + 1,
        targets={i["target_id"]: TargetInfo(**i) for i in data["targets"]},
        chains={
            int(c): Chain(int(c), tuple(ChainMember(t, s) for t, s in members))
            for c, members in data["chains"].items()
        },
        meta_address=data["meta_address"],
    )


def _set_state(chain: Chain, target_id: int, state: str) -> Chain:
    members = tuple(
        ChainMember(m.target_id, state) if m.target_id == target_id else m for m in chain.members
    )
    return Chain(chain.chain_id, members)


def _move_to_end(chain: Chain, target_id: int) -> Chain:
    keep = [m for m in chain.members if m.target_id != target_id]
    moved = [m for m in chain.members if m.target_id == target_id]
    return Chain(chain.chain_id, tuple(keep + moved))
