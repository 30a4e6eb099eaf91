"""A cached copy of mgmtd's routing table, refreshed when someone finds it stale."""

from __future__ import annotations

import threading

from fs3.errors import Unavailable
from fs3.proto import fs3_pb2 as pb
from fs3.proto import fs3_pb2_grpc as pbg
from fs3.proto.convert import routing_from_pb, target_to_pb
from fs3.rpc import call, channel
from fs3.types import RoutingTable, TargetInfo


class MgmtdClient:
    """Talks to mgmtd at ``address`` and caches the latest routing table it returned."""

    def __init__(self, address: str, timeout: float) -> None:
        if not address:
            raise Unavailable(
                "no fs3 cluster address: pass fs3://HOST:PORT/..., set FS3_CLUSTER, "
                "or put client.address in the fs3 config file"
            )
        self.address = address
        self._timeout = timeout
        self._channel = channel(address)
        self._stub = pbg.MgmtdStub(self._channel)
        self._lock = threading.Lock()
        self._table: RoutingTable | None = None

    def _keep(self, reply: pb.RoutingTable) -> RoutingTable:
        table = routing_from_pb(reply)
        with self._lock:
            if self._table is None or table.version >= self._table.version:
                self._table = table
            return self._table

    def table(self) -> RoutingTable:
        """The cached table, fetched on first use."""
        return self._table if self._table is not None else self.refresh()

    def refresh(self) -> RoutingTable:
        return self._keep(self._call(self._stub.GetRouting, pb.Empty(), "get routing table"))

    def heartbeat(self, target: TargetInfo) -> RoutingTable:
        req = pb.HeartbeatRequest(target=target_to_pb(target))
        return self._keep(self._call(self._stub.Heartbeat, req, "heartbeat"))

    def register_meta(self, address: str) -> RoutingTable:
        req = pb.RegisterMetaRequest(address=address)
        return self._keep(self._call(self._stub.RegisterMeta, req, "register meta"))

    def sync_done(self, chain_id: int, target_id: int) -> RoutingTable:
        req = pb.SyncDoneRequest(chain_id=chain_id, target_id=target_id)
        return self._keep(self._call(self._stub.SyncDone, req, "report sync done"))

    def _call(self, method, request, what: str):  # type: ignore[no-untyped-def]
        return call(method, request, self._timeout, f"mgmtd {what}", self.address)

    def close(self) -> None:
        self._channel.close()
