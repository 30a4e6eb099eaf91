"""The demo's folder, lock and port checks: one clear error, nothing left running."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hai.demo import DemoError, DemoStack, stop

from .demo_support import processes_under


def test_stack_starts_both_clusters_and_stops_everything(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    with DemoStack(root) as stack:
        assert stack.fs3 is not None and stack.platform is not None
        assert (stack.fs3_dir / "address").read_text().strip() == stack.fs3.address
        assert len(processes_under(root)) == 5 + 3  # mgmtd, meta, 3 storage; server, 2 agents
        with pytest.raises(DemoError, match="another hai demo .* is running in"):
            DemoStack(root).__enter__()
    assert processes_under(root) == []


def test_keep_leaves_clusters_until_down(tmp_path: Path) -> None:
    root = tmp_path / "kept"
    with DemoStack(root, keep=True):
        pass
    try:
        assert len(processes_under(root)) == 8
        with pytest.raises(DemoError, match="kept its clusters running.*hai demo --down"):
            DemoStack(root).__enter__()
    finally:
        stopped = stop(root)
    assert any(s.startswith("platform server (pid ") for s in stopped), stopped
    assert "5 fs3 services" in stopped
    assert processes_under(root) == []


def test_busy_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DemoError, match=f"port {port} is in use"):
            DemoStack(tmp_path / "d", port=port).__enter__()
    assert processes_under(tmp_path) == []


def test_unusable_or_foreign_folders_are_refused(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(DemoError, match="cannot use .*file/demo for the demo: Not a directory"):
        DemoStack(not_a_dir / "demo").__enter__()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(DemoError, match="not empty and holds no earlier demo .*thesis.tex"):
        DemoStack(foreign).__enter__()
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]
