"""The meta process: a gRPC shell over :class:`Namespace`, and the chunk garbage collector."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import grpc

from fs3.config import Fs3Config
from fs3.errors import Fs3Error
from fs3.meta.namespace import Namespace
from fs3.meta.sqlite import SqliteMetaStore
from fs3.mgmtd.client import MgmtdClient
from fs3.proto import fs3_pb2 as pb
from fs3.proto import fs3_pb2_grpc as pbg
from fs3.proto.convert import entry_to_pb, inode_to_pb
from fs3.rpc import serve, servicer_method
from fs3.storage.wire import REMOVE, ConnectionPool, Request

log = logging.getLogger("fs3.meta")


class MetaServicer(pbg.MetaServicer):
    def __init__(self, ns: Namespace) -> None:
        self.ns = ns

    @servicer_method
    def Stat(self, r: pb.PathRequest, c: grpc.ServicerContext) -> pb.Inode:
        return inode_to_pb(self.ns.stat(r.path))

    @servicer_method
    def Open(self, r: pb.PathRequest, c: grpc.ServicerContext) -> pb.Inode:
        return inode_to_pb(self.ns.open(r.path))

    @servicer_method
    def Mkdir(self, r: pb.MkdirRequest, c: grpc.ServicerContext) -> pb.Inode:
        return inode_to_pb(self.ns.mkdir(r.path, r.parents, r.mode or 0o755))

    @servicer_method
    def Create(self, r: pb.CreateRequest, c: grpc.ServicerContext) -> pb.Inode:
        return inode_to_pb(
            self.ns.create(r.path, r.exclusive, r.chunk_size, r.stripe, r.mode or 0o644)
        )

    @servicer_method
    def List(self, r: pb.PathRequest, c: grpc.ServicerContext) -> pb.Listing:
        return pb.Listing(entries=[entry_to_pb(e) for e in self.ns.listdir(r.path)])

    @servicer_method
    def Rename(self, r: pb.RenameRequest, c: grpc.ServicerContext) -> pb.Inode:
        return inode_to_pb(self.ns.rename(r.src, r.dst))

    @servicer_method
    def Unlink(self, r: pb.PathRequest, c: grpc.ServicerContext) -> pb.Empty:
        self.ns.unlink(r.path)
        return pb.Empty()

    @servicer_method
    def Rmdir(self, r: pb.PathRequest, c: grpc.ServicerContext) -> pb.Empty:
        self.ns.rmdir(r.path)
        return pb.Empty()

    @servicer_method
    def Truncate(self, r: pb.TruncateRequest, c: grpc.ServicerContext) -> pb.Inode:
        return inode_to_pb(self.ns.truncate(r.path, r.length))

    @servicer_method
    def SetLength(self, r: pb.SetLengthRequest, c: grpc.ServicerContext) -> pb.Inode:
        return inode_to_pb(self.ns.set_length(r.inode_id, r.length))

    @servicer_method
    def Symlink(self, r: pb.SymlinkRequest, c: grpc.ServicerContext) -> pb.Inode:
        return inode_to_pb(self.ns.symlink(r.path, r.target))

    @servicer_method
    def Readlink(self, r: pb.PathRequest, c: grpc.ServicerContext) -> pb.LinkTarget:
        return pb.LinkTarget(target=self.ns.readlink(r.path))


def collect_garbage(ns: Namespace, mgmtd: MgmtdClient, pool: ConnectionPool) -> int:
    """Deletes queued chunks from every live member of their chains; returns items done.

    An item stays queued while any live member cannot be reached. Offline members need no
    visit: resync removes chunks their predecessor no longer has.
    """
    table = mgmtd.table()
    done = 0
    for gid, item in ns.take_garbage():
        try:
            for chain_id in item.chains:
                chain = table.chains.get(chain_id)
                for member in chain.writers() if chain else ():
                    info = table.targets[member]
                    req = Request(REMOVE, chain_id, 0, item.inode, item.from_index)
                    pool.request(f"{info.host}:{info.data_port}", req)
        except Fs3Error as err:
            log.info("garbage %d (inode %d) kept for later: %s", gid, item.inode, err)
            continue
        ns.drop_garbage(gid)
        done += 1
    return done


def run_meta(
    db: Path, mgmtd_address: str, host: str, port: int, config: Fs3Config, stop: threading.Event
) -> None:
    """Serves the namespace in SQLite file ``db`` until ``stop`` is set."""
    t = config.timeouts
    store = SqliteMetaStore(db)
    mgmtd = MgmtdClient(mgmtd_address, t.rpc_s)
    ns = Namespace(store, chains=lambda: list(mgmtd.table().chains))
    server = serve(lambda s: pbg.add_MetaServicer_to_server(MetaServicer(ns), s), host, port)
    pool = ConnectionPool(t.connect_s, t.rpc_s)
    address = f"{host}:{port}"
    log.info("meta serving on %s, namespace in %s", address, db)
    try:
        while True:
            try:
                # Re-registering each period also refreshes the chain table new files use,
                # and re-announces meta to an mgmtd that restarted.
                mgmtd.register_meta(address)
                collect_garbage(ns, mgmtd, pool)
            except Fs3Error as err:
                log.warning("meta: %s", err)
            if stop.wait(config.mgmtd.heartbeat_s):
                break
    finally:
        server.stop(grace=1.0)
        pool.close()
        mgmtd.close()
        store.close()
