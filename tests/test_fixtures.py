"""The shared fixtures hand out what they promise."""

from __future__ import annotations

import socket
from pathlib import Path


def test_free_port_is_bindable_and_distinct(free_port) -> None:
    ports = [free_port() for _ in range(5)]
    assert len(set(ports)) == 5
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_state_dir_is_empty_and_writable(state_dir: Path) -> None:
    assert state_dir.is_dir() and not any(state_dir.iterdir())
    (state_dir / "x").write_text("y")
    assert (state_dir / "x").read_text() == "y"
