"""What agents and the scheduler tell each other on each heartbeat, as dataclasses.

The agent reports every run it has; the scheduler answers with every run the node should
have and what it should be doing. The agent reconciles the two, so a lost message, a
scheduler restart or an agent restart converges on the next heartbeat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DESIRED_RUN = "run"
DESIRED_SUSPEND = "suspend"
DESIRED_STOP = "stop"


def run_log_dir(job_id: int, attempt: int) -> str:
    """Where a run's rank logs go, relative to a state folder: the same place on each agent
    (whose ranks write there) and on the server (which serves ``hai logs`` from it, and
    where agents ship them: :mod:`hai.logship`)."""
    return f"logs/job-{job_id}/run-{attempt}"


def rank_log(state_dir: Path, log_dir: str, rank: int) -> Path:
    """Rank ``rank``'s log file in the run log folder ``log_dir`` under ``state_dir``."""
    return state_dir / log_dir / f"rank-{rank}.log"


@dataclass
class NodeInfo:
    name: str
    agent_id: str
    group: str = "default"
    gpus: int = 0
    cpus: int = 0
    memory_bytes: int = 0
    address: str = "127.0.0.1"


@dataclass
class RunReport:
    run_id: int
    exit_code: int | None = None
    """Worst exit code of this node's ranks once all have exited; None while any runs."""
    acked: bool = False
    """The job called ``hai.client.go_suspend()``."""
    reason: str = ""
    """Why the run failed on this node when the agent knows better than the exit code
    (e.g. its ranks could not be started: the log folder could not be made)."""


@dataclass
class Heartbeat:
    node: str
    agent_id: str
    runs: list[RunReport] = field(default_factory=list)
    health_failures: list[str] = field(default_factory=list)
    """One line per failed health check; any makes the node unhealthy."""


@dataclass
class Assignment:
    """One run this node takes part in, with what the agent needs to launch its ranks."""

    run_id: int
    job_id: int
    attempt: int
    desired: str
    argv: list[str]
    environment: dict[str, str]
    node_rank: int
    nodes: int
    ranks_per_node: int
    master_addr: str
    master_port: int
    kill_grace_s: float
    run_token: str
    """What the run's ranks show the server to read and write their chain's state."""
    image: str | None
    """The job's container image (None: the executor's default); only pods use it."""
    gpus_per_node: int
    """GPUs each node's share of the run asks for (0: none; one CPU rank runs)."""
    log_dir: str
    """The run's log folder, relative to the agent's state folder (:func:`rank_log`)."""
    user: str = ""
    """The job's user: whose local account its ranks may run as (``agent.run_as``). Empty
    from a server older than the field: the fallback account."""
    secret_environment: dict[str, str] = field(default_factory=dict)
    """The spec's ``secret_environment``, apart from ``environment`` so that an executor
    can keep these values out of what others may read (a pod's spec); empty from an
    older server, which merged them into ``environment``."""


@dataclass
class HeartbeatReply:
    assignments: list[Assignment] = field(default_factory=list)
