"""The job-side client's server calls (whole-life state) ride out a server restart: they are
retried with jittered pauses while nothing answers, and give up with the last error after
SERVER_WAIT_S. The server is a real gRPC one, started on the port mid-retry."""

from __future__ import annotations

import socket
from typing import Any

import grpc
import pytest

from hai import client
from hai.errors import Unavailable
from hai.rpc import serve


@pytest.fixture
def port(monkeypatch: pytest.MonkeyPatch) -> int:
    """A free port, named as the job's server; nothing listens on it yet."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HAI_SERVER", f"127.0.0.1:{port}")
    monkeypatch.setenv("HAI_RUN_TOKEN", "run-token")
    return port


def test_a_call_waits_for_the_server_to_come_back(port: int, pauses: Any) -> None:
    servers: list[grpc.Server] = []

    def state(body: dict[str, Any], token: str | None) -> dict[str, Any]:
        assert token == "run-token"
        return {"step": 40}

    def start_server(count: int) -> None:
        if count == 3:  # the server is back after the third pause
            servers.append(serve({"GetWholeLifeState": state}, "127.0.0.1", port))

    pauses.on_pause = start_server
    try:
        assert client._call_server("GetWholeLifeState", {}, sleep=pauses) == {"step": 40}
    finally:
        for server in servers:
            server.stop(0).wait()
    assert len(pauses.pauses) >= 3 and len(set(pauses.pauses)) > 1


def test_a_call_gives_up_after_server_wait_s(
    port: int, pauses: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client, "SERVER_WAIT_S", 0.5)
    with pytest.raises(Unavailable, match=f"hai server at 127.0.0.1:{port} unavailable"):
        client._call_server("GetWholeLifeState", {}, sleep=pauses)
    assert len(pauses.pauses) > 1 and sum(pauses.pauses) <= 0.5
