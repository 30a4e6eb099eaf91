"""TLS on fs3's gRPC ports: a real `hai fs3 up --tls` cluster, its clients, and the ones it
refuses (plaintext, another cluster's CA)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fs3 import rpc, tls
from fs3.client import FS3FileSystem
from fs3.cluster import LocalCluster
from fs3.config import TlsConfig, load_config
from fs3.errors import ConfigError, Unavailable
from fs3.mgmtd.client import MgmtdClient

FS3 = [sys.executable, "-m", "fs3"]
# The clients' environment: no fs3 settings of whoever runs the tests.
ENV = {k: v for k, v in os.environ.items() if not k.startswith("FS3_")}


def _fs3(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    # The timeout only turns a hang into a failure: a refusal must come back at once.
    return subprocess.run(
        FS3 + list(args), capture_output=True, text=True, timeout=60, env={**ENV, **env}
    )


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A cluster started as a user does, `hai fs3 up --tls --detach`: (folder, address)."""
    root = tmp_path_factory.mktemp("fs3-tls")
    up = _fs3("up", str(root), "--tls", "--detach")
    try:
        assert up.returncode == 0, up.stderr
        assert f"FS3_CONFIG={root / 'config.yaml'}" in up.stderr
        yield root, up.stdout.strip().splitlines()[-1]
    finally:
        down = _fs3("down", str(root))
        assert down.returncode == 0, down.stderr


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _health(address: str, config: TlsConfig | None) -> int:
    with rpc.channel(address, config) as ch:
        check = health_pb2_grpc.HealthStub(ch).Check
        return rpc.call(check, health_pb2.HealthCheckRequest(), 5.0, "health", address).status


def test_files_and_routing_over_tls(tls_cluster: tuple[Path, str]) -> None:
    root, address = tls_cluster
    config = root / "config.yaml"
    fs = FS3FileSystem(address, config_path=str(config), skip_instance_cache=True)
    data = os.urandom(300_000)
    fs.pipe_file("/secret.bin", data)
    assert fs.cat_file("/secret.bin") == data

    client = MgmtdClient(address, 5.0, load_config(config).tls)
    try:
        table = client.refresh()
    finally:
        client.close()
    assert table.meta_address and len(table.targets) == 3
    assert all(t.alive for t in table.targets.values())

    # Every gRPC port speaks TLS: mgmtd's, meta's health port, each target's chunk port.
    ports = json.loads((root / "cluster.json").read_text())
    grpc_ports = [ports["mgmtd"], ports["meta.grpc"]] + [
        ports[f"storage-{i}"][1] for i in (1, 2, 3)
    ]
    verified = load_config(config).tls
    for port in grpc_ports:
        assert _health(f"127.0.0.1:{port}", verified) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(Unavailable, match="tls.ca_file"):
            _health(f"127.0.0.1:{port}", None)


def test_plaintext_client_is_refused_with_one_line(tls_cluster: tuple[Path, str]) -> None:
    _, address = tls_cluster
    line = _one_error_line(_fs3("status", "--address", address))
    assert address in line and "set tls.enabled and tls.ca_file" in line


def test_client_with_another_ca_is_refused(tls_cluster: tuple[Path, str], tmp_path: Path) -> None:
    _, address = tls_cluster
    other = tls.ensure_ca(tmp_path / "other")
    result = _fs3(
        "status", "--address", address, FS3_TLS__ENABLED="true", FS3_TLS__CA_FILE=str(other)
    )
    line = _one_error_line(result)
    assert "CERTIFICATE_VERIFY_FAILED" in line and "tls.ca_file" in line


def test_keys_are_private(tls_cluster: tuple[Path, str]) -> None:
    folder = tls_cluster[0] / "tls"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    keys = sorted(p.name for p in folder.glob("*.key"))
    assert keys == ["ca.key", "meta.key", "mgmtd.key"] + [f"storage-{i}.key" for i in (1, 2, 3)]
    for key in folder.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key


def test_restart_keeps_the_ca_and_reissues_certificates(tmp_path: Path) -> None:
    first = LocalCluster(tmp_path, tls=True)
    ca = (tmp_path / "tls" / tls.CA_FILE).read_bytes()
    cert = (tmp_path / "tls" / "mgmtd.pem").read_bytes()
    LocalCluster(tmp_path, tls=True)
    assert (tmp_path / "tls" / tls.CA_FILE).read_bytes() == ca
    assert (tmp_path / "tls" / "mgmtd.pem").read_bytes() != cert
    assert load_config(tmp_path / "config.yaml", env={}).tls == first.tls_config


def test_certificate_names_its_hosts_and_chains_to_the_ca(tmp_path: Path) -> None:
    ca = x509.load_pem_x509_certificate(tls.ensure_ca(tmp_path).read_bytes())
    cert_file, _ = tls.issue(tmp_path, "storage-1", ["10.1.2.3", "node7.example"])
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == [
        "10.1.2.3",
        "127.0.0.1",
    ]
    assert names.get_values_for_type(x509.DNSName) == ["node7.example", "localhost"]


def test_tls_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="tls.enabled needs tls.ca_file"):
        load_config(env={}, overrides={"tls": {"enabled": True}})
    no_key = TlsConfig(enabled=True, ca_file="/nonexistent/ca.pem", cert_file="/nonexistent/c")
    with pytest.raises(ConfigError, match="tls.key_file"):
        rpc.serve(lambda _: None, "127.0.0.1", 0, services=[], tls=no_key)
    with pytest.raises(ConfigError, match="tls.ca_file /nonexistent/ca.pem: No such file"):
        rpc.channel("127.0.0.1:1", no_key)


def test_service_with_unreadable_certificate_says_so_in_one_line(tmp_path: Path) -> None:
    result = _fs3(
        "mgmtd",
        "--port",
        "0",
        "--state",
        str(tmp_path / "state"),
        "--targets",
        "1",
        "--replicas",
        "1",
        "--tls-cert",
        str(tmp_path / "missing.pem"),
        "--tls-key",
        str(tmp_path / "missing.key"),
        FS3_TLS__ENABLED="true",
        FS3_TLS__CA_FILE=str(tmp_path / "ca.pem"),
        FS3_SECURITY__CAPABILITIES="false",  # no cluster secret needed: this is about TLS
    )
    # Its log goes to stderr too; the error is the one line that ends it.
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: fs3 mgmtd: tls.key_file ") and "No such file" in last
