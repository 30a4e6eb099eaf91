"""Plain data shared by services and client: inodes, file layouts, chunk ids, the chain table.

No behaviour beyond small derived values, so every layer can import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from fs3.errors import ConfigError

FILE = "file"
DIRECTORY = "directory"
SYMLINK = "symlink"
FIFO = "fifo"
SOCKET = "socket"
"""Named pipes and sockets are entries only: their data never passes through fs3."""

# Target states within one chain, as in 3FS's design notes (lastsrv/waiting folded away).
SERVING = "serving"
SYNCING = "syncing"
OFFLINE = "offline"

WILDCARDS = ("0.0.0.0", "::", "")
"""Listening addresses that name no one host: a service bound there cannot announce them."""


def host_port(host: str, port: int) -> str:
    """``HOST:PORT`` as gRPC and :mod:`fs3.wire.client` parse it: an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def announceable(host: str, flag: str = "--host") -> str:
    """``host`` when clients can reach a service at it; ConfigError for a wildcard, which
    listens everywhere but tells clients nothing (a silent 127.0.0.1 would be wrong on
    every other host)."""
    if host in WILDCARDS:
        raise ConfigError(
            f"{flag} {host or repr(host)} listens on every address but cannot be announced: "
            "give this machine's address on the cluster's network"
        )
    return host


class ChunkId(NamedTuple):
    """One chunk: the ``index``-th chunk of file ``inode``, stored on chain ``chain``."""

    chain: int
    inode: int
    index: int


@dataclass(frozen=True)
class ChunkMeta:
    """The committed state of a chunk on one replica."""

    version: int
    length: int


@dataclass(frozen=True)
class Layout:
    """How a file's bytes map to chunks and chains.

    Chunk ``i`` lives on ``chains[(seed + i) % len(chains)]``: round-robin over the file's
    chains, started at a per-file seed so that small files do not all land on one chain.
    """

    chunk_size: int = 0
    chains: tuple[int, ...] = ()
    seed: int = 0

    def chain_of(self, index: int) -> int:
        return self.chains[(self.seed + index) % len(self.chains)]


@dataclass(frozen=True)
class Quota:
    """Limits of a directory and what everything below it uses; a limit of 0 is none.

    ``used_bytes`` sums the lengths of the files below (logical bytes, not replicas),
    ``used_inodes`` counts the files, directories and symlinks below (not the directory
    itself). Meta keeps both exact in the transactions that change them.
    """

    max_bytes: int = 0
    max_inodes: int = 0
    used_bytes: int = 0
    used_inodes: int = 0

    def room(self) -> tuple[int | None, int | None]:
        """(bytes, inodes) that may still be added; None where there is no limit."""
        return (
            max(self.max_bytes - self.used_bytes, 0) if self.max_bytes else None,
            max(self.max_inodes - self.used_inodes, 0) if self.max_inodes else None,
        )


@dataclass(frozen=True)
class Inode:
    id: int
    kind: str
    mode: int = 0o644
    length: int = 0
    mtime: float = 0.0
    ctime: float = 0.0
    parent: int = 0
    layout: Layout = field(default_factory=Layout)
    target: str = ""
    atime: float = 0.0
    """Last access time as set by ``set_attr`` (fs3 does not update it on reads, like a
    ``noatime`` mount); 0 means "same as mtime"."""
    quota: Quota | None = None
    """Set on a directory that has a quota."""
    uid: int = 0
    """Owner; new inodes get their creator's (:mod:`fs3.meta.permissions`)."""
    gid: int = 0
    """Group: the creator's, or the directory's when it is set-gid."""
    nlink: int = 1
    """Entries naming it (hard links); a directory's is 2 + its subdirectories, as POSIX
    file systems count ``.`` and each child's ``..``."""

    @property
    def is_dir(self) -> bool:
        return self.kind == DIRECTORY


@dataclass(frozen=True)
class DirEntry:
    name: str
    inode: Inode


