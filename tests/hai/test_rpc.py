"""Error details: ours become hai errors again; gRPC's own, even JSON-like, are left alone.
A port in use is refused, for hai's servers and fs3's alike (gRPC would share it)."""

from __future__ import annotations

import json
import socket

import pytest

import fs3.errors
import fs3.rpc
import hai.errors
from hai.rpc import _our_error, serve


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
    info = _our_error(details)
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
            fs3.rpc.serve(lambda server: None, "127.0.0.1", port)
    finally:
        first.stop(0).wait()
    again = serve({}, "127.0.0.1", port)  # free again once stopped
    again.stop(0).wait()
