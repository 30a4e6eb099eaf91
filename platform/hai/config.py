"""Platform configuration: small grouped pydantic models, every field defaulted, one loader.

:func:`load_config` reads a YAML file, then ``HAI_<GROUP>__<FIELD>`` environment variables,
then explicit overrides, in that order, with fs3.settings' one coercion rule. Tests shrink
the timings (heartbeats, grace periods, leases) through the same function.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from fs3.settings import Environment, Settings, layered, read_yaml
from hai.accounts import AGENT, ROOT_NAMES, SUBMITTER
from hai.errors import ConfigError

_GROUP = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class PolicyConfig(BaseModel):
    """Who runs where: the knobs of :mod:`hai.policy` (the simulator sets them too)."""

    model_config = _GROUP

    order: Literal["priority", "fifo"] = "priority"
    """``priority``: highest level first, FIFO within a level; ``fifo``: submission order."""
    preemption: bool = True
    """Suspend lower-priority jobs when higher-priority work cannot fit."""
    time_slice_s: float | None = None
    """When set, a job waiting this long may suspend a same-priority job of another user that
    has run at least this long (HAI's time-sharing; Kueue #8522 asks for 30 min)."""
    min_run_s: float = Field(60.0, ge=0)
    """A job that was suspended before is not suspended again before it ran this long, so
    a chain cannot thrash between suspend and resume."""
    backfill: bool = True
    """Let lower jobs use nodes that the head of the queue cannot use yet."""
    reserve_after_s: float = Field(1800.0, ge=0)
    """A job waiting longer than this reserves free nodes of its group (no backfill past it),
    so a big gang is not starved by a stream of small jobs."""
    demote_after_s: float | None = Field(1800.0, ge=0)
    """A run started at ABOVE_NORMAL (20) counts as NORMAL (10) once it has run this long, so
    it can be preempted by the next ABOVE_NORMAL job (HAI's rule: the level is for short
    runs, not for holding nodes); None keeps every run at its level."""
    default_quotas: dict[int, int | None] = Field(
        default_factory=lambda: {50: 0, 40: 0, 30: 0, 20: None, 10: None}
    )
    """Nodes per (user, group) at each level when no quota row exists; None is unlimited.
    As in HAI, the top levels need a quota an admin grants, so AUTO lands on 20 by default."""


class SchedulerConfig(BaseModel):
    """The mechanism's timings."""

    model_config = _GROUP

    pass_interval_s: float = 1.0
    """A scheduling pass runs this often (HAI's beater ticks each second)."""
    node_lease_s: float = 15.0
    """A node whose agent has not been heard from this long is dead; its jobs are requeued."""
    kill_grace_s: float = 5.0
    """Between SIGTERM and SIGKILL when a run is stopped."""


class ServerConfig(BaseModel):
    model_config = _GROUP

    host: str = "127.0.0.1"
    port: int = 7700
    metrics_port: int = 0
    """Prometheus endpoint (on ``host``); 0 turns it off."""
    database_url: str = ""
    """SQLAlchemy URL; empty means SQLite in the state folder."""
    state_dir: str = "~/.hai"
    """The platform's state folder; ``HAI_STATE_DIR`` is an older name of its variable."""
    rank_log_bytes: int = Field(1 << 30, gt=0)
    """The most the server keeps of one rank's log (agents ship them): what a job prints
    beyond it stays on its node only, so no job fills the server's disk."""


class AgentConfig(BaseModel):
    model_config = _GROUP

    heartbeat_s: float = 2.0
    log_ship_interval_s: float = Field(1.0, gt=0)
    """Rank logs reach the server at least this often (``hai logs -f`` lags by as much)."""
    rpc_timeout_s: float = 10.0
    """Every call to the server gives up after this long."""
    kill_grace_s: float = 5.0
    """Between SIGTERM and SIGKILL for a run the scheduler no longer lists."""
    cgroups: bool = True
    """Give each local rank a cgroup v2 of its own where the machine allows it, so that
    processes leaving the rank's process group are stopped with it (hai.executor.cgroups)."""
    health_interval_s: float = 300.0
    min_free_disk_bytes: int = 1 << 30
    metrics_port: int = 0
    """Prometheus endpoint of the node; 0 turns it off."""
    metrics_host: str = "127.0.0.1"
    """Address the endpoint listens on: 0.0.0.0 lets a Prometheus on another host scrape."""
    run_as: str = Field("submitter", min_length=1)
    """Which account local ranks run as when the agent is root (hai.accounts): ``submitter``
    (the local account named like the job's user, unless it is root, else
    ``run_as_fallback``), an account name or numeric uid for every job, or ``agent`` (the
    agent's own account: single-user machines only). An agent that is not root runs ranks
    as itself."""
    run_as_fallback: str = Field("nobody", min_length=1)
    """The account of jobs whose user has no local account (``run_as: submitter``)."""
    run_as_min_uid: int = Field(1000, ge=1)
    """The lowest uid a submitter's own account may have (``run_as: submitter``): a job of
    a user named like a system account (daemon, postgres, ...) takes the fallback."""
    run_dir: str = "/run/hai"
    """Where a root agent that runs ranks as other accounts makes their control folders
    (0711, one folder per state folder): the state folder is 0700, out of ranks' reach."""

    @field_validator("run_as", "run_as_fallback")
    @classmethod
    def _never_root(cls, value: str, info: ValidationInfo) -> str:
        if value in ROOT_NAMES:
            raise ValueError(f"{value!r} is root: ranks never run as root")
        if info.field_name == "run_as_fallback" and value in (SUBMITTER, AGENT):
            raise ValueError(f"{value!r} is a run_as mode: give an account name or uid")
        return value


class K8sConfig(BaseModel):
    """The Kubernetes executor and the HaiJob operator (docs/kubernetes.md)."""

    model_config = _GROUP

    api_url: str = ""
    """Kubernetes API server URL; empty means the pod's service account, else the kubeconfig
    (KUBECONFIG or ~/.kube/config)."""
    token_file: str = ""
    """With ``api_url``: a file holding the bearer token to present (read again on each
    request, so a rotated token is picked up); empty sends none."""
    ca_file: str = ""
    """With ``api_url``: the CA certificate (PEM) that the API server's certificate must chain
    to; empty trusts the system's CAs."""
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
    start_timeout_s: float = Field(300.0, gt=0)
    """A pod whose container cannot start this long (image pull, bad config) fails its rank
    with exit code 127; the restart policy then decides."""
    stuck_after_s: float = Field(120.0, ge=0)
    """A job pod still terminating this long past its grace period has lost its agent (a
    dead node): the operator releases it by dropping the executor's finalizer."""
    poll_interval_s: float = Field(5.0, gt=0)
    """How often the operator refreshes each HaiJob's status from the scheduler."""
    group_label: str = "hai.fireflyer.io/group"
    """Node label whose value is the node's pool (the job spec's ``group``)."""


class HaiConfig(Settings):
    """The whole platform configuration; build it with :func:`load_config`."""

    model_config = SettingsConfigDict(
        env_prefix="HAI_", env_nested_delimiter="__", extra="forbid", use_attribute_docstrings=True
    )

    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    k8s: K8sConfig = Field(default_factory=K8sConfig)


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> HaiConfig:
    """Builds the configuration: defaults, then the YAML file, the environment, overrides.

    Args:
        path: YAML file of ``group: {field: value}`` mappings.
        env: environment to read (``os.environ`` by default): ``HAI_<GROUP>__<FIELD>``,
            and ``HAI_STATE_DIR`` for ``server.state_dir``.
        overrides: ``{group: {field: value}}``, as the CLI's options give them.

    Raises:
        ConfigError: an unreadable file, an unknown group or field, or a value of the wrong
            type or out of range; one line per problem naming the field and its source.
    """
    environ = os.environ if env is None else env
    layers = [
        (f"file {path}", read_yaml(path, "hai config", ConfigError) if path is not None else {}),
        (
            "environment HAI_<GROUP>__<FIELD>",
            Environment(HaiConfig, environ, {"HAI_STATE_DIR": "HAI_SERVER__STATE_DIR"})(),
        ),
        ("overrides", overrides or {}),
    ]
    return layered(HaiConfig, layers, "hai config", ConfigError)
