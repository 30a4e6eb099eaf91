"""The cluster manager's core: target leases, the chain table and its version.

Heartbeats are leases: a target silent for ``lease_s`` goes offline and moves to the end of
each of its chains (so heads and middles stay live members). A returning target becomes
``syncing`` in chains that still have a serving member — it must first receive what it
missed from its predecessor — or ``serving`` where it is the only hope left. A known target
that comes back *fresh* (its folder empty: a replaced disk) becomes ``syncing`` in all its
chains whatever its state was, and is never the only hope: a chain whose members all came
back fresh gets its head serving (nothing is left to wait for), one with an offline member
waits for it. Meta servers hold leases too, and the table lists the live ones.

Every new table is saved (through ``save``, into the mgmtd store) before anyone sees it, and
a core built from a saved table starts one version above it: versions never go back, not
across a restart nor when a standby takes over.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from fs3.config import MgmtdConfig
from fs3.errors import ConfigError, NotFound
from fs3.types import (
    OFFLINE,
    SERVING,
    SYNCING,
    Chain,
    ChainMember,
    RoutingTable,
    TargetInfo,
    TargetStats,
)


def build_chains(target_ids: list[int], replicas: int) -> dict[int, list[int]]:
    """One chain per target, each ``replicas`` long, rotated so heads spread evenly.

    Raises ConfigError when there are fewer targets than replicas.
    """
    if not 1 <= replicas <= len(target_ids):
        raise ConfigError(f"replicas must be in [1, {len(target_ids)}] targets, got {replicas}")
    n = len(target_ids)
    return {i + 1: [target_ids[(i + k) % n] for k in range(replicas)] for i in range(n)}


class Mgmtd:
    """Owns the routing table. Thread-safe; every method returns the current table.

    Args:
        chains: chain id -> target ids, head first: the first table, used when ``stored``
            is None.
        config: lease timings.
        stored: the table a previous primary saved; this core continues from it.
        save: persists a table before it is published; raising keeps the old table (the
            operation fails with that error). The primary's ``save`` is fenced by its lease.
        clock: monotonic seconds, injectable for tests.
    """

    def __init__(
        self,
        chains: dict[int, list[int]],
        config: MgmtdConfig,
        stored: RoutingTable | None = None,
        save: Callable[[RoutingTable], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._clock = clock
        self._save = save or (lambda table: None)
        self._lock = threading.Lock()
        now = clock()
        if stored is None:
            table = RoutingTable(
                version=1,
                chains={
                    cid: Chain(cid, tuple(ChainMember(t, OFFLINE) for t in members))
                    for cid, members in chains.items()
                },
            )
        else:
            table = dataclasses.replace(stored, version=stored.version + 1)
        # Known targets and meta servers get one lease of grace to find the new primary.
        self._last_seen: dict[int, float] = {t: now for t in table.targets}
        self._meta_seen: dict[str, float] = {m: now for m in table.meta_addresses}
        self._stats: dict[int, TargetStats] = {}  # the latest each target sent; not saved
        self._boots: dict[int, str] = {}  # the process of each target seen last
        self._save(table)
        self._table = table

    def routing(self) -> RoutingTable:
        with self._lock:
            return self._table

    def heartbeat(
        self,
        target: TargetInfo,
        stats: TargetStats | None = None,
        fresh: bool = False,
        boot: str = "",
    ) -> RoutingTable:
        """Renews ``target``'s lease and keeps its ``stats`` (capacity, chunks, resyncs),
        which change no table version. ``fresh`` (with the process's ``boot`` id): the
        target started on an empty folder; a target this table knew is then rebuilt, once
        per boot."""
        with self._lock:
            tid = target.target_id
            self._last_seen[tid] = self._clock()
            if stats is not None:
                self._stats[tid] = stats
            targets = dict(self._table.targets)
            replaced = fresh and tid in targets and self._boots.get(tid) != boot
            self._boots[tid] = boot
            changed = targets.get(tid) != dataclasses.replace(target, alive=True)
            targets[tid] = dataclasses.replace(target, alive=True)
            chains = dict(self._table.chains)
            for cid, chain in chains.items():
                if not replaced or chain.state_of(tid) == SYNCING:
                    continue
                if any(m.target_id == tid for m in chain.members):
                    chains[cid] = _move_to_end(_set_state(chain, tid, SYNCING), tid)
                    changed = True
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
            for cid, chain in chains.items():
                # Every member alive and fresh: nothing of the chain is left to wait for.
                if (
                    any(m.target_id == tid for m in chain.members)
                    and not chain.readers()
                    and all(
                        m.state == SYNCING and targets.get(m.target_id, target).alive
                        for m in chain.members
                    )
                ):
                    chains[cid] = _set_state(chain, chain.members[0].target_id, SERVING)
                    changed = True
            if changed:
                self._publish(targets, chains)
            return self._table

    def stats(self) -> list[TargetStats]:
        """The latest stats of every target that sent some since this core started."""
        with self._lock:
            return [self._stats[t] for t in sorted(self._stats)]

    def check_leases(self) -> RoutingTable:
        """Takes targets whose lease lapsed offline and drops meta servers whose lease lapsed
        (never the last one: clients keep trying it); call it about every heartbeat period."""
        with self._lock:
            now = self._clock()
            lapsed = [
                m
                for m in self._table.meta_addresses
                if now - self._meta_seen.get(m, 0.0) > self._config.lease_s
            ]
            if lapsed and len(lapsed) == len(self._table.meta_addresses):
                lapsed.remove(max(lapsed, key=lambda m: self._meta_seen.get(m, 0.0)))
            if lapsed:
                self._publish_metas(tuple(m for m in self._table.meta_addresses if m not in lapsed))
            expired = {
                t
                for t, info in self._table.targets.items()
                if info.alive and now - self._last_seen.get(t, 0.0) > self._config.lease_s
            }
            if expired:
                targets = {
                    t: dataclasses.replace(i, alive=i.alive and t not in expired)
                    for t, i in self._table.targets.items()
                }
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
        """Adds or renews meta server ``address``; the table lists every live one."""
        with self._lock:
            self._meta_seen[address] = self._clock()
            if address not in self._table.meta_addresses:
                self._publish_metas(tuple(sorted((*self._table.meta_addresses, address))))
            return self._table

    def _publish_metas(self, metas: tuple[str, ...]) -> None:
        t = self._table
        self._commit(
            dataclasses.replace(
                t,
                version=t.version + 1,
                meta_address=metas[0] if metas else "",
                meta_addresses=metas,
            )
        )

    def _publish(self, targets: dict[int, TargetInfo], chains: dict[int, Chain]) -> None:
        t = self._table
        self._commit(dataclasses.replace(t, version=t.version + 1, targets=targets, chains=chains))

    def _commit(self, table: RoutingTable) -> None:
        self._save(table)  # raises (not the primary any more, store down): nothing changes
        self._table = table


def _set_state(chain: Chain, target_id: int, state: str) -> Chain:
    members = tuple(
        ChainMember(m.target_id, state) if m.target_id == target_id else m for m in chain.members
    )
    return Chain(chain.chain_id, members)


def _move_to_end(chain: Chain, target_id: int) -> Chain:
    keep = [m for m in chain.members if m.target_id != target_id]
    moved = [m for m in chain.members if m.target_id == target_id]
    return Chain(chain.chain_id, tuple(keep + moved))
