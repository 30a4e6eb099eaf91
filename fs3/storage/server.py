"""The storage process: TCP data path and gRPC comparison path over one StorageTarget, the
Unix socket of local reads (:mod:`fs3.storage.local_read`), and the heartbeat loop that
renews the lease, reports capacity and resync progress, and starts resyncs.

A target started on an empty folder (a replaced disk: no chunks, no ``target.json``) says so
in its heartbeats; mgmtd then has its chains rebuild it before it serves reads
(:mod:`fs3.mgmtd.core`), and the marker is written once it serves all of them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import grpc

from fs3.capabilities import ServiceSigner, Verifier, service_keys
from fs3.config import Fs3Config
from fs3.errors import ConfigError, Fs3Error, InvalidArgument
from fs3.mgmtd.client import MgmtdClient
from fs3.proto import fs3_pb2 as pb
from fs3.proto import fs3_pb2_grpc as pbg
from fs3.rpc import serve, servicer_method
from fs3.storage.local import LocalChunkEngine
from fs3.storage.local_read import start_local_reads
from fs3.storage.target import StorageTarget
from fs3.types import SERVING, RoutingTable, TargetInfo, TargetStats, announceable
from fs3.wire import batch
from fs3.wire.client import ConnectionPool
from fs3.wire.framing import RESPONSE, Reply, Request
from fs3.wire.ops import (
    DUMP,
    LOCAL_INFO,
    READ,
    READ_BATCH,
    REMOVE,
    REPAIR,
    REPLICATE,
    SYNC,
    VERIFY,
    WITH_PAYLOAD,
    WRITE,
)
from fs3.wire.server import FrameServer

log = logging.getLogger("fs3.storage")


def check_bounds(req: Request, chunk_bytes: int) -> None:
    """Refuses a data-path request that reaches past ``chunk_bytes`` (``limits.chunk_bytes``)
    within its chunk: a WRITE at offset 4 GiB would otherwise build 4 GiB of zeros, and a
    frame announcing a 4 GiB payload would have it allocated.

    Raises:
        InvalidArgument: naming the request's offset and length and the limit.
    """
    if req.op == READ_BATCH:  # its length is the payload's: bounded by its pieces' count
        batch.check_payload_size(req.length)
        return
    if req.op in (READ, *WITH_PAYLOAD):
        _check_reach(req.op, req.offset, req.length, chunk_bytes)


def _check_reach(op: int, offset: int, length: int, chunk_bytes: int) -> None:
    if offset + length > chunk_bytes:
        raise InvalidArgument(
            f"data-path op {op} reaches byte {offset + length} of a chunk "
            f"(offset {offset}, length {length}), over limits.chunk_bytes ({chunk_bytes})"
        )


def _payload_size(chunk_bytes: int, req: Request) -> int:
    check_bounds(req, chunk_bytes)
    return req.length if req.op in WITH_PAYLOAD else 0


def _batch_pieces(payload: memoryview, chunk_bytes: int) -> list[batch.BatchPiece]:
    """The pieces of a READ_BATCH, each within ``chunk_bytes`` as a READ must be.

    Raises InvalidArgument for the whole batch (see :func:`fs3.wire.batch.decode_request`).
    """
    pieces = batch.decode_request(payload)
    for p in pieces:
        _check_reach(READ, p.offset, p.length, chunk_bytes)
    return pieces


def _dispatch(
    target: StorageTarget, local_info: bytes, chunk_bytes: int, req: Request, payload: memoryview
) -> Reply:
    target.authorize(req)
    if req.op == READ:
        version, data, crc = target.read(req)
        return RESPONSE.pack(0, len(data), crc, version), data
    if req.op == READ_BATCH:
        body = batch.encode_reply(target.read_batch(req, _batch_pieces(payload, chunk_bytes)))
        return RESPONSE.pack(0, len(body), 0, 0), body
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
    if req.op == VERIFY:
        version, crc, report = target.verify(req)
        body = json.dumps(report).encode()
        return RESPONSE.pack(0, len(body), crc, version), body
    if req.op == REPAIR:
        target.repair(req, payload)
        return RESPONSE.pack(0, 0, 0, req.version), b""
    if req.op == LOCAL_INFO:
        return RESPONSE.pack(0, len(local_info), 0, 0), local_info
    raise Fs3Error(f"unknown data-path op {req.op}")


class ChunkServicer(pbg.ChunkServiceServicer):
    """The same reads and writes over gRPC unary calls, only for fs3.bench to compare."""

    def __init__(self, target: StorageTarget, chunk_bytes: int) -> None:
        self.target = target
        self.chunk_bytes = chunk_bytes

    @servicer_method
    def Read(self, request: pb.ChunkRequest, context: grpc.ServicerContext) -> pb.ChunkReply:
        req = Request(
            READ,
            request.chain_id,
            request.table_version,
            request.inode,
            request.index,
            request.offset,
            request.length,
            capability=request.capability,
        )
        check_bounds(req, self.chunk_bytes)
        self.target.authorize(req)
        version, data, crc = self.target.read(req)
        return pb.ChunkReply(data=bytes(data), crc=crc, version=version)

    @servicer_method
    def Write(self, request: pb.ChunkRequest, context: grpc.ServicerContext) -> pb.ChunkReply:
        req = Request(
            WRITE,
            request.chain_id,
            request.table_version,
            request.inode,
            request.index,
            request.offset,
            len(request.data),
            request.crc,
            truncate=request.truncate,
            capability=request.capability,
        )
        check_bounds(req, self.chunk_bytes)
        self.target.authorize(req)
        version, crc = self.target.write(req, memoryview(request.data))
        return pb.ChunkReply(crc=crc, version=version)


def target_stats(target: StorageTarget, root: Path, fsid: str) -> TargetStats:
    """What the heartbeat reports: the folder's file system (statvfs), the chunks stored and
    the resyncs running."""
    vfs = os.statvfs(root)
    chunks, used = target.engine.usage()
    return TargetStats(
        target.target_id,
        vfs.f_blocks * vfs.f_frsize,
        vfs.f_bavail * vfs.f_frsize,
        used,
        chunks,
        fsid,
        target.resync_progress(),
    )


MARKER = "target.json"
"""Written into a target's folder once the target served every one of its chains: a folder
without it (and without chunks) is fresh, a replaced disk that must be rebuilt."""


def folder_is_fresh(root: Path, target_id: int, engine: LocalChunkEngine) -> bool:
    """Whether ``root`` holds nothing yet: no marker and no chunks (a folder from before the
    marker existed, with chunks in it, is not fresh).

    Raises ConfigError when the marker names another target (a folder mixed up).
    """
    marker = root / MARKER
    if marker.exists():
        owner = json.loads(marker.read_text()).get("target_id")
        if owner != target_id:
            raise ConfigError(
                f"{root} holds the chunks of target {owner}, not of target "
                f"{target_id}; start it with --id {owner}"
            )
        return False
    return engine.usage()[0] == 0


def mark_folder(root: Path, target_id: int) -> None:
    tmp = root / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"target_id": target_id, "marked": time.time()}))
    os.replace(tmp, root / MARKER)


def serving_everywhere(table: RoutingTable, target_id: int) -> bool:
    return all(
        c.state_of(target_id) == SERVING
        for c in table.chains.values()
        if any(m.target_id == target_id for m in c.members)
    )


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
    t, security = config.timeouts, config.security
    announceable(host)  # mgmtd tells clients and chain peers this address
    keys = service_keys(security)  # before anything starts: a missing secret stops us here
    engine = LocalChunkEngine(root, fsync=config.storage.fsync)
    fresh = folder_is_fresh(root, target_id, engine)
    boot = uuid.uuid4().hex
    mgmtd = MgmtdClient(mgmtd_address, t.rpc_s, config.tls, service_keys=keys)
    pool = ConnectionPool(t.connect_s, t.rpc_s)
    verifier = signer = None
    if keys is not None:
        verifier = Verifier(keys, security.clock_skew_s)
        signer = ServiceSigner(keys.service, security.capability_s)
    target = StorageTarget(target_id, engine, mgmtd, pool, verifier, signer)
    local = start_local_reads(root, target, config.storage.local_socket_mode, config.host.id)
    local_info = local.info() if local else b""
    chunk_bytes = config.limits.chunk_bytes
    dispatch = functools.partial(_dispatch, target, local_info, chunk_bytes)
    data = FrameServer((host, data_port), functools.partial(_payload_size, chunk_bytes), dispatch)
    threading.Thread(target=data.serve_forever, daemon=True, name="data-path").start()
    grpc_server = serve(
        lambda s: pbg.add_ChunkServiceServicer_to_server(ChunkServicer(target, chunk_bytes), s),
        host,
        grpc_port,
        services=[pb.DESCRIPTOR.services_by_name["ChunkService"].full_name],
        tls=config.tls,
    )
    me = TargetInfo(target_id, host, data.server_address[1], grpc_port)
    dev = os.stat(root).st_dev
    fsid = f"{socket.gethostname()}:{os.major(dev)}:{os.minor(dev)}"  # host:device of the folder
    log.info(
        "storage target %d on %s:%d (data) under %s%s",
        target_id,
        host,
        data_port,
        root,
        " (empty: to be rebuilt from its chains)" if fresh else "",
    )
    try:
        while True:
            try:
                stats = target_stats(target, root, fsid)
                table = mgmtd.heartbeat(me, stats, fresh, boot)
                target.registered.set()
                if fresh and serving_everywhere(table, target_id):
                    mark_folder(root, target_id)  # rebuilt (or a new cluster's first start)
                    fresh = False
                    log.info("target %d: serving every chain; %s written", target_id, MARKER)
                target.start_resyncs(table)
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
