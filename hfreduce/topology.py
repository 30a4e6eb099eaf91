"""Who is where: ranks grouped into nodes, read from the environment and a rendezvous store.

A node is whatever shares one host staging area (one machine, or one "virtual node" when
several run on a machine with distinct node ids). Local ranks are ordered by global rank.

Node ids are the user's word (``HFREDUCE_NODE_ID``, else the host name), so each rank
also publishes which host it really runs on: ranks claiming one node share memory, and
two hosts under one node id would each sum half the node and return a wrong result.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

from torch.distributed import Store

from hfreduce.errors import HfreduceError

NODE_ID_ENV = "HFREDUCE_NODE_ID"


@dataclass(frozen=True)
class Topology:
    rank: int
    world_size: int
    node_ids: tuple[str, ...]
    """Node id of each node, in order of the node's lowest global rank."""
    node_ranks: tuple[tuple[int, ...], ...]
    """Global ranks on each node, ascending; all nodes hold the same number."""

    @property
    def num_nodes(self) -> int:
        return len(self.node_ranks)

    @property
    def node_index(self) -> int:
        return next(i for i, ranks in enumerate(self.node_ranks) if self.rank in ranks)

    @property
    def local_ranks(self) -> tuple[int, ...]:
        return self.node_ranks[self.node_index]

    @property
    def local_size(self) -> int:
        return len(self.local_ranks)

    @property
    def local_rank(self) -> int:
        return self.local_ranks.index(self.rank)

    def peer(self, node_index: int) -> int:
        """The global rank with our local rank on another node: our partner between nodes."""
        return self.node_ranks[node_index][self.local_rank]


def default_node_id() -> str:
    """``HFREDUCE_NODE_ID`` when set (virtual nodes on one machine), else the host name."""
    return os.environ.get(NODE_ID_ENV) or socket.gethostname()


def host_identity() -> str:
    """This host as shared memory sees it: the boot id tells machines (and boots) apart,
    the network namespace tells apart the test hosts of one machine, which share its
    /etc/machine-id and boot id."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    return f"boot {boot}, netns {os.stat('/proc/self/ns/net').st_ino}"


def check_node_hosts(ids: list[str], hosts: list[tuple[str, str]]) -> None:
    """Fail when ranks of one node id run on different hosts.

    ``ids[r]`` is rank r's node id, ``hosts[r]`` its (host name, host identity).
    """
    first: dict[str, int] = {}
    for r, nid in enumerate(ids):
        other = first.setdefault(nid, r)
        if hosts[other][1] != hosts[r][1]:
            raise HfreduceError(
                f"hfreduce: ranks {other} and {r} both have node id {nid!r} but run on "
                f"different hosts ({hosts[other][0]}: {hosts[other][1]}; "
                f"{hosts[r][0]}: {hosts[r][1]}); ranks of one node share memory: set "
                f"{NODE_ID_ENV} per host"
            )


def env_int(name: str) -> int:
    raw = os.environ.get(name)
    if raw is None:
        raise HfreduceError(
            f"environment variable {name} is not set; launch with torchrun or hai, or pass "
            "rank and world_size to hfreduce.init()"
        )
    try:
        return int(raw)
    except ValueError:
        raise HfreduceError(f"environment variable {name}={raw!r} is not an integer") from None


def discover(store: Store, rank: int, world_size: int, node_id: str, timeout: float) -> Topology:
    """Publish our node id and host, read everyone's, check that each node is on one host,
    and group ranks into nodes."""
    me = {"node": node_id, "host": socket.gethostname(), "identity": host_identity()}
    store.set(f"hfreduce/node/{rank}", json.dumps(me))
    store.wait([f"hfreduce/node/{r}" for r in range(world_size)], timedelta(seconds=timeout))
    published = [json.loads(store.get(f"hfreduce/node/{r}")) for r in range(world_size)]
    ids = [p["node"] for p in published]
    check_node_hosts(ids, [(p["host"], p["identity"]) for p in published])
    groups: dict[str, list[int]] = {}
    for r, nid in enumerate(ids):
        groups.setdefault(nid, []).append(r)
    sizes = {nid: len(ranks) for nid, ranks in groups.items()}
    if len(set(sizes.values())) > 1:
        raise HfreduceError(
            f"nodes hold different numbers of ranks ({sizes}); hfreduce needs the same "
            "number of ranks on every node"
        )
    return Topology(
        rank=rank,
        world_size=world_size,
        node_ids=tuple(groups),
        node_ranks=tuple(tuple(ranks) for ranks in groups.values()),
    )
