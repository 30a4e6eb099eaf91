"""What `hai agent --kubernetes` and `hai server` (with the chart's token) set up. The agent
against a real kube-apiserver is in tests/kube/test_operator.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from hai.auth import authenticate
from hai.k8s.kube import bootstrap_admin
from hai.store import SqlStore, sqlite_url


def test_the_charts_token_becomes_an_admins_once(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    assert bootstrap_admin(url, "from-the-secret") == "admin"
    assert bootstrap_admin(url, "from-the-secret") is None
    assert (
        bootstrap_admin(url, "rotated")
        == "admin-" + __import__("hashlib").sha256(b"rotated").hexdigest()[:8]
    )
    store = SqlStore(url)
    try:
        assert authenticate(store, "from-the-secret").role == "admin"
    finally:
        store.close()


def test_hai_agent_kubernetes_reports_the_nodes_gpus_pool_and_address(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import signal

    from click.testing import CliRunner

    from hai import agent as agent_module
    from hai.cli import main
    from hai.executor import LocalExecutor
    from hai.k8s import kube

    seen = {}
    executor = LocalExecutor()  # stands for the Kubernetes one: only the wiring is checked
    monkeypatch.setattr(
        kube,
        "kubernetes_executor",
        lambda config, node: (executor, kube.NodeResources(8, "h800")),
    )
    monkeypatch.setattr(agent_module.Agent, "run", lambda self, stop: seen.update(a=self))
    monkeypatch.setattr(signal, "signal", lambda *a: None)
    monkeypatch.setenv("HAI_TOKEN", "t")
    args = ["agent", "--kubernetes", "--name", "gpu-7", "--server", "hai-server:7700"]
    args += ["--state-dir", str(tmp_path), "--address", "10.1.2.3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    node = seen["a"]
    assert node.executor is executor and node.virtual_gpus
    assert (node.info.name, node.info.gpus, node.info.group, node.info.address) == (
        "gpu-7",
        8,
        "h800",
        "10.1.2.3",
    )
