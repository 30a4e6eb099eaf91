"""The platform's long-running processes as ``hai server`` and ``hai agent`` run them.

Each function builds its process from the configuration, runs it in the foreground until
SIGTERM or SIGINT, and stops it, on failure too. The commands only parse options and call
one of them (tests call these directly, and check the commands only for forwarding).
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from hai.config import HaiConfig


def _stop_on_signals() -> threading.Event:
    """An event that SIGTERM (Kubernetes, ``hai down``) and SIGINT (Ctrl-C) set."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def run_server(config: HaiConfig, state_dir: Path) -> None:
    """Runs the scheduler and API server with its state in ``state_dir`` until a signal.

    With ``HAI_ADMIN_TOKEN`` set (the Helm chart's token Secret, docs/kubernetes.md), that
    token is made an admin's before the server starts.
    """
    from hai.server import Server

    admin_token = os.environ.get("HAI_ADMIN_TOKEN")
    if admin_token:
        from hai.files import STATE_ENTRIES, private_dir
        from hai.k8s.kube import bootstrap_admin
        from hai.store import sqlite_url

        private_dir(state_dir, STATE_ENTRIES)
        bootstrap_admin(config.server.database_url or sqlite_url(state_dir), admin_token)
    server = Server(config, state_dir)
    stop = _stop_on_signals()
    try:
        server.start()
        stop.wait()
    finally:
        server.stop()


@dataclass(frozen=True)
class AgentOptions:
    """What ``hai agent`` is told on its command line; the rest comes from the config."""

    name: str
    """The node's name: the Kubernetes node's with ``kubernetes``."""
    server: str
    """``host:port`` of the hai server."""
    state_dir: Path
    """Where ranks' logs and control folders live, and the node's credential
    (:func:`hai.credentials.agent_client`)."""
    gpus: int | None = None
    """GPUs to report; None: the node's (Kubernetes), those torch finds, or 0 virtual ones."""
    group: str | None = None
    """Node pool; None: the Kubernetes node's label, else ``default``."""
    kubernetes: bool = False
    """Run ranks as pods on Kubernetes node ``name`` (the agent DaemonSet)."""
    address: str | None = None
    """This node's address as ranks on other nodes reach it (node rank 0's is their
    ``MASTER_ADDR``); None: the source address of its route to the server."""


def run_agent(config: HaiConfig, options: AgentOptions) -> None:
    """Runs a node agent until a signal: registers with the server, heartbeats, starts and
    stops ranks (local processes, or pods with ``options.kubernetes``), and serves its
    metrics when ``config.agent.metrics_port`` is set. It calls with its node's credential,
    enrolling first when it has only an admin's token (:func:`hai.credentials.agent_client`).

    Raises:
        ConfigError: it has neither a node credential nor an admin's token to enrol with.
    """
    from hai.agent import Agent, route_address
    from hai.credentials import agent_client
    from hai.executor import Executor, LocalExecutor
    from hai.files import STATE_ENTRIES, private_dir

    private_dir(options.state_dir, STATE_ENTRIES)  # ranks' logs and control files live there
    client = agent_client(
        options.server, options.name, options.state_dir, config.agent.rpc_timeout_s
    )
    executor: Executor
    gpus, group = options.gpus, options.group
    if options.kubernetes:
        from hai.k8s.kube import kubernetes_executor

        # GPUs belong to the device plugin, not to this pod: nothing to probe here.
        executor, found = kubernetes_executor(config.k8s, options.name)
        gpus, group, virtual = found.gpus if gpus is None else gpus, group or found.group, True
    else:
        import torch

        executor = LocalExecutor(use_cgroups=config.agent.cgroups)
        virtual = not torch.cuda.is_available()
        gpus = (gpus or 0) if virtual else torch.cuda.device_count()
    node = Agent(
        options.name,
        client,
        executor,
        options.state_dir,
        config.agent,
        group or "default",
        gpus,
        virtual_gpus=virtual,
    )
    if options.address:
        node.info.address = options.address
    elif not options.kubernetes:  # pods find their master by its pod's name instead
        node.info.address = route_address(options.server)
    stop = _stop_on_signals()
    if config.agent.metrics_port:
        node.metrics.serve(config.agent.metrics_port, config.agent.metrics_host)
    node.run(stop)
