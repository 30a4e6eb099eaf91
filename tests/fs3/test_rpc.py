"""fs3's errors across real gRPC servers: the servicer's error comes back as its own type,
gRPC's own details (JSON-like debug strings included) map by status code, and every fs3
gRPC server answers the standard health service on its port."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import fs3.rpc
from fs3.cluster import LocalCluster
from fs3.errors import Fs3Error, Fs3TimeoutError, NotFound, Unavailable

SERVICE = "test.Echo"
# What gRPC's core writes as details while a server is unreachable or slow: JSON-like, but
# no error of ours.
DEBUG_UNAVAILABLE = (
    '{"created":"@1700000000.000000000","description":"failed to connect to all addresses",'
    '"file":"src/core/lib/surface/call.cc","grpc_status":14}'
)
DEBUG_DEADLINE = '{"created":"@1700000000.0","description":"Deadline Exceeded","grpc_status":4}'


class _Servicer:
    """Methods that fail the ways a real servicer does."""

    @fs3.rpc.servicer_method
    def Missing(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        raise NotFound("no such file", "/data/missing")

    @fs3.rpc.servicer_method
    def Broken(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        raise KeyError("a bug")

    def Unavailable(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.UNAVAILABLE, DEBUG_UNAVAILABLE)

    def Deadline(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, DEBUG_DEADLINE)


def _register(server: grpc.Server) -> None:
    servicer = _Servicer()
    methods = {
        name: grpc.unary_unary_rpc_method_handler(getattr(servicer, name))
        for name in ("Missing", "Broken", "Unavailable", "Deadline")
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))


@pytest.fixture
def echo(free_port: Callable[[], int]) -> Iterator[Callable[[str], Any]]:
    """Calls a method of a real server of :class:`_Servicer` the way fs3's clients do."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    server = fs3.rpc.serve(_register, "127.0.0.1", port, services=[SERVICE])
    channel = fs3.rpc.channel(address)

    def call(method: str) -> Any:
        stub = channel.unary_unary(f"/{SERVICE}/{method}")
        return fs3.rpc.call(stub, b"", 5.0, f"test {method}", address)

    try:
        yield call
    finally:
        channel.close()
        server.stop(0).wait()


def test_a_servicer_error_comes_back_as_its_type_with_its_path(echo: Callable) -> None:
    with pytest.raises(NotFound) as caught:
        echo("Missing")
    assert caught.value.path == "/data/missing" and "no such file" in str(caught.value)


def test_a_servicer_bug_is_an_internal_error_naming_the_method(echo: Callable) -> None:
    with pytest.raises(Fs3Error, match="INTERNAL: Broken: KeyError") as caught:
        echo("Broken")
    assert type(caught.value) is Fs3Error


def test_grpc_debug_details_map_by_status_code_not_as_our_errors(echo: Callable) -> None:
    with pytest.raises(Unavailable, match="failed to connect to all addresses"):
        echo("Unavailable")
    with pytest.raises(Fs3TimeoutError, match="no answer from .* within 5s"):
        echo("Deadline")


def test_a_server_that_is_not_there_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"  # bound, not listening: refused
        channel = fs3.rpc.channel(address)
        try:
            stub = channel.unary_unary(f"/{SERVICE}/Missing")
            with pytest.raises(Unavailable, match=address):
                fs3.rpc.call(stub, b"", 5.0, "test", address)
        finally:
            channel.close()


def _health(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


SERVING = health_pb2.HealthCheckResponse.SERVING


def test_every_fs3_grpc_server_answers_health_checks(cluster: LocalCluster) -> None:
    table = cluster.wait_ready()
    mgmtd = cluster.mgmtd_address()
    for service in ("", "fs3.Mgmtd", "fs3.MgmtdAdmin"):
        assert _health(mgmtd, service) == SERVING, service
    assert table.targets
    for info in table.targets.values():
        storage = f"{info.host}:{info.grpc_port}"
        for service in ("", "fs3.ChunkService"):
            assert _health(storage, service) == SERVING, (storage, service)
    meta = cluster.meta_health_address()
    for service in ("", "fs3.Meta"):
        assert _health(meta, service) == SERVING, service
    with pytest.raises(grpc.RpcError) as caught:
        _health(mgmtd, "fs3.NoSuchService")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
