"""``hai up`` / ``hai down``: a whole local cluster (server + N agents) as background processes.

Each process runs in its own session so it outlives the command that started it; pids go
to ``cluster.json`` in the state folder and logs to ``logs/``. ``down`` sends SIGTERM, waits,
then SIGKILLs what is left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from hai.credentials import prepare_agents
from hai.errors import HaiError, HaiTimeoutError, Unavailable
from hai.files import STATE_ENTRIES, open_private, private_dir, replace_text
from hai.rpc import ApiClient
from hai.server import TOKEN_FILE

CLUSTER_FILE = "cluster.json"
PROMETHEUS_TARGETS = "prometheus-targets.json"
"""Where `hai up` lists its metrics endpoints, in Prometheus' file_sd format."""


@dataclass
class ClusterInfo:
    address: str
    state_dir: str
    pids: dict[str, int] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    """Process name -> its Prometheus port; empty when metrics are off."""


def _spawn(args: list[str], log: Path, env: dict[str, str]) -> int:
    private_dir(log.parent)
    with open_private(log) as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hai", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    return proc.pid


def _wait_for(what: str, check, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except (Unavailable, HaiTimeoutError, FileNotFoundError):
            pass
        if time.monotonic() > deadline:
            raise HaiTimeoutError(f"{what} within {timeout_s:g}s; see the logs in the state folder")
        time.sleep(0.2)


def up(
    state_dir: Path,
    nodes: int,
    gpus_per_node: int,
    port: int,
    timeout_s: float = 60.0,
    env: dict[str, str] | None = None,
    metrics_port: int = 0,
) -> ClusterInfo:
    """Starts the server and ``nodes`` agents; returns once every node is ready.

    With ``metrics_port`` the server serves Prometheus metrics there and agent ``i`` on
    the port ``i + 1`` above it (every process on this machine needs its own); the
    endpoints are listed in the state folder for Prometheus' file-based discovery.

    Raises:
        HaiError: a cluster already runs in ``state_dir``.
        ConfigError: ``state_dir`` is not a folder this account can keep private.
        HaiTimeoutError: the server or an agent did not come up in time.
    """
    state_dir = private_dir(state_dir.expanduser().resolve(), STATE_ENTRIES)
    if (state_dir / CLUSTER_FILE).exists():
        raise HaiError(f"a cluster already runs in {state_dir}; `hai down {state_dir}` first")
    env = {**os.environ, **(env or {})}
    address = f"127.0.0.1:{port}"
    info = ClusterInfo(address, str(state_dir))
    if metrics_port:
        info.metrics_ports = {"server": metrics_port}
        info.metrics_ports.update({f"node-{i}": metrics_port + 1 + i for i in range(nodes)})
        _write_prometheus_targets(state_dir, info.metrics_ports)
    info.pids["server"] = _start_server(state_dir, port, env, info.metrics_ports.get("server"))
    replace_text(state_dir / CLUSTER_FILE, json.dumps(info.__dict__))
    client = ApiClient(address, None, timeout_s=2.0)
    try:
        _wait_for("the server did not answer", lambda: _token(state_dir, client), timeout_s)
        names = [f"node-{i}" for i in range(nodes)]
        agent_env = prepare_agents(client, state_dir, names, env)  # their credentials, no token
        for i in range(nodes):
            name = f"node-{i}"
            info.pids[name] = _spawn(
                [
                    "agent",
                    "--name",
                    name,
                    "--state-dir",
                    str(state_dir),
                    "--server",
                    address,
                    "--gpus",
                    str(gpus_per_node),
                    *_metrics_args(info.metrics_ports.get(name)),
                ],
                state_dir / "logs" / f"{name}.log",
                agent_env,
            )
        replace_text(state_dir / CLUSTER_FILE, json.dumps(info.__dict__))
        _wait_for(
            f"{nodes} nodes did not register",
            lambda: sum(n["state"] == "ready" for n in client.call("Nodes")) >= nodes,
            timeout_s,
        )
    finally:
        client.close()
    return info


def _metrics_args(port: int | None) -> list[str]:
    return ["--metrics-port", str(port)] if port else []


def _write_prometheus_targets(state_dir: Path, ports: dict[str, int]) -> None:
    groups = [
        {"targets": [f"127.0.0.1:{port}"], "labels": {"job": "hai", "instance_name": name}}
        for name, port in ports.items()
    ]
    replace_text(state_dir / PROMETHEUS_TARGETS, json.dumps(groups, indent=1))


def _start_server(
    state_dir: Path, port: int, env: dict[str, str], metrics_port: int | None = None
) -> int:
    args = ["server", "--state-dir", str(state_dir), "--port", str(port)]
    return _spawn([*args, *_metrics_args(metrics_port)], state_dir / "logs" / "server.log", env)


def restart_server(state_dir: Path, env: dict[str, str] | None = None) -> int:
    """Starts the cluster's server again (after it died) on its port; returns the new pid."""
    path = state_dir.expanduser().resolve() / CLUSTER_FILE
    info = ClusterInfo(**json.loads(path.read_text()))
    port = int(info.address.rsplit(":", 1)[1])
    info.pids["server"] = _start_server(
        Path(info.state_dir), port, {**os.environ, **(env or {})}, info.metrics_ports.get("server")
    )
    replace_text(path, json.dumps(info.__dict__))
    return info.pids["server"]


def _token(state_dir: Path, client: ApiClient) -> bool:
    client.token = (state_dir / TOKEN_FILE).read_text().strip()
    client.call("WhoAmI")
    return True


def down(state_dir: Path, timeout_s: float = 20.0) -> list[str]:
    """Stops the cluster in ``state_dir``; returns the names of the processes stopped."""
    path = state_dir.expanduser().resolve() / CLUSTER_FILE
    if not path.exists():
        return []
    pids: dict[str, int] = json.loads(path.read_text())["pids"]
    # Agents first, so they are not left heartbeating at a server that is gone.
    order = sorted(pids, key=lambda name: name == "server")
    for name in order:
        _signal(pids[name], signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for name in order:
        while _alive(pids[name]) and time.monotonic() < deadline:
            time.sleep(0.1)
        _signal(pids[name], signal.SIGKILL)
    path.unlink()
    (state_dir.expanduser().resolve() / PROMETHEUS_TARGETS).unlink(missing_ok=True)
    return order


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