@dataclass(frozen=True)
class TrashEntry:
    """A tree moved to the trash: ``name`` in the trash folder, where it came from, when it
    was deleted and when it expires (seconds since the epoch), and its top inode."""

    name: str
    path: str
    deleted: float
    expires: float
    inode: Inode


@dataclass(frozen=True)
class TargetInfo:
    """A storage server as mgmtd sees it; ``alive`` is whether its lease is current."""

    target_id: int
    host: str = ""
    data_port: int = 0
    grpc_port: int = 0
    alive: bool = False

    @property
    def data_address(self) -> str:
        """``HOST:PORT`` of the target's framed data port, an IPv6 host in brackets."""
        return host_port(self.host, self.data_port)


@dataclass(frozen=True)
class ResyncProgress:
    """A resync a chain's last serving member runs: ``done`` of ``total`` chunks compared
    (and copied where they differed) towards successor ``target_id``."""

    chain_id: int
    target_id: int
    done: int = 0
    total: int = 0


@dataclass(frozen=True)
class TargetStats:
    """What a storage target reports with each heartbeat (mgmtd keeps the latest in memory;
    it is no part of the versioned chain table)."""

    target_id: int
    total_bytes: int = 0
    """Size of the file system holding the target's folder."""
    free_bytes: int = 0
    """Bytes of that file system the target may still use."""
    used_bytes: int = 0
    """Bytes of committed chunks on the target (one replica's share)."""
    chunks: int = 0
    fsid: str = ""
    """Machine and device of that file system: targets sharing one count it once."""
    resyncs: tuple[ResyncProgress, ...] = ()
    """Resyncs this target runs as predecessor."""


def capacity(stats: list[TargetStats]) -> tuple[int, int]:
    """(total, free) bytes of the file systems that hold targets, each counted once however
    many targets share it (every target of a one-machine cluster sits on one disk)."""
    by_fs = {t.fsid or f"target {t.target_id}": t for t in stats}
    return sum(t.total_bytes for t in by_fs.values()), sum(t.free_bytes for t in by_fs.values())


@dataclass(frozen=True)
class ChainMember:
    target_id: int
    state: str = OFFLINE


@dataclass(frozen=True)
class Chain:
    """A replication chain: ``members`` in order, head first; offline members sit at the end."""

    chain_id: int
    members: tuple[ChainMember, ...] = ()

    def writers(self) -> tuple[int, ...]:
        """Targets a write passes through, head to tail: serving ones, then syncing ones;
        none while no member serves (syncing ones alone hold nothing to build on)."""
        serving = [m.target_id for m in self.members if m.state == SERVING]
        syncing = [m.target_id for m in self.members if m.state == SYNCING]
        return tuple(serving + syncing) if serving else ()

    def readers(self) -> tuple[int, ...]:
        """Targets that may serve reads: only those holding every committed chunk."""
        return tuple(m.target_id for m in self.members if m.state == SERVING)

    def state_of(self, target_id: int) -> str:
        for m in self.members:
            if m.target_id == target_id:
                return m.state
        return OFFLINE


@dataclass(frozen=True)
class RoutingTable:
    """The cluster map that mgmtd owns; ``version`` grows with every change to a chain.

    ``meta_addresses`` lists every live meta server (inside mgmtd; the wire carries only
    ``meta_address``): each caller gets one of them as ``meta_address``, so clients spread
    over the servers, which all serve the same namespace.
    """

    version: int = 0
    targets: dict[int, TargetInfo] = field(default_factory=dict)
    chains: dict[int, Chain] = field(default_factory=dict)
    meta_address: str = ""
    meta_addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class User:
    """An fs3 account (:mod:`fs3.meta.users`): the identity its token stands for in meta's
    permission checks. Only the SHA-256 of the token is kept."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    """Supplementary groups, beside ``gid``."""
    admin: bool = False
    """Passes every permission check and manages users (POSIX's root)."""
    mount: bool = False
    """May act for any uid/gid (a FUSE mount serving its host's processes)."""
    token_hash: str = ""
