"""The storage process: TCP data path and gRPC comparison path over one StorageTarget, the
Unix socket of local reads (:mod:`fs3.storage.local_read`), and the heartbeat loop that
renews the lease and starts resyncs."""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
from pathlib import Path

import grpc

from fs3.config import Fs3Config
from fs3.errors import Fs3Error
from fs3.mgmtd.client import MgmtdClient
from fs3.proto import fs3_pb2 as pb
from fs3.proto import fs3_pb2_grpc as pbg
from fs3.rpc import serve, servicer_method
from fs3.storage.local import LocalChunkEngine
from fs3.storage.local_read import start_local_reads
from fs3.storage.target import StorageTarget
from fs3.storage.wire import (
    DUMP,
    LOCAL_INFO,
    READ,
    REMOVE,
    REPLICATE,
    RESPONSE,
    SYNC,
    WRITE,
    ConnectionPool,
    FrameServer,
    Reply,
    Request,
)
from fs3.types import TargetInfo, TargetStats

log = logging.getLogger("fs3.storage")


def _payload_size(req: Request) -> int:
    return req.length if req.op in (WRITE, REPLICATE, SYNC) else 0


def _dispatch(target: StorageTarget, local_info: bytes, req: Request, payload: memoryview) -> Reply:
    if req.op == READ:
        version, data, crc = target.read(req)
        return RESPONSE.pack(0, len(data), crc, version), data
    if req.op == WRITE:
        version, crc = target.write(req, payload)
        return RESPONSE.pack(0, 0, crc, version), b""
    if req.op == REPLICATE:
        version, crc = target.replicate(req, payload)
        return RESPONSE.pack(0, 0, crc, version), b""
    if req.op == SYNC:
        target.sync(req, payload)
        return RESPONSE.pack(0, 0, 0, req.version), b""
    if req.op == REMOVE:
        return RESPONSE.pack(0, 0, 0, target.remove(req)), b""
    if req.op == DUMP:
        data = target.dump(req.chain)
        return RESPONSE.pack(0, len(data), 0, 0), data
    if req.op == LOCAL_INFO:
        return RESPONSE.pack(0, len(local_info), 0, 0), local_info
    raise Fs3Error(f"unknown data-path op {req.op}")


class ChunkServicer(pbg.ChunkServiceServicer):
    """The same reads and writes over gRPC unary calls, only for fs3.bench to compare."""

    def __init__(self, target: StorageTarget) -> None:
        self.target = target

    @servicer_method
    def Read(self, request: pb.ChunkRequest, context: grpc.ServicerContext) -> pb.ChunkReply:
        req = Request(READ, request.chain_id, request.table_version, request.inode,
                      request.index, request.offset, request.length)  # fmt: skip
        version, data, crc = self.target.read(req)
        return pb.ChunkReply(data=bytes(data), crc=crc, version=version)

    @servicer_method
    def Write(self, request: pb.ChunkRequest, context: grpc.ServicerContext) -> pb.ChunkReply:
        req = Request(WRITE, request.chain_id, request.table_version, request.inode,
                      request.index, request.offset, len(request.data), request.crc,
                      truncate=request.truncate)  # fmt: skip
        version, crc = self.target.write(req, memoryview(request.data))
        return pb.ChunkReply(crc=crc, version=version)


def target_stats(target: StorageTarget, root: Path, fsid: str) -> TargetStats:
    """What the heartbeat reports: the folder's file system (statvfs), the chunks stored and
    the resyncs running."""
    vfs = os.statvfs(root)
    chunks, used = target.engine.usage()
    return TargetStats(target.target_id, vfs.f_blocks * vfs.f_frsize, vfs.f_bavail * vfs.f_frsize,
                       used, chunks, fsid, target.resync_progress())  # fmt: skip


def run_storage(
    target_id: int,
    root: Path,
    mgmtd_address: str,
    host: str,
    data_port: int,
    grpc_port: int,
    config: Fs3Config,
    stop: threading.Event,
) -> None:
    """Serves one storage target until ``stop`` is set."""
    t = config.timeouts
    engine = LocalChunkEngine(root, fsync=config.storage.fsync)
    mgmtd = MgmtdClient(mgmtd_address, t.rpc_s)
    pool = ConnectionPool(t.connect_s, t.rpc_s)
    target = StorageTarget(target_id, engine, mgmtd, pool)
    local = start_local_reads(root, target, config.storage.local_socket_mode)
    local_info = local.info() if local else b""
    dispatch = functools.partial(_dispatch, target, local_info)
    data = FrameServer((host, data_port), _payload_size, dispatch)
    threading.Thread(target=data.serve_forever, daemon=True, name="data-path").start()
    grpc_server = serve(lambda s: pbg.add_ChunkServiceServicer_to_server(ChunkServicer(target), s),
                        host, grpc_port)  # fmt: skip
    me = TargetInfo(target_id, host, data.server_address[1], grpc_port)
    dev = os.stat(root).st_dev
    fsid = f"{socket.gethostname()}:{os.major(dev)}:{os.minor(dev)}"  # host:device of the folder
    log.info("storage target %d on %s:%d (data) under %s", target_id, host, data_port, root)
    try:
        while True:
            try:
                target.start_resyncs(mgmtd.heartbeat(me, target_stats(target, root, fsid)))
            except Fs3Error as err:
                log.warning("target %d: heartbeat failed: %s", target_id, err)
            if stop.wait(config.mgmtd.heartbeat_s):
                break
    finally:
        data.shutdown()
        data.server_close()
        if local is not None:
            local.shutdown()
            local.server_close()
        grpc_server.stop(grace=1.0)
        pool.close()
        mgmtd.close()
