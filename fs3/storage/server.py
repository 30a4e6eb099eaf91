"""The storage process: TCP data path and gRPC comparison path over one StorageTarget,
plus the heartbeat loop that renews the lease and starts resyncs."""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from pathlib import Path

import grpc

from fs3.config import Fs3Config
from fs3.errors import Fs3Error
from fs3.mgmtd.client import MgmtdClient
from fs3.proto import fs3_pb2 as pb
from fs3.proto import fs3_pb2_grpc as pbg
from fs3.rpc import serve, servicer_method
from fs3.storage.engine import crc32c
from fs3.storage.local import LocalChunkEngine
from fs3.storage.target import StorageTarget
from fs3.storage.wire import (
    DUMP,
    READ,
    REMOVE,
    REPLICATE,
    REQUEST,
    RESPONSE,
    SYNC,
    WRITE,
    ConnectionPool,
    Request,
    error_frame,
    recv_exact,
    send_frame,
)
from fs3.types import TargetInfo

log = logging.getLogger("fs3.storage")


class _Handler(socketserver.BaseRequestHandler):
    """Serves one connection: requests in order, each answered before the next is read."""

    server: _DataServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        header = bytearray(REQUEST.size)
        buffer = bytearray(0)  # grows to the largest payload seen, then is reused
        while True:
            try:
                recv_exact(sock, memoryview(header))
            except (ConnectionError, OSError):
                return
            req = Request.unpack(header)
            has_payload = req.op in (WRITE, REPLICATE, SYNC)
            size = req.length if has_payload else 0
            if len(buffer) < size:
                buffer = bytearray(size)
            payload = memoryview(buffer)[:size]
            try:
                recv_exact(sock, payload)
                reply = self._dispatch(req, payload)
            except Fs3Error as err:
                reply = error_frame(err)
            except (ConnectionError, OSError):
                return
            except Exception as err:
                log.exception("data-path op %d failed", req.op)
                reply = error_frame(
                    Fs3Error(f"storage internal error: {type(err).__name__}: {err}")
                )
            try:
                send_frame(sock, *reply)
            except OSError:
                return

    def _dispatch(self, req: Request, payload: memoryview) -> tuple[bytes, bytes]:
        target = self.server.target
        if req.op == READ:
            version, data = target.read(req)
            return RESPONSE.pack(0, len(data), crc32c(data), version), data
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
        raise Fs3Error(f"unknown data-path op {req.op}")


class _DataServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], target: StorageTarget) -> None:
        self.target = target
        super().__init__(address, _Handler)


class ChunkServicer(pbg.ChunkServiceServicer):
    """The same reads and writes over gRPC unary calls, only for fs3.bench to compare."""

    def __init__(self, target: StorageTarget) -> None:
        self.target = target

    @servicer_method
    def Read(self, request: pb.ChunkRequest, context: grpc.ServicerContext) -> pb.ChunkReply:
        req = Request(READ, request.chain_id, request.table_version, request.inode,
                      request.index, request.offset, request.length)  # fmt: skip
        version, data = self.target.read(req)
        return pb.ChunkReply(data=bytes(data), crc=crc32c(data), version=version)

    @servicer_method
    def Write(self, request: pb.ChunkRequest, context: grpc.ServicerContext) -> pb.ChunkReply:
        req = Request(WRITE, request.chain_id, request.table_version, request.inode,
                      request.index, request.offset, len(request.data), request.crc,
                      truncate=request.truncate)  # fmt: skip
        version, crc = self.target.write(req, memoryview(request.data))
        return pb.ChunkReply(crc=crc, version=version)


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
    data = _DataServer((host, data_port), target)
    threading.Thread(target=data.serve_forever, daemon=True, name="data-path").start()
    grpc_server = serve(lambda s: pbg.add_ChunkServiceServicer_to_server(ChunkServicer(target), s),
                        host, grpc_port)  # fmt: skip
    me = TargetInfo(target_id, host, data.server_address[1], grpc_port)
    log.info("storage target %d on %s:%d (data) under %s", target_id, host, data_port, root)
    try:
        while True:
            try:
                target.start_resyncs(mgmtd.heartbeat(me))
            except Fs3Error as err:
                log.warning("target %d: heartbeat failed: %s", target_id, err)
            if stop.wait(config.mgmtd.heartbeat_s):
                break
    finally:
        data.shutdown()
        data.server_close()
        grpc_server.stop(grace=1.0)
        pool.close()
        mgmtd.close()
