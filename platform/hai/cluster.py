"""``hai up`` / ``hai down``: a whole local cluster (server + N agents) as background processes.

Each process runs in its own session so it outlives the command that started it; pids go
to ``cluster.json`` in the state folder and logs to ``logs/``. ``down`` finds the server and
agents of the state folder among the running processes (also ones started again by hand),
sends SIGTERM, waits, then SIGKILLs what is left.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from fs3.processes import Placement, Wrap, gone, label, option, path_of, program_args, stop
from fs3.types import host_port
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


class NotStopped(HaiError):
    """``down`` stopped what it could (``stopped``); ``refused`` says, one line each, what not."""

    def __init__(self, stopped: list[str], refused: list[str]) -> None:
        super().__init__("; ".join(refused))
        self.stopped = stopped
        self.refused = refused


@dataclass
class _Started:
    """A process ``up`` started, and where this start's output begins in its (appended) log."""

    proc: subprocess.Popen[bytes]
    log: Path
    offset: int

    def cause(self) -> str:
        """Why it stopped, from what it logged: its last ``Error:`` line, else its last line."""
        try:
            with self.log.open("rb") as f:
                f.seek(self.offset)
                lines = [line.strip() for line in f.read().decode(errors="replace").splitlines()]
        except OSError:
            return "no log"
        errors = [line.removeprefix("Error: ") for line in lines if line.startswith("Error: ")]
        said = [line for line in lines if line]
        return errors[-1] if errors else said[-1] if said else "no output"


