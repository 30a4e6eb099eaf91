"""Error details: ours become hai errors again; gRPC's own, even JSON-like, are left alone."""

from __future__ import annotations

import json

import pytest

from hai.rpc import _our_error


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
