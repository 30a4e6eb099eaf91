"""The platform's state as plain dataclasses: what the store keeps and the cores pass around.

Jobs are chains: a job's id is its chain id, and each time it is started (first start,
resume after a suspend, restart after a failure) a new :class:`Run` is added to the chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hai.spec import JobSpec

# Job states.
QUEUED = "queued"
RUNNING = "running"
SUSPENDING = "suspending"
SUSPENDED = "suspended"
"""Held by ``hai suspend``: not queued again until ``hai resume``."""
SUCCEEDED = "succeeded"
FAILED = "failed"
STOPPED = "stopped"
JOB_STATES = (QUEUED, RUNNING, SUSPENDING, SUSPENDED, SUCCEEDED, FAILED, STOPPED)
FINISHED_STATES = (SUCCEEDED, FAILED, STOPPED)

# Run states: a run is live until DONE.
RUN_RUNNING = "running"
RUN_SUSPENDING = "suspending"
"""Asked to checkpoint; waiting for go_suspend() or the grace period."""
RUN_STOPPING = "stopping"
"""Its processes are being terminated; ``after_stop`` says what happens to the job."""
RUN_DONE = "done"
LIVE_RUN_STATES = (RUN_RUNNING, RUN_SUSPENDING, RUN_STOPPING)

# What a stopped run means for its job.
AFTER_REQUEUE = "requeue"
AFTER_STOP = "stop"
AFTER_FAIL = "fail"
"""Failed: restarted if the restart policy allows, else the job fails."""
AFTER_HOLD = "hold"

# Node states.
NODE_READY = "ready"
NODE_DRAINED = "drained"
NODE_UNHEALTHY = "unhealthy"
NODE_DEAD = "dead"
NODE_STATES = (NODE_READY, NODE_DRAINED, NODE_UNHEALTHY, NODE_DEAD)

ROLE_USER = "user"
ROLE_ADMIN = "admin"


@dataclass
class User:
    name: str
    role: str = ROLE_USER


@dataclass
class Job:
    """One chain of runs of a submitted spec."""

    id: int
    name: str
    user: str
    group: str
    priority: int
    """As requested (AUTO is -1); the level a run got is on the run."""
    nodes: int
    gpus_per_node: int
    spec: JobSpec
    """As submitted, with JobSpec's defaults: what the scheduler reads the job's rules from."""
    state: str = QUEUED
    created_at: float = 0.0
    queued_at: float = 0.0
    """Where the job stands in FIFO order within its priority."""
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    restarts: int = 0
    """Runs started again after a failure (the restart policy's count)."""
    suspends: int = 0
    message: str = ""


@dataclass
class Run:
    """One start of a job on a set of nodes."""

    id: int
    job_id: int
    """The chain id."""
    attempt: int
    priority: int
    nodes: list[str]
    state: str = RUN_RUNNING
    started_at: float = 0.0
    ended_at: float | None = None
    exit_code: int | None = None
    after_stop: str = ""
    reason: str = ""
    suspend_deadline: float | None = None
    kill_at: float | None = None
    preempted_for: int | None = None
    node_exits: dict[str, int] = field(default_factory=dict)
    """Exit code per node (worst rank) as agents report them."""
    acked: bool = False
    """The job called go_suspend()."""


@dataclass
class Node:
    name: str
    group: str = "default"
    gpus: int = 0
    cpus: int = 0
    memory_bytes: int = 0
    state: str = NODE_READY
    address: str = ""
    heartbeat_at: float = 0.0
    agent_id: str = ""
    """Changes each time an agent starts, so the server sees a restart."""
    message: str = ""


@dataclass
class Event:
    time: float
    kind: str
    message: str
    job_id: int | None = None
    node: str | None = None
    id: int = 0


@dataclass
class Quota:
    user: str
    group: str
    priority: int
    nodes: int
