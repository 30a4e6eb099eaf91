"""fs3's chain state as metrics (hai operator fs3-exporter), from mgmtd's routing table."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from fs3.types import Chain, ChainMember, RoutingTable, TargetInfo
from hai.k8s.fs3_metrics import Fs3Metrics, chain_metrics

from ..waiting import wait_for


def test_a_chain_with_an_offline_replica_is_degraded_and_one_with_none_serving_unreadable():
    table = RoutingTable(
        version=3,
        targets={1: TargetInfo(1, alive=True), 2: TargetInfo(2, alive=True), 3: TargetInfo(3)},
        chains={
            1: Chain(1, (ChainMember(1, "serving"), ChainMember(2, "serving"))),
            2: Chain(2, (ChainMember(2, "serving"), ChainMember(3, "offline"))),
            3: Chain(3, (ChainMember(1, "syncing"), ChainMember(3, "offline"))),
        },
    )
    snap = chain_metrics(table)
    assert (snap.targets_alive, snap.targets_down, snap.chains) == (2, 1, 3)
    assert (snap.degraded, snap.without_reader) == (2, 1)
    assert snap.members == {"serving": 3, "syncing": 1, "offline": 2}
    metrics = Fs3Metrics()
    metrics.observe(snap)
    assert metrics.registry.get_sample_value("fs3_chains_degraded") == 2
    assert metrics.registry.get_sample_value("fs3_targets", {"state": "down"}) == 1
    assert metrics.registry.get_sample_value("fs3_mgmtd_up") == 1


HAI = [sys.executable, "-m", "hai"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("FS3_")}


def _metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    return next(
        (float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " ")), None
    )


def test_the_exporter_reads_a_tls_cluster_with_the_fs3_config(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    up = subprocess.run(
        [*HAI, "fs3", "up", str(tmp_path), "--tls", "--detach"],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert up.returncode == 0, up.stderr
    port = free_port()
    exporter = subprocess.Popen(
        [*HAI, "operator", "fs3-exporter", "--mgmtd", up.stdout.strip().splitlines()[-1]]
        + ["--port", str(port), "--host", "127.0.0.1", "--interval", "0.2"],
        env={**ENV, "FS3_CONFIG": str(tmp_path / "config.yaml")},  # tls: the cluster's CA
    )
    try:
        wait_for("the exporter to read mgmtd", lambda: _metric(port, "fs3_mgmtd_up") == 1)
        assert _metric(port, "fs3_chains") == 3
    finally:
        exporter.terminate()
        exporter.wait(timeout=30)
        subprocess.run(
            [*HAI, "fs3", "down", str(tmp_path)], capture_output=True, timeout=60, env=ENV
        )


def test_the_exporter_refuses_bad_fs3_tls_settings_in_one_line() -> None:
    result = subprocess.run(
        [*HAI, "operator", "fs3-exporter", "--mgmtd", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**ENV, "FS3_TLS__ENABLED": "true"},
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "tls.ca_file" in result.stderr, result.stderr
