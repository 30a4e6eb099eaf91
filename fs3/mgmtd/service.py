"""The mgmtd process: a gRPC shell over :class:`fs3.mgmtd.core.Mgmtd` plus the lease clock."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import grpc

from fs3.config import MgmtdConfig
from fs3.mgmtd.core import Mgmtd, build_chains
from fs3.proto import fs3_pb2 as pb
from fs3.proto import fs3_pb2_grpc as pbg
from fs3.proto.convert import routing_to_pb, target_from_pb
from fs3.rpc import serve, servicer_method

log = logging.getLogger("fs3.mgmtd")


class MgmtdServicer(pbg.MgmtdServicer):
    def __init__(self, core: Mgmtd) -> None:
        self.core = core

    @servicer_method
    def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.RoutingTable:
        return routing_to_pb(self.core.heartbeat(target_from_pb(request.target)))

    @servicer_method
    def RegisterMeta(
        self, request: pb.RegisterMetaRequest, context: grpc.ServicerContext
    ) -> pb.RoutingTable:
        return routing_to_pb(self.core.register_meta(request.address))

    @servicer_method
    def GetRouting(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.RoutingTable:
        return routing_to_pb(self.core.routing())

    @servicer_method
    def SyncDone(
        self, request: pb.SyncDoneRequest, context: grpc.ServicerContext
    ) -> pb.RoutingTable:
        return routing_to_pb(self.core.sync_done(request.chain_id, request.target_id))


def run_mgmtd(
    state_dir: Path,
    targets: list[int],
    replicas: int,
    host: str,
    port: int,
    config: MgmtdConfig,
    stop: threading.Event,
) -> None:
    """Serves mgmtd on ``host:port`` until ``stop`` is set; state lives in ``state_dir``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    core = Mgmtd(build_chains(targets, replicas), config, state_dir / "mgmtd.json")
    server = serve(lambda s: pbg.add_MgmtdServicer_to_server(MgmtdServicer(core), s), host, port)
    log.info("mgmtd serving on %s:%d, %d targets, %d replicas", host, port, len(targets), replicas)
    try:
        while not stop.wait(config.heartbeat_s):
            core.check_leases()
    finally:
        server.stop(grace=1.0)
