"""``hai demo --hosts``: the demo's clusters spread over test hosts, one storage host cut off.

The same story as ``hai demo``, but every service runs on a host of its own (a network
namespace with its own address, :mod:`testhosts`), as on a real cluster::

    host 1          fs3 mgmtd and meta, the platform's server
    hosts 2-4       one fs3 storage target each (chains of 3 replicas)
    hosts 5-...     one platform node (agent and ranks) each, with its own state folder

Midway through the training job, storage host 3 is cut off the network (its processes
keep running, as when a cable is pulled); later it is connected again and resyncs. The
training and its checkpoints must not notice: writes go on through the two other
replicas, and every checkpoint written while the host was away reads back in full.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from fsspec import AbstractFileSystem

from fs3 import on_hosts
from fs3.cluster import LocalCluster
from fs3.mgmtd.client import MgmtdClient
from fs3.types import SERVING
from hai.cluster import up
from hai.demo.stack import PLATFORM_SETTINGS, DemoError, DemoStack, free_port
from testhosts import Hosts, hosts_missing

CONTROL_HOST = 1
STORAGE_HOSTS = (2, 3, 4)
CUT_HOST = 3
"""The storage host cut off midway."""
CUT_TARGET = STORAGE_HOSTS.index(CUT_HOST) + 1
"""Its fs3 target's id (``storage-2``)."""
FIRST_NODE_HOST = 5
CUT_AT, RESTORE_AT = 0.2, 0.6
"""Shares of the training job's steps after which the storage host is cut and restored."""
HOST_OWN_FOLDERS = (Path("/tmp"), Path("/dev/shm"))
"""Each host has its own: the demo's folder, which every host's processes use, cannot be there."""


@dataclass
class CutOff:
    """What happened to the cut-off storage host, for the summary."""

    host: str
    address: str
    target: str
    cut_at_step: int
    restored_at_step: int | None = None
    state_when_restored: str = ""
    """The target's state in its chains just before it was connected again."""


@dataclass
class HostsStack(DemoStack):
    """A :class:`DemoStack` whose services run on test hosts (root and iproute2 only)."""

    hosts: Hosts | None = None
    cut: CutOff | None = None

    def __enter__(self) -> HostsStack:
        if self.keep:
            raise DemoError("--keep is not available with --hosts: the test hosts go with the demo")
        if missing := hosts_missing():
            raise DemoError(f"hai demo --hosts runs its services on test hosts; here: {missing}")
        root = self.root.expanduser().resolve()
        if any(root.is_relative_to(own) for own in HOST_OWN_FOLDERS):
            raise DemoError(
                f"{root} is under {', '.join(map(str, HOST_OWN_FOLDERS))}, which each test "
                "host replaces with its own: pass a folder elsewhere for --hosts"
            )
        super().__enter__()
        return self

    def _start(self) -> None:
        self.hosts = Hosts.up(FIRST_NODE_HOST - 1 + self.nodes, reachable=True)
        where = {"mgmtd": CONTROL_HOST, "meta": CONTROL_HOST, "server": CONTROL_HOST}
        where["client"] = CONTROL_HOST  # where fs3's start checks a client reaches it
        where.update({f"storage-{i}": host for i, host in enumerate(STORAGE_HOSTS, 1)})
        where.update({f"node-{i}": FIRST_NODE_HOST + i for i in range(self.nodes)})
        placement = on_hosts.placement(self.hosts, where)
        self.fs3 = LocalCluster(self.fs3_dir, targets=3, replicas=3, placement=placement)
        self.fs3.start()
        env = {**PLATFORM_SETTINGS, "FS3_CLUSTER": self.fs3.address}
        port = self.port if self.port is not None else free_port()
        self.platform = up(
            self.hai_dir, self.nodes, self.gpus_per_node, port, env=env, placement=placement
        )

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.hosts is not None:
                self.hosts.down()
                self.hosts = None

    def disturb(self, step: int, steps: int) -> None:
        """Cuts the storage host off once the training job passed ``CUT_AT`` of its
        ``steps``, and connects it again after ``RESTORE_AT``."""
        assert self.hosts is not None
        host = self.hosts[CUT_HOST]
        if self.cut is None and step >= steps * CUT_AT:
            self.hosts.cut(CUT_HOST)
            self.cut = CutOff(host.name, host.address, f"storage-{CUT_TARGET}", step)
        elif self.cut and self.cut.restored_at_step is None and step >= steps * RESTORE_AT:
            self._restore(self.cut)
            self.cut.restored_at_step = step

    def _restore(self, cut: CutOff) -> None:
        """Connects the cut-off host again, noting first what mgmtd made of its target."""
        assert self.hosts is not None
        cut.state_when_restored = "/".join(sorted(set(self._cut_target_states())))
        self.hosts.restore(CUT_HOST)

    def _cut_target_states(self) -> list[str]:
        """The cut-off target's state in each of its chains, as mgmtd has it now."""
        assert self.fs3 is not None
        client = MgmtdClient(self.fs3.address, 5.0)
        try:
            table = client.refresh()
        finally:
            client.close()
        members = (m for chain in table.chains.values() for m in chain.members)
        return [m.state for m in members if m.target_id == CUT_TARGET]

    def _wait_resynced(self, timeout_s: float = 60.0) -> bool:
        """Whether the cut-off target serves every chain again within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if set(self._cut_target_states()) == {SERVING}:
                return True
            time.sleep(0.5)
        return False

    def cut_report(self, fs: AbstractFileSystem, checkpoint_url: str) -> str:
        """One line for the summary: which host was cut off when, and the proof that the
        training did not notice (every kept checkpoint read back in full)."""
        if self.cut is None:
            return "nothing (the job ended before it was due)"
        cut = self.cut
        files = fs.find(checkpoint_url)
        read = sum(len(fs.cat_file(path)) for path in files)
        if cut.restored_at_step is None:  # the job ended first
            self._restore(cut)
        back = "resynced and serving again" if self._wait_resynced() else "not yet resynced"
        restored = f"step {cut.restored_at_step}" if cut.restored_at_step else "the end"
        return (
            f"storage host {cut.host} ({cut.address}, fs3 {cut.target}) cut off at step "
            f"{cut.cut_at_step} ({cut.target} {cut.state_when_restored} by then), connected "
            f"again at {restored} and {back}; the job ran on, and its {len(files)} checkpoint "
            f"files ({read / 2**20:.2f} MiB) read back in full"
        )
