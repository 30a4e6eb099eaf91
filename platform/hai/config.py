"""Platform configuration: small grouped dataclasses, every field defaulted, loaded in one place.

:func:`load_config` reads a YAML file, then ``HAI_<GROUP>__<FIELD>`` environment variables,
then explicit overrides, in that order. Tests shrink the timings (heartbeats, grace
periods, leases) through the same function.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hai.errors import ConfigError


@dataclass
class PolicyConfig:
    """Who runs where: the knobs of :mod:`hai.policy` (the simulator sets them too)."""

    order: str = "priority"
    """``priority``: highest level first, FIFO within a level; ``fifo``: submission order."""
    preemption: bool = True
    """Suspend lower-priority jobs when higher-priority work cannot fit."""
    time_slice_s: float | None = None
    """When set, a job waiting this long may suspend a same-priority job of another user that
    has run at least this long (HAI's time-sharing; Kueue #8522 asks for 30 min)."""
    min_run_s: float = 60.0
    """A job that was suspended before is not suspended again before it ran this long, so
    a chain cannot thrash between suspend and resume."""
    backfill: bool = True
    """Let lower jobs use nodes that the head of the queue cannot use yet."""
    reserve_after_s: float = 1800.0
    """A job waiting longer than this reserves free nodes of its group (no backfill past it),
    so a big gang is not starved by a stream of small jobs."""
    demote_after_s: float | None = 1800.0
    """A run started at ABOVE_NORMAL (20) counts as NORMAL (10) once it has run this long, so
    it can be preempted by the next ABOVE_NORMAL job (HAI's rule: the level is for short
    runs, not for holding nodes); None keeps every run at its level."""
    default_quotas: dict[int, int | None] = field(
        default_factory=lambda: {50: 0, 40: 0, 30: 0, 20: None, 10: None}
    )
    """Nodes per (user, group) at each level when no quota row exists; None is unlimited.
    As in HAI, the top levels need a quota an admin grants, so AUTO lands on 20 by default."""

    def __post_init__(self) -> None:
        if self.order not in ("priority", "fifo"):
            raise ConfigError(f"policy.order must be 'priority' or 'fifo', got {self.order!r}")
        if self.demote_after_s is not None and self.demote_after_s < 0:
            raise ConfigError(f"policy.demote_after_s must be >= 0, got {self.demote_after_s}")
        if self.min_run_s < 0 or self.reserve_after_s < 0:
            raise ConfigError(
                f"policy.min_run_s ({self.min_run_s}) and policy.reserve_after_s "
                f"({self.reserve_after_s}) must be >= 0"
            )
        self.default_quotas = {int(k): v for k, v in self.default_quotas.items()}


@dataclass
class SchedulerConfig:
    """The mechanism's timings."""

    pass_interval_s: float = 1.0
    """A scheduling pass runs this often (HAI's beater ticks each second)."""
    node_lease_s: float = 15.0
    """A node whose agent has not been heard from this long is dead; its jobs are requeued."""
    kill_grace_s: float = 5.0
    """Between SIGTERM and SIGKILL when a run is stopped."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 7700
    metrics_port: int = 0
    """Prometheus endpoint (on ``host``); 0 turns it off."""
    database_url: str = ""
    """SQLAlchemy URL; empty means SQLite in the state folder."""
    state_dir: str = "~/.hai"


@dataclass
class AgentConfig:
    heartbeat_s: float = 2.0
    rpc_timeout_s: float = 10.0
    """Every call to the server gives up after this long."""
    kill_grace_s: float = 5.0
    """Between SIGTERM and SIGKILL for a run the scheduler no longer lists."""
    health_interval_s: float = 300.0
    min_free_disk_bytes: int = 1 << 30
    metrics_port: int = 0
    """Prometheus endpoint of the node; 0 turns it off."""
    metrics_host: str = "127.0.0.1"
    """Address the endpoint listens on: 0.0.0.0 lets a Prometheus on another host scrape."""


@dataclass
class K8sConfig:
    """The Kubernetes executor and the HaiJob operator (docs/kubernetes.md)."""

    api_url: str = ""
    """Kubernetes API server URL; empty means in-cluster credentials, else ~/.kube/config."""
    namespace: str = "hai-jobs"
    """Where the pods of jobs submitted with ``hai submit`` run (a HaiJob's run in its own)."""
    image: str = "fireflyer:latest"
    """Image of jobs whose spec names none."""
    python: str = "python3"
    """Interpreter in the job image that runs the rank launcher (hai/k8s/launch.py)."""
    host_network: bool = False
    """Run job pods on the node's network (RDMA and InfiniBand setups usually want this)."""
    service_account: str = ""
    """Service account of job pods; empty means the namespace's default."""
    start_timeout_s: float = 300.0
    """A pod whose container cannot start this long (image pull, bad config) fails its rank
    with exit code 127; the restart policy then decides."""
    stuck_after_s: float = 120.0
    """A job pod still terminating this long past its grace period has lost its agent (a
    dead node): the operator releases it by dropping the executor's finalizer."""
    poll_interval_s: float = 5.0
    """How often the operator refreshes each HaiJob's status from the scheduler."""
    group_label: str = "hai.fireflyer.io/group"
    """Node label whose value is the node's pool (the job spec's ``group``)."""

    def __post_init__(self) -> None:
        if self.start_timeout_s <= 0 or self.poll_interval_s <= 0 or self.stuck_after_s < 0:
            raise ConfigError(
                f"k8s.start_timeout_s ({self.start_timeout_s}) and k8s.poll_interval_s "
                f"({self.poll_interval_s}) must be > 0, k8s.stuck_after_s "
                f"({self.stuck_after_s}) >= 0"
            )


@dataclass
class HaiConfig:
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    k8s: K8sConfig = field(default_factory=K8sConfig)


def _coerce(current: Any, value: Any, where: str) -> Any:
    if isinstance(value, str) and not isinstance(current, str):
        value = yaml.safe_load(value)
    if isinstance(current, bool) and not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return value


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> HaiConfig:
    """Builds the configuration: defaults, then the YAML file, the environment, overrides.

    Raises:
        ConfigError: an unknown group or field, or a value out of range.
    """
    layers: list[dict[str, dict[str, Any]]] = []
    if path is not None:
        layers.append(yaml.safe_load(Path(path).read_text()) or {})
    env = os.environ if env is None else env
    from_env: dict[str, dict[str, Any]] = {}
    for key, value in env.items():
        if key.startswith("HAI_") and "__" in key:
            group, name = key[4:].lower().split("__", 1)
            from_env.setdefault(group, {})[name] = value
    layers.append(from_env)
    layers.append({k: dict(v) for k, v in (overrides or {}).items()})
    config = HaiConfig()
    groups = {f.name for f in dataclasses.fields(HaiConfig)}
    for layer in layers:
        for group, values in layer.items():
            if group not in groups:
                raise ConfigError(f"unknown config group {group!r} (known: {sorted(groups)})")
            section = getattr(config, group)
            known = {f.name for f in dataclasses.fields(section)}
            changes = {}
            for name, value in values.items():
                if name not in known:
                    raise ConfigError(
                        f"unknown config field {group}.{name} (known: {sorted(known)})"
                    )
                changes[name] = _coerce(getattr(section, name), value, f"{group}.{name}")
            setattr(config, group, dataclasses.replace(section, **changes))
    return config
