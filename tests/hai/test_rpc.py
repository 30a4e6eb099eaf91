"""Error details: ours become hai errors again; gRPC's own, even JSON-like, are left alone.
A port in use is refused, for hai's servers and fs3's alike (gRPC would share it). The
server answers the standard gRPC health service on its own port."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import fs3.errors
import fs3.rpc
import hai.errors
from fs3.wire.status import our_details
from hai.config import load_config
from hai.rpc import SERVICE, ApiClient, serve
from hai.server import Server


@pytest.mark.parametrize(
    ("details", "kind"),
    [
        (json.dumps({"kind": "StateError", "message": "job 3 is queued"}), "StateError"),
        ('{"created":"@1520876903.71","description":"pollset_work"}', None),
        ('{"kind": "StateError", "mess', None),  # cut short
        ("failed to connect to all addresses", None),
        ("[1, 2]", None),
    ],
)
def test_only_our_error_details_are_decoded(details: str, kind: str | None) -> None:
    info = our_details(details)
    assert (info or {}).get("kind") == kind


def test_a_second_server_on_a_port_in_use_is_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    first = serve({}, "127.0.0.1", port)
    try:
        with pytest.raises(hai.errors.Unavailable, match="in use"):
            serve({}, "127.0.0.1", port)
        with pytest.raises(fs3.errors.Unavailable, match="in use"):
            fs3.rpc.serve(lambda server: None, "127.0.0.1", port, services=[])
    finally:
        first.stop(0).wait()
    again = serve({}, "127.0.0.1", port)  # free again once stopped
    again.stop(0).wait()


def test_a_spec_error_comes_back_with_its_problems(free_port: Callable[[], int]) -> None:
    def submit(body: dict, token: str | None) -> None:
        raise hai.errors.SpecError([f"nodes: {body['nodes']} is not a positive count"])

    port = free_port()
    server = serve({"Submit": submit}, "127.0.0.1", port)
    client = ApiClient(f"127.0.0.1:{port}", None)
    try:
        with pytest.raises(hai.errors.SpecError) as caught:
            client.call("Submit", nodes=-1)
        assert caught.value.problems == ["nodes: -1 is not a positive count"]
    finally:
        client.close()
        server.stop(0).wait()


def test_grpc_debug_details_are_unavailable_not_our_errors(free_port: Callable[[], int]) -> None:
    debug = '{"created":"@1700000000.0","description":"failed to connect to all addresses"}'

    def register(server: grpc.Server) -> None:
        def fail(request: bytes, context: grpc.ServicerContext) -> bytes:
            context.abort(grpc.StatusCode.UNAVAILABLE, debug)

        methods = {"Status": grpc.unary_unary_rpc_method_handler(fail)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))

    port = free_port()
    server = fs3.rpc.serve(register, "127.0.0.1", port, services=[SERVICE])
    client = ApiClient(f"127.0.0.1:{port}", None)
    try:
        with pytest.raises(hai.errors.Unavailable, match="failed to connect.*is it running"):
            client.call("Status")
    finally:
        client.close()
        server.stop(0).wait()


def test_the_server_answers_health_checks(tmp_path: Path, free_port: Callable[[], int]) -> None:
    port = free_port()
    server = Server(load_config(env={}, overrides={"server": {"port": port}}), tmp_path / "hai")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", SERVICE):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    finally:
        server.stop()
