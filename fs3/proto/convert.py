"""Conversions between protobuf messages and fs3's dataclasses, so cores never see protobuf."""

from __future__ import annotations

from fs3.proto import fs3_pb2 as pb
from fs3.types import (
    Chain,
    ChainMember,
    DirEntry,
    Inode,
    Layout,
    Quota,
    ResyncProgress,
    RoutingTable,
    TargetInfo,
    TargetStats,
    TrashEntry,
    User,
)


def target_to_pb(t: TargetInfo) -> pb.Target:
    return pb.Target(
        target_id=t.target_id,
        host=t.host,
        data_port=t.data_port,
        grpc_port=t.grpc_port,
        alive=t.alive,
    )


def target_from_pb(m: pb.Target) -> TargetInfo:
    return TargetInfo(m.target_id, m.host, m.data_port, m.grpc_port, m.alive)


def routing_to_pb(r: RoutingTable) -> pb.RoutingTable:
    return pb.RoutingTable(
        version=r.version,
        targets=[target_to_pb(t) for t in r.targets.values()],
        chains=[
            pb.Chain(
                chain_id=c.chain_id,
                members=[pb.Member(target_id=m.target_id, state=m.state) for m in c.members],
            )
            for c in r.chains.values()
        ],
        meta_address=r.meta_address,
    )


def routing_from_pb(m: pb.RoutingTable) -> RoutingTable:
    return RoutingTable(
        version=m.version,
        targets={t.target_id: target_from_pb(t) for t in m.targets},
        chains={
            c.chain_id: Chain(
                c.chain_id, tuple(ChainMember(x.target_id, x.state) for x in c.members)
            )
            for c in m.chains
        },
        meta_address=m.meta_address,
    )


def inode_to_pb(i: Inode) -> pb.Inode:
    lay = pb.Layout(chunk_size=i.layout.chunk_size, chains=i.layout.chains, seed=i.layout.seed)
    q = i.quota
    quota = (
        None
        if q is None
        else pb.Quota(
            max_bytes=q.max_bytes,
            max_inodes=q.max_inodes,
            used_bytes=q.used_bytes,
            used_inodes=q.used_inodes,
        )
    )
    return pb.Inode(
        id=i.id,
        kind=i.kind,
        mode=i.mode,
        length=i.length,
        mtime=i.mtime,
        ctime=i.ctime,
        parent=i.parent,
        layout=lay,
        target=i.target,
        atime=i.atime,
        quota=quota,
        uid=i.uid,
        gid=i.gid,
        nlink=i.nlink,
    )


def inode_from_pb(m: pb.Inode) -> Inode:
    lay = Layout(m.layout.chunk_size, tuple(m.layout.chains), m.layout.seed)
    q = m.quota
    quota = None
    if m.HasField("quota"):
        quota = Quota(q.max_bytes, q.max_inodes, q.used_bytes, q.used_inodes)
    return Inode(
        m.id,
        m.kind,
        m.mode,
        m.length,
        m.mtime,
        m.ctime,
        m.parent,
        lay,
        m.target,
        m.atime,
        quota,
        m.uid,
        m.gid,
        m.nlink or 1,  # a meta server from before link counts sends none
    )


def entry_to_pb(e: DirEntry) -> pb.DirEntry:
    return pb.DirEntry(name=e.name, inode=inode_to_pb(e.inode))


def entry_from_pb(m: pb.DirEntry) -> DirEntry:
    return DirEntry(m.name, inode_from_pb(m.inode))


def trash_to_pb(e: TrashEntry) -> pb.TrashEntry:
    return pb.TrashEntry(
        name=e.name, path=e.path, deleted=e.deleted, expires=e.expires, inode=inode_to_pb(e.inode)
    )


def trash_from_pb(m: pb.TrashEntry) -> TrashEntry:
    return TrashEntry(m.name, m.path, m.deleted, m.expires, inode_from_pb(m.inode))


def stats_to_pb(t: TargetStats) -> pb.TargetStats:
    return pb.TargetStats(
        target_id=t.target_id,
        total_bytes=t.total_bytes,
        free_bytes=t.free_bytes,
        used_bytes=t.used_bytes,
        chunks=t.chunks,
        fsid=t.fsid,
        resyncs=[
            pb.ResyncProgress(
                chain_id=r.chain_id, target_id=r.target_id, done=r.done, total=r.total
            )
            for r in t.resyncs
        ],
    )


def stats_from_pb(m: pb.TargetStats) -> TargetStats:
    resyncs = tuple(ResyncProgress(r.chain_id, r.target_id, r.done, r.total) for r in m.resyncs)
    return TargetStats(
        m.target_id, m.total_bytes, m.free_bytes, m.used_bytes, m.chunks, m.fsid, resyncs
    )


def user_to_pb(u: User) -> pb.UserInfo:
    return pb.UserInfo(
        name=u.name, uid=u.uid, gid=u.gid, groups=u.groups, admin=u.admin, mount=u.mount
    )


def user_from_pb(m: pb.UserInfo) -> User:
    return User(m.name, m.uid, m.gid, tuple(m.groups), m.admin, m.mount)
