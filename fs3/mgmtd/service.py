"""The mgmtd process: a gRPC shell over :class:`fs3.mgmtd.core.Mgmtd`, the primary election
(:mod:`fs3.mgmtd.election`) and the lease clock.

Besides the ``Mgmtd`` service of fs3.proto, each process answers ``/fs3.MgmtdAdmin/Info``
(JSON in, JSON out, no generated code): its role, the primary's address and the meta
servers, which standbys answer too, so a client or operator can find the primary.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import zlib
from pathlib import Path
from typing import Any

import grpc

from fs3.capabilities import CALL_METADATA, Keys, check_call, service_keys
from fs3.config import MgmtdConfig, SecurityConfig, TlsConfig
from fs3.db import redact
from fs3.mgmtd.core import Mgmtd, build_chains
from fs3.mgmtd.election import MgmtdNode
from fs3.mgmtd.placement import plan_chains
from fs3.mgmtd.store import open_mgmtd_store
from fs3.proto import fs3_pb2 as pb
from fs3.proto import fs3_pb2_grpc as pbg
from fs3.proto.convert import routing_to_pb, stats_from_pb, stats_to_pb, target_from_pb
from fs3.rpc import serve, servicer_method
from fs3.types import RoutingTable, announceable, host_port

log = logging.getLogger("fs3.mgmtd")

ADMIN_SERVICE = "fs3.MgmtdAdmin"
INFO_METHOD = f"/{ADMIN_SERVICE}/Info"


def for_caller(table: RoutingTable, peer: str) -> RoutingTable:
    """The table as ``peer`` gets it: ``meta_address`` is one of the live meta servers,
    picked by a hash of the caller's address so that clients spread over them and each
    keeps its pick while its connection lasts."""
    metas = table.meta_addresses
    if len(metas) < 2:
        return table
    return dataclasses.replace(table, meta_address=metas[zlib.crc32(peer.encode()) % len(metas)])


class MgmtdServicer(pbg.MgmtdServicer):
    """Forwards each call to the primary's core; a standby raises "not the primary"."""

    def __init__(
        self, node: MgmtdNode, keys: Keys | None = None, clock_skew_s: float = 30.0
    ) -> None:
        self.node = node
        self.keys = keys
        """Heartbeat, RegisterMeta and SyncDone must be signed with them (None: unchecked)."""
        self.clock_skew_s = clock_skew_s

    def _authenticate(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        """Refuses a call that changes the routing table unless a service signed it: a
        forged heartbeat would move a target's address to a port of the forger's choosing."""
        if self.keys is None:
            return
        value = dict(context.invocation_metadata()).get(CALL_METADATA)
        body = request.SerializeToString(deterministic=True)
        check_call(self.keys.mgmtd, method, body, value, self.clock_skew_s)

    def _reply(self, table: RoutingTable, context: grpc.ServicerContext) -> pb.RoutingTable:
        return routing_to_pb(for_caller(table, context.peer() or ""))

    def _core(self) -> Mgmtd:
        return self.node.core()

    @servicer_method
    def Heartbeat(
        self, request: pb.HeartbeatRequest, context: grpc.ServicerContext
    ) -> pb.RoutingTable:
        self._authenticate("Heartbeat", request, context)
        stats = stats_from_pb(request.stats) if request.HasField("stats") else None
        table = self._core().heartbeat(
            target_from_pb(request.target), stats, request.fresh, request.boot
        )
        return self._reply(table, context)

    @servicer_method
    def RegisterMeta(
        self, request: pb.RegisterMetaRequest, context: grpc.ServicerContext
    ) -> pb.RoutingTable:
        self._authenticate("RegisterMeta", request, context)
        return self._reply(self._core().register_meta(request.address), context)

    @servicer_method
    def GetRouting(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.RoutingTable:
        return self._reply(self._core().routing(), context)

    @servicer_method
    def SyncDone(
        self, request: pb.SyncDoneRequest, context: grpc.ServicerContext
    ) -> pb.RoutingTable:
        self._authenticate("SyncDone", request, context)
        return self._reply(self._core().sync_done(request.chain_id, request.target_id), context)

    @servicer_method
    def Stats(self, request: pb.Empty, context: grpc.ServicerContext) -> pb.ClusterStats:
        return pb.ClusterStats(targets=[stats_to_pb(t) for t in self._core().stats()])

    @servicer_method
    def Info(self, request: dict[str, Any], context: grpc.ServicerContext) -> dict[str, Any]:
        return self.node.info()


def _admin_handler(servicer: MgmtdServicer) -> grpc.GenericRpcHandler:
    info = grpc.unary_unary_rpc_method_handler(
        servicer.Info,
        request_deserializer=lambda raw: json.loads(raw or b"{}"),
        response_serializer=lambda obj: json.dumps(obj).encode(),
    )
    return grpc.method_handlers_generic_handler(ADMIN_SERVICE, {"Info": info})


def first_chains(targets: list[int], replicas: int, targets_per_node: int) -> dict[int, list[int]]:
    """The chain table a new cluster starts with: with ``targets_per_node`` (targets listed
    node by node) a balanced plan (:func:`fs3.mgmtd.placement.plan_chains`); without, one
    chain per target rotated over all targets, as on a one-machine cluster."""
    if not targets_per_node:
        return build_chains(targets, replicas)
    nodes, rest = divmod(len(targets), targets_per_node)
    if rest:
        from fs3.errors import ConfigError

        raise ConfigError(f"{len(targets)} targets do not fill nodes of {targets_per_node}")
    plan = plan_chains(nodes, targets_per_node, replicas)
    log.info("chain table for %d nodes x %d targets: %s", nodes, targets_per_node, plan.method)
    return plan.chain_table(targets)


def run_mgmtd(
    state_dir: Path,
    targets: list[int],
    replicas: int,
    host: str,
    port: int,
    config: MgmtdConfig,
    stop: threading.Event,
    db: str | os.PathLike[str] | None = None,
    advertise: str | None = None,
    targets_per_node: int = 0,
    tls: TlsConfig | None = None,
    security: SecurityConfig | None = None,
) -> None:
    """Serves mgmtd on ``host:port`` until ``stop`` is set.

    Args:
        state_dir: holds the default store, ``mgmtd.db``.
        db: the store shared with the cluster's other mgmtd processes: a SQLite file or a
            ``postgresql://`` URL (default ``state_dir/mgmtd.db``).
        advertise: ``HOST:PORT`` standbys send clients to (default ``host:port``).
        targets_per_node: plan the first chain table for nodes of this many targets.
        tls: serve over TLS when enabled (:func:`fs3.rpc.serve`).
        security: whose heartbeats and registrations count (:mod:`fs3.capabilities`);
            None: anyone's.
    """
    keys = service_keys(security) if security is not None else None
    state_dir.mkdir(parents=True, exist_ok=True)
    address = advertise or host_port(announceable(host, "--host (without --advertise)"), port)
    store = open_mgmtd_store(db or state_dir / "mgmtd.db")
    node = MgmtdNode(store, address, first_chains(targets, replicas, targets_per_node), config)
    skew = security.clock_skew_s if security is not None else 0.0
    servicer = MgmtdServicer(node, keys, skew)

    def register(server: grpc.Server) -> None:
        pbg.add_MgmtdServicer_to_server(servicer, server)
        server.add_generic_rpc_handlers((_admin_handler(servicer),))

    node.step()  # the first campaign before serving: a lone mgmtd answers at once
    services = [pb.DESCRIPTOR.services_by_name["Mgmtd"].full_name, ADMIN_SERVICE]
    server = serve(register, host, port, services=services, tls=tls)
    log.info(
        "mgmtd serving on %s (%s), state in %s, %d targets, %d replicas",
        address,
        node.info()["role"],
        redact(str(db or state_dir / "mgmtd.db")),
        len(targets),
        replicas,
    )
    try:
        while not stop.wait(config.heartbeat_s):
            node.step()
    finally:
        server.stop(grace=1.0)
        node.close()
        store.close()