def _spawn(args: list[str], log: Path, env: dict[str, str], wrap: Wrap | None = None) -> _Started:
    private_dir(log.parent)
    argv = [sys.executable, "-m", "hai", *args]
    with open_private(log) as out:
        offset = os.fstat(out.fileno()).st_size
        proc = subprocess.Popen(
            wrap(argv) if wrap else argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
    return _Started(proc, log, offset)


def _wait_for(
    what: str,
    check: Callable[[], object],
    timeout_s: float,
    started: dict[str, _Started],
) -> None:
    """Polls ``check`` until it holds; fails at once when a process ``up`` started exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        for name, it in started.items():
            if (code := it.proc.poll()) is not None:
                why = it.cause()
                raise HaiError(f"{name} exited at start (code {code}): {why} (log: {it.log})")
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
    placement: Placement | None = None,
) -> ClusterInfo:
    """Starts the server and ``nodes`` agents; returns once every node is ready.

    With ``placement`` each process (``server``, ``node-I``) runs on its own host, on the
    address it gives; each agent then keeps its own state folder, ``STATE_DIR/agents/NAME``
    (sharing none with the server, as on separate machines), and announces that address.

    With ``metrics_port`` the server serves Prometheus metrics there and agent ``i`` on
    the port ``i + 1`` above it (every process on this machine needs its own); the
    endpoints are listed in the state folder for Prometheus' file-based discovery.

    Raises:
        HaiError: a cluster already runs in ``state_dir``, or the server or an agent
            exited at start (the cause read from its log).
        ConfigError: ``state_dir`` is not a folder this account can keep private.
        HaiTimeoutError: the server or an agent did not come up in time.

    A failed start stops every process it started and leaves no ``cluster.json``.
    """
    state_dir = private_dir(state_dir.expanduser().resolve(), STATE_ENTRIES)
    if found := running(state_dir):
        listed = ", ".join(label(name, proc) for name, proc in found)
        raise HaiError(
            f"a cluster already runs in {state_dir} ({listed}); `hai down {state_dir}` stops it"
        )
    env = {**os.environ, **(env or {})}

    def host(name: str) -> tuple[str, Wrap | None]:
        return placement(name) if placement else ("127.0.0.1", None)

    server_host, server_wrap = host("server")
    address = host_port(server_host, port)
    env["HAI_SERVER__HOST"] = server_host
    info = ClusterInfo(address, str(state_dir))
    if metrics_port:
        info.metrics_ports = {"server": metrics_port}
        info.metrics_ports.update({f"node-{i}": metrics_port + 1 + i for i in range(nodes)})
        _write_prometheus_targets(state_dir, info.metrics_ports, lambda name: host(name)[0])
    started: dict[str, _Started] = {}
    logs = state_dir / "logs"
    client = ApiClient(address, None, timeout_s=2.0)
    try:
        started["server"] = _start_server(
            state_dir, port, env, info.metrics_ports.get("server"), server_wrap
        )
        info.pids["server"] = started["server"].proc.pid
        replace_text(state_dir / CLUSTER_FILE, json.dumps(info.__dict__))
        answers = functools.partial(_token, state_dir, client)
        _wait_for("the server did not answer", answers, timeout_s, started)
        names = [f"node-{i}" for i in range(nodes)]
        since = time.time()  # the server's clock too: it runs on this machine
        for name in names:
            agent_host, agent_wrap = host(name)
            agent_dir = private_dir(state_dir / "agents" / name) if placement else state_dir
            agent_env = prepare_agents(client, agent_dir, [name], env)  # no token, its own
            if placement:  # its metrics where a Prometheus elsewhere reaches them
                agent_env["HAI_AGENT__METRICS_HOST"] = agent_host
            where = ["--address", agent_host] if placement else []
            started[name] = _spawn(
                [
                    "agent",
                    "--name",
                    name,
                    "--state-dir",
                    str(agent_dir),
                    "--server",
                    address,
                    "--gpus",
                    str(gpus_per_node),
                    *where,
                    *_metrics_args(info.metrics_ports.get(name)),
                ],
                logs / f"{name}.log",
                agent_env,
                agent_wrap,
            )
            info.pids[name] = started[name].proc.pid
        replace_text(state_dir / CLUSTER_FILE, json.dumps(info.__dict__))
        _wait_for(
            f"{nodes} nodes did not register",
            lambda: _ready(client, names, since),
            timeout_s,
            started,
        )
    except BaseException:
        # Nothing of a failed start may outlive it, nor a cluster.json block the next `up`.
        alive = {name: it.proc.pid for name, it in started.items() if it.proc.poll() is None}
        stop([(name, psutil.Process(pid)) for name, pid in alive.items()], 10.0)
        with contextlib.suppress(HaiError):  # the error that stopped the start says more
            _forget(state_dir)
        raise
    finally:
        client.close()
    return info


def _ready(client: ApiClient, names: list[str], since: float) -> bool:
    """Every node of ``names`` ready and heard from since ``since``: a node row left ready
    by an earlier cluster in this folder is not its new agent."""
    nodes = client.call("Nodes")
    fresh = {n["name"] for n in nodes if n["state"] == "ready" and n["heartbeat_at"] >= since}
    return fresh >= set(names)


def _metrics_args(port: int | None) -> list[str]:
    return ["--metrics-port", str(port)] if port else []


def _write_prometheus_targets(
    state_dir: Path, ports: dict[str, int], host_of: Callable[[str], str]
) -> None:
    groups = [
        {
            "targets": [host_port(host_of(name), port)],
            "labels": {"job": "hai", "instance_name": name},
        }
        for name, port in ports.items()
    ]
    replace_text(state_dir / PROMETHEUS_TARGETS, json.dumps(groups, indent=1))


def _start_server(
    state_dir: Path,
    port: int,
    env: dict[str, str],
    metrics_port: int | None = None,
    wrap: Wrap | None = None,
) -> _Started:
    args = ["server", "--state-dir", str(state_dir), "--port", str(port)]
    log = state_dir / "logs" / "server.log"
    return _spawn([*args, *_metrics_args(metrics_port)], log, env, wrap)


def restart_server(state_dir: Path, env: dict[str, str] | None = None) -> int:
    """Starts the cluster's server again (after it died) on its port; returns the new pid."""
    path = state_dir.expanduser().resolve() / CLUSTER_FILE
    info = ClusterInfo(**json.loads(path.read_text()))
    port = int(info.address.rsplit(":", 1)[1])
    info.pids["server"] = _start_server(
        Path(info.state_dir), port, {**os.environ, **(env or {})}, info.metrics_ports.get("server")
    ).proc.pid
    replace_text(path, json.dumps(info.__dict__))
    return info.pids["server"]


def _token(state_dir: Path, client: ApiClient) -> bool:
    client.token = (state_dir / TOKEN_FILE).read_text().strip()
    client.call("WhoAmI")
    return True


def down(state_dir: Path, timeout_s: float = 20.0) -> list[str]:
    """Stops the server and agents running on ``state_dir`` (found by ``running``, so also
    ones started again by hand) and returns them, as ``name (pid N)``.

    Raises:
        NotStopped: some could not be stopped (another account's, or one that outlived
            SIGKILL); the rest were, and ``cluster.json`` stays.
    """
    state_dir = state_dir.expanduser().resolve()
    # Agents first, so they are not left heartbeating at a server that is gone.
    found = sorted(running(state_dir), key=lambda item: item[0] == "server")
    stopped, refused = stop(found, timeout_s)
    if refused:
        raise NotStopped(stopped, refused)
    _forget(state_dir)
    return stopped


def running(state_dir: Path) -> list[tuple[str, psutil.Process]]:
    """The server and agents of ``state_dir`` now running, whoever started them and how.

    A process counts when its command line is ``hai server|agent ...`` (also ``python -m
    hai ...``) and its ``--state-dir`` (or, without one, ``HAI_SERVER__STATE_DIR`` or
    ``HAI_STATE_DIR`` in its environment) is that folder or its ``agents/NAME`` (``up``
    with a placement), a relative path taken from its working folder. Each comes with its
    name: ``server`` or the agent's ``--name``.
    """
    state_dir = state_dir.expanduser().resolve()
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        args = program_args(proc.info["cmdline"] or [], "hai")
        if args[:1] not in (["server"], ["agent"]):
            continue
        name = option(args, "--name") or args[0]
        try:
            if _state_dir_of(proc, args) in (state_dir, state_dir / "agents" / name):
                if not gone(proc):
                    found.append((name, proc))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # gone, or where it runs is hidden from this account
    return found


def _state_dir_of(proc: psutil.Process, args: list[str]) -> Path:
    value = option(args, "--state-dir")
    if value is None:  # as the component's own config reads it
        env = proc.environ()
        value = env.get("HAI_SERVER__STATE_DIR") or env.get("HAI_STATE_DIR") or "~/.hai"
    return path_of(proc, value)


def _forget(state_dir: Path) -> None:
    """Removes the files of a cluster no longer running."""
    for path in (state_dir / CLUSTER_FILE, state_dir / PROMETHEUS_TARGETS):
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            pass  # nothing to forget (no such folder, or a file given as one)
        except OSError as err:
            raise HaiError(f"cannot remove {path}: {err.strerror}") from None
