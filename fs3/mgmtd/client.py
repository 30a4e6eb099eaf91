"""A cached copy of mgmtd's routing table, refreshed when someone finds it stale.

The address may list several mgmtd processes (``HOST:PORT,HOST:PORT``): calls go to the one
that answered last, and move on when it is unreachable or is a standby, following the
standby's "the primary is at X" first (:mod:`fs3.mgmtd.election`).
"""

from __future__ import annotations

import functools
import json
import threading
from typing import Any

import grpc

from fs3.capabilities import CALL_METADATA, Keys, sign_call
from fs3.config import TlsConfig
from fs3.errors import Fs3Error, Fs3TimeoutError, Unavailable
from fs3.proto import fs3_pb2 as pb
from fs3.proto import fs3_pb2_grpc as pbg
from fs3.proto.convert import routing_from_pb, stats_from_pb, stats_to_pb, target_to_pb
from fs3.rpc import call, channel
from fs3.types import RoutingTable, TargetInfo, TargetStats

SIGNED_METHODS = frozenset({"Heartbeat", "RegisterMeta", "SyncDone"})
"""The calls that change the routing table, which mgmtd takes only from services; routing
reads (GetRouting, Stats, Info) stay open: every client needs the table to find chunks."""
_INFO_METHOD = "/fs3.MgmtdAdmin/Info"  # fs3.mgmtd.service.INFO_METHOD, without the import


def split_addresses(address: str) -> list[str]:
    """``"h1:p1, h2:p2"`` -> ``["h1:p1", "h2:p2"]``."""
    return [a.strip() for a in address.split(",") if a.strip()]


class MgmtdClient:
    """Talks to mgmtd at ``address`` (one or several, comma-separated) and caches the latest
    routing table it returned. With ``tls`` enabled every channel is TLS, verified against
    its CA."""

    def __init__(
        self,
        address: str,
        timeout: float,
        tls: TlsConfig | None = None,
        service_keys: Keys | None = None,
    ) -> None:
        addresses = split_addresses(address)
        if not addresses:
            raise Unavailable(
                "no fs3 cluster address: pass fs3://HOST:PORT/..., set FS3_CLUSTER, "
                "or put client.address in the fs3 config file"
            )
        self.address = address
        self.addresses = addresses
        self._current = addresses[0]
        self._timeout = timeout
        self._tls = tls
        self._keys = service_keys
        """A service's keys: its heartbeats, registrations and resync reports are signed
        (:func:`fs3.capabilities.sign_call`); clients have none and need none."""
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self._table: RoutingTable | None = None

    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            ch = self._channels.get(address)
            if ch is None:
                ch = self._channels[address] = channel(address, self._tls)
            return ch

    def _keep(self, reply: pb.RoutingTable) -> RoutingTable:
        table = routing_from_pb(reply)
        with self._lock:
            if self._table is None or table.version >= self._table.version:
                self._table = table
            return self._table

    def table(self) -> RoutingTable:
        """The cached table, fetched on first use."""
        return self._table if self._table is not None else self.refresh()

    def cached(self) -> RoutingTable | None:
        """The cached table, None before the first fetch."""
        return self._table

    def refresh(self) -> RoutingTable:
        return self._keep(self._call("GetRouting", pb.Empty(), "get routing table"))

    def heartbeat(
        self,
        target: TargetInfo,
        stats: TargetStats | None = None,
        fresh: bool = False,
        boot: str = "",
    ) -> RoutingTable:
        req = pb.HeartbeatRequest(
            target=target_to_pb(target),
            stats=stats_to_pb(stats) if stats else None,
            fresh=fresh,
            boot=boot,
        )
        return self._keep(self._call("Heartbeat", req, "heartbeat"))

    def stats(self) -> list[TargetStats]:
        """Capacity, chunk counts and resync progress each target last reported to the
        primary (none right after a fail-over, until the targets' next heartbeats)."""
        reply = self._call("Stats", pb.Empty(), "get target stats")
        return [stats_from_pb(t) for t in reply.targets]

    def register_meta(self, address: str) -> RoutingTable:
        req = pb.RegisterMetaRequest(address=address)
        return self._keep(self._call("RegisterMeta", req, "register meta"))

    def sync_done(self, chain_id: int, target_id: int) -> RoutingTable:
        req = pb.SyncDoneRequest(chain_id=chain_id, target_id=target_id)
        return self._keep(self._call("SyncDone", req, "report sync done"))

    def _call(self, method: str, request: Any, what: str) -> Any:
        """Calls the primary: the last one that answered, else the address a standby named,
        else the next address not tried yet; each address once per call.

        Raises:
            Unavailable / Fs3TimeoutError: with one address, as that call raised; with
                several, Unavailable naming every address tried.
            Fs3Error subclass: what the primary raised.
        """
        tried: list[str] = []
        errors: list[Fs3Error] = []
        address: str | None = self._current
        while address is not None:
            tried.append(address)
            stub = getattr(pbg.MgmtdStub(self._channel(address)), method)
            if self._keys is not None and method in SIGNED_METHODS:
                body = request.SerializeToString(deterministic=True)
                signature = sign_call(self._keys.mgmtd, method, body)
                stub = functools.partial(stub, metadata=((CALL_METADATA, signature),))
            try:
                reply = call(stub, request, self._timeout, f"mgmtd {what}", address)
            except (Unavailable, Fs3TimeoutError) as err:
                errors.append(err)
                hint = err.path if isinstance(err, Unavailable) else None
                if hint and hint not in tried:
                    address = hint  # a standby named the primary
                else:
                    address = next((a for a in self.addresses if a not in tried), None)
                continue
            self._current = address
            return reply
        if len(tried) == 1:
            raise errors[0]
        raise Unavailable(
            f"mgmtd {what}: no primary among {', '.join(tried)}: "
            + "; ".join(str(e) for e in errors)
        )

    def info(self, address: str | None = None) -> dict[str, Any]:
        """Role, primary and meta servers as the mgmtd at ``address`` (default: the last
        that answered) reports them; standbys answer too. Raises Unavailable."""
        address = address or self._current
        stub = self._channel(address).unary_unary(
            _INFO_METHOD,
            request_serializer=lambda obj: json.dumps(obj).encode(),
            response_deserializer=json.loads,
        )
        return call(stub, {}, self._timeout, "mgmtd info", address)

    def info_all(self) -> list[dict[str, Any]]:
        """:meth:`info` of every configured address; an unreachable one reports its role as
        ``"unreachable"`` and its ``error``."""
        out = []
        for address in self.addresses:
            try:
                out.append(self.info(address))
            except Fs3Error as err:
                out.append({"address": address, "role": "unreachable", "error": str(err)})
        return out

    def close(self) -> None:
        with self._lock:
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()
