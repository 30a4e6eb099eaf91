"""One primary among a cluster's mgmtd processes, elected through a lease row in their store.

Each process campaigns every heartbeat period: the primary renews its lease, a standby takes
it once it ran out (by the database's clock). A primary trusts its role only for a part of
the lease measured from *before* its last renewal began, so it stops acting as primary before
any standby can start; and every table it saves is fenced by the lease in the store as well
(:mod:`fs3.mgmtd.store`), so even a primary that was paused past that point cannot overwrite
its successor. A standby answers every routing call with a retryable "not the primary; the
primary is at X", which the mgmtd client follows.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from fs3.config import MgmtdConfig
from fs3.db import Lease
from fs3.errors import Fs3Error
from fs3.mgmtd.core import Mgmtd
from fs3.mgmtd.store import MgmtdStore, not_primary

log = logging.getLogger("fs3.mgmtd")

TRUST = 0.8
"""Share of the lease a primary acts on after a renewal started. The rest covers the
database's clock running a little faster than ours and the renewal's own round trip."""


class Elector:
    """Campaigns for the primary lease on behalf of the mgmtd reachable at ``address``."""

    def __init__(
        self,
        store: MgmtdStore,
        address: str,
        lease_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.address = address
        # A restarted process is a new holder: it waits out its predecessor's lease rather
        # than trusting that nothing else answers at the same address.
        self.holder = f"{address}/{uuid.uuid4().hex[:8]}"
        self._lease_s = lease_s
        self._clock = clock
        self._trusted_until = 0.0
        self.lease = Lease("", "", "", 0.0)
        """The lease as the last campaign saw it (whoever holds it)."""

    def campaign(self) -> bool:
        """Takes or renews the lease; returns whether this process is the primary now.
        A store that cannot be reached leaves the role to run out, not end at once."""
        started = self._clock()
        try:
            self.lease = self.store.campaign(self.holder, self.address, self._lease_s)
        except Fs3Error as err:
            log.warning("mgmtd %s: primary lease not renewed: %s", self.address, err)
            return self.is_primary()
        if self.lease.holder == self.holder:
            self._trusted_until = started + TRUST * self._lease_s
        else:
            self._trusted_until = 0.0
        return self.is_primary()

    def is_primary(self) -> bool:
        return self._clock() < self._trusted_until

    def resign(self) -> None:
        """Gives the lease up (on a clean stop), so a standby need not wait it out."""
        self._trusted_until = 0.0
        try:
            self.store.resign(self.holder)
        except Fs3Error as err:
            log.warning("mgmtd %s: could not resign the primary lease: %s", self.address, err)


class MgmtdNode:
    """One mgmtd process: an elector, and the routing core while it is the primary.

    Args:
        store: shared with the cluster's other mgmtd processes.
        address: ``HOST:PORT`` where clients reach this process.
        chains: the first chain table, used when the store holds none yet.
        config: lease timings.
    """

    def __init__(
        self,
        store: MgmtdStore,
        address: str,
        chains: dict[int, list[int]],
        config: MgmtdConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.address = address
        self.elector = Elector(store, address, config.primary_lease_s, clock)
        self._chains = chains
        self._config = config
        self._clock = clock
        self._core: Mgmtd | None = None
        self._lock = threading.Lock()

    def step(self) -> None:
        """One heartbeat period: campaign, take over or step down, and expire leases."""
        with self._lock:
            primary = self.elector.campaign()
            if primary and self._core is None:
                holder = self.elector.holder
                try:
                    self._core = Mgmtd(
                        self._chains,
                        self._config,
                        stored=self.store.load(),
                        save=lambda t: self.store.save(holder, t),
                        clock=self._clock,
                    )
                except Fs3Error as err:
                    log.warning("mgmtd %s: could not take over: %s", self.address, err)
                    return
                log.info(
                    "mgmtd %s is the primary, chain table version %d",
                    self.address,
                    self._core.routing().version,
                )
            elif not primary and self._core is not None:
                log.warning(
                    "mgmtd %s is a standby now (lease held by %s)",
                    self.address,
                    self.elector.lease.holder or "nobody",
                )
                self._core = None
            core = self._core
        if core is not None:
            try:
                core.check_leases()
            except Fs3Error as err:
                log.warning("mgmtd %s: lease check not saved: %s", self.address, err)

    def core(self) -> Mgmtd:
        """The routing core. Raises Unavailable (naming the primary) on a standby."""
        core = self._core
        if core is None or not self.elector.is_primary():
            raise not_primary(self.address, self.elector.lease)
        return core

    def info(self) -> dict[str, Any]:
        """This process's role, the primary's address, and (from the primary, or read from
        the store on a standby) the table version and the meta servers."""
        primary = self._core is not None and self.elector.is_primary()
        lease = self.elector.lease
        table = self._core.routing() if primary and self._core else None
        if table is None:
            try:
                table = self.store.load()
            except Fs3Error:
                table = None
        return {
            "address": self.address,
            "role": "primary" if primary else "standby",
            "primary": lease.address if lease.remaining_s > 0 else "",
            "lease_remaining_s": max(lease.remaining_s, 0.0),
            "version": table.version if table else 0,
            "meta_addresses": list(table.meta_addresses) if table else [],
        }

    def close(self) -> None:
        with self._lock:
            if self._core is not None:
                self.elector.resign()
            self._core = None
