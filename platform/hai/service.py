"""What users ask of the platform, as plain functions over the scheduler and its store.

The gRPC servicer (:mod:`hai.server`) and tests call these; each takes the authenticated
user and dataclasses, and returns dataclasses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hai.auth import (
    create_user,
    issue_node_credential,
    may_read,
    require_admin,
    require_owner,
    require_reader,
    rotate_token,
)
from hai.errors import ConfigError, NotFoundError, QuotaError, SpecError, StateError
from hai.k8s.names import OPERATOR_ENVIRONMENT
from hai.policy import quota_limit
from hai.protocol import rank_log, run_log_dir
from hai.records import (
    AFTER_HOLD,
    AFTER_STOP,
    FINISHED_STATES,
    LIVE_RUN_STATES,
    NODE_DRAINED,
    NODE_READY,
    QUEUED,
    ROLE_ADMIN,
    RUNNING,
    STOPPED,
    SUSPENDED,
    Event,
    Job,
    Node,
    Quota,
    Run,
    User,
)
from hai.scheduler import Scheduler
from hai.spec import AUTO, MAX_NODES, PRIORITY_LEVELS, JobSpec


@dataclass
class JobDetail:
    job: Job
    runs: list[Run] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


@dataclass
class LogChunk:
    text: str
    offset: int
    """Where the next read should start."""
    finished: bool
    """The job is over and its last run's log has been read to the end."""
    attempt: int | None = None
    """The run the next read should ask for; None until the job first ran."""


@dataclass
class NodeCredential:
    """A node's new credential (shown once), as ``hai nodes add`` prints it."""

    node: str
    token: str
    replaced: bool
    """The node had a credential before; it no longer works."""


@dataclass
class UserToken:
    """A user's new token (shown once)."""

    name: str
    token: str


@dataclass
class NodeRemoval:
    node: str
    registered: bool
    """The node had registered (False: only a credential was issued for it)."""
    revoked: bool
    """It had a credential, now revoked."""
    jobs: dict[int, str] = field(default_factory=dict)
    """Job id -> its state after losing its run on the node, for each job that had one."""


WHOLE_LIFE_STATE_LIMIT = 64 << 10
"""Bytes of JSON a chain may keep: a step, a checkpoint path, a data cursor; not a model."""


def shown(user: User, job: Job) -> Job:
    """A job as ``user`` may see it: its owner and admins get its spec with secret values
    masked (:meth:`JobSpec.redacted`); anyone else only that it exists (id, user, state,
    nodes...), without the spec's arguments, environment or command (``spec`` is None)."""
    if not may_read(user, job.user):
        return replace(job, spec=None)  # type: ignore[arg-type]
    return replace(job, spec=job.spec.redacted())


class Service:
    """Every method returning a :class:`Job` returns it through :func:`shown`: secret
    environment values stay in the store (later runs need them) and never leave it but
    in the assignments of the run's own agents."""

    def __init__(self, scheduler: Scheduler, state_dir: Path) -> None:
        self.scheduler = scheduler
        self.store = scheduler.store
        self.state_dir = state_dir

    def submit(self, user: User, spec: JobSpec) -> Job:
        """Queues a job.

        Raises:
            SpecError: it asks for more GPUs per node than the largest registered node of
                its group has (see :meth:`_largest_node`).
            QuotaError: its priority has no quota at all.
            ForbiddenError: a user who is not an admin sets a variable that places the job's
                pods on Kubernetes (only the operator does).
        """
        placing = sorted(
            (spec.environment.keys() | spec.secret_environment.keys()) & set(OPERATOR_ENVIRONMENT)
        )
        if placing:
            require_admin(user, f"setting {', '.join(placing)} (where a job's pods go)")
        store = self.store
        largest = self._largest_node(spec.group)
        if largest is not None and spec.gpus_per_node > largest:
            raise SpecError(
                [
                    f"gpus_per_node: {spec.gpus_per_node} is more than the largest node of "
                    f"group {spec.group!r} has ({largest}); ask for at most {largest} "
                    f"per node and more nodes instead"
                ]
            )
        quotas = {(q.user, q.group, q.priority): q.nodes for q in store.list_quotas()}
        if spec.priority != AUTO:
            limit = self._limit(quotas, user.name, spec.group, spec.priority)
            if limit is not None and spec.nodes > limit:
                raise QuotaError(
                    f"{user.name!r} may use {limit} nodes at priority {spec.priority} in group "
                    f"{spec.group!r}; the job asks for {spec.nodes} (use AUTO or a lower level)"
                )
        elif all(
            (lim := self._limit(quotas, user.name, spec.group, lvl)) is not None
            and spec.nodes > lim
            for lvl in PRIORITY_LEVELS
        ):
            raise QuotaError(f"{user.name!r} has no level with {spec.nodes} nodes of quota")
        with self.scheduler.lock, store.transaction():
            now = self.scheduler.clock()
            job = Job(
                0,
                spec.name,
                user.name,
                spec.group,
                spec.priority,
                spec.nodes,
                spec.gpus_per_node,
                spec,
                QUEUED,
                now,
                now,
            )
            job.id = store.add_job(job)
            self.scheduler.event(
                "submit", f"{user.name} submitted job {job.id} ({spec.name})", job.id
            )
            if largest is None:
                self.scheduler.event(
                    "submit",
                    f"job {job.id}: no node of group {spec.group!r} is registered yet; it "
                    f"waits for nodes with {spec.gpus_per_node} GPUs",
                    job.id,
                )
        return shown(user, job)

    def _largest_node(self, group: str) -> int | None:
        """The most GPUs of any node registered in ``group`` (dead or drained ones too: they
        may come back), or None while the group has none: then a job is accepted and waits,
        as agents may register after jobs are queued (a cluster starting up)."""
        gpus = [n.gpus for n in self.store.list_nodes() if n.group == group]
        return max(gpus) if gpus else None

    def _limit(
        self, quotas: dict[tuple[str, str, int], int], user: str, group: str, level: int
    ) -> int | None:
        return quota_limit(quotas, self.scheduler.config.policy, user, group, level)

    def list_jobs(self, user: User, everyone: bool = True, all_states: bool = False) -> list[Job]:
        jobs = self.store.list_jobs(user=None if everyone else user.name)
        if not all_states:
            jobs = [j for j in jobs if j.state not in FINISHED_STATES]
        return [shown(user, j) for j in jobs]

    def describe(self, user: User, job_id: int) -> JobDetail:
        """A job with its runs and events, for its owner or an admin.

        Raises:
            ForbiddenError: ``user`` is neither.
        """
        job = self.store.get_job(job_id)
        require_reader(user, job.user, job_id, "spec, runs and events")
        return JobDetail(
            shown(user, job),
            self.store.list_runs(job_id=job_id),
            self.store.list_events(job_id=job_id),
        )

    def _live_run(self, job_id: int) -> Run | None:
        runs = [r for r in self.store.live_runs() if r.job_id == job_id]
        return runs[0] if runs else None

    def stop(self, user: User, job_id: int) -> Job:
        job = self.store.get_job(job_id)
        require_owner(user, job.user, "stop", job_id)
        if job.state in FINISHED_STATES:
            raise StateError(f"job {job_id} already {job.state}")
        run = self._live_run(job_id)
        if run is not None:
            self.scheduler.stop_run(run, AFTER_STOP, f"stopped by {user.name}")
        else:
            with self.scheduler.lock:
                self.store.update_job(
                    job_id,
                    state=STOPPED,
                    finished_at=self.scheduler.clock(),
                    message=f"stopped by {user.name}",
                )
                self.scheduler.event("finish", f"job {job_id} stopped by {user.name}", job_id)
        return shown(user, self.store.get_job(job_id))

    def suspend(self, user: User, job_id: int) -> Job:
        """Asks a running job to checkpoint and holds it until :meth:`resume`."""
        job = self.store.get_job(job_id)
        require_owner(user, job.user, "suspend", job_id)
        run = self._live_run(job_id)
        if job.state == QUEUED:
            self.store.update_job(job_id, state=SUSPENDED, message=f"held by {user.name}")
        elif run is None or job.state != RUNNING:
            raise StateError(f"job {job_id} is {job.state}; only queued or running jobs suspend")
        else:
            self.scheduler.suspend_run(run, AFTER_HOLD, f"suspended by {user.name}")
        return shown(user, self.store.get_job(job_id))

    def resume(self, user: User, job_id: int) -> Job:
        job = self.store.get_job(job_id)
        require_owner(user, job.user, "resume", job_id)
        if job.state != SUSPENDED:
            raise StateError(f"job {job_id} is {job.state}; only suspended jobs resume")
        self.store.update_job(job_id, state=QUEUED, message=f"resumed by {user.name}")
        return shown(user, self.store.get_job(job_id))

    def logs(
        self, user: User, job_id: int, rank: int, offset: int, attempt: int | None
    ) -> LogChunk:
        """Up to 1 MiB of a rank's log from ``offset``; the latest run unless ``attempt``.

        Once a run's log is read to its end and the chain has a later run, the chunk points
        at the start of that run, so a follower passing back ``offset`` and ``attempt`` reads
        a suspended and resumed job's whole output in order.

        Raises:
            ForbiddenError: ``user`` is neither the job's owner nor an admin.
        """
        if not 0 <= offset < 2**63:
            raise ConfigError(f"a log offset must be 0 or more (and below 2**63), got {offset}")
        job = self.store.get_job(job_id)
        require_reader(user, job.user, job_id, "logs")
        ranks = job.nodes * max(job.gpus_per_node, 1)
        if not 0 <= rank < ranks:
            raise NotFoundError(
                f"job {job_id} has no rank {rank}: its ranks are 0-{ranks - 1} "
                f"({job.nodes} nodes x {max(job.gpus_per_node, 1)})"
            )
        runs = self.store.list_runs(job_id=job_id)
        if not runs:
            return LogChunk("", 0, job.state in FINISHED_STATES)
        attempt = runs[-1].attempt if attempt is None else attempt
        path = rank_log(self.state_dir, run_log_dir(job_id, attempt), rank)
        text = ""
        if path.exists():
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read(1 << 20)
            text, offset = data.decode(errors="replace"), offset + len(data)
        later = [r.attempt for r in runs if r.attempt > attempt]
        if later and not text:
            return LogChunk("", 0, False, min(later))
        return LogChunk(text, offset, job.state in FINISHED_STATES and not text, attempt)

    def nodes(self, user: User) -> list[Node]:
        return self.store.list_nodes()

    def drain(self, user: User, name: str, drained: bool) -> Node:
        require_admin(user, "draining a node")
        self.store.update_node(
            name,
            state=NODE_DRAINED if drained else NODE_READY,
            message=f"drained by {user.name}" if drained else "",
        )
        return self.store.get_node(name)

    def set_quota(self, user: User, quota: Quota) -> Quota:
        """Sets a user's node quota at one level in one group.

        Raises:
            ConfigError: the level is not one of :data:`PRIORITY_LEVELS` (AUTO picks a level
                per job, so has no quota) or the node count is out of 0..MAX_NODES.
        """
        require_admin(user, "setting quotas")
        if quota.priority not in PRIORITY_LEVELS:
            raise ConfigError(
                f"a quota's priority must be one of {', '.join(map(str, PRIORITY_LEVELS))} "
                f"(or its name), got {quota.priority!r}"
            )
        if not 0 <= quota.nodes <= MAX_NODES:
            raise ConfigError(f"a quota's nodes must be 0-{MAX_NODES}, got {quota.nodes}")
        self.store.set_quota(quota)
        return quota

    def add_user(self, user: User, name: str, role: str) -> str:
        require_admin(user, "adding users")
        return create_user(self.store, name, role)

    def whoami(self, user: User) -> User:
        return user

    def list_users(self, user: User) -> list[User]:
        require_admin(user, "listing users")
        return self.store.list_users()

    def remove_user(self, user: User, name: str) -> User:
        """Removes a user (their jobs stay); returns who was removed.

        Raises:
            StateError: ``name`` is the last admin (no one could add users any more).
        """
        require_admin(user, "removing users")
        with self.store.transaction():
            users = {u.name: u for u in self.store.list_users()}
            if name not in users:
                raise NotFoundError(f"no user {name!r}; `hai users ls` lists them")
            if [u.name for u in users.values() if u.role == ROLE_ADMIN] == [name]:
                raise StateError(
                    f"{name!r} is the last admin; add another (`hai users add NAME --admin`) first"
                )
            self.store.remove_user(name)
        return users[name]

    def rotate_token(self, user: User, name: str | None) -> UserToken:
        """A new token for ``name`` (the caller when None), shown once; the old one stops
        working at once. Users rotate their own; admins anyone's."""
        name = name or user.name
        if name != user.name:
            require_admin(user, f"rotating {name!r}'s token")
        return UserToken(name, rotate_token(self.store, name))

    def add_node(self, user: User, name: str) -> NodeCredential:
        """Issues node ``name``'s credential, replacing (revoking) any earlier one."""
        require_admin(user, "adding nodes")
        token, replaced = issue_node_credential(self.store, name, self.scheduler.clock())
        return NodeCredential(name, token, replaced)

    def remove_node(self, user: User, name: str) -> NodeRemoval:
        """Revokes the node's credential and forgets the node; runs on it end as on a dead
        node (:meth:`Scheduler.remove_node`).

        Raises:
            NotFoundError: there is neither such a node nor a credential for it.
        """
        require_admin(user, "removing nodes")
        with self.scheduler.lock, self.store.transaction():
            revoked = self.store.remove_node_credential(name)
            registered = any(n.name == name for n in self.store.list_nodes())
            if not registered and not revoked:
                raise NotFoundError(f"no node {name!r}; `hai nodes` lists them")
            jobs = []
            if registered:
                jobs = self.scheduler.remove_node(name, f"node {name} removed by {user.name}")
            states = {job: self.store.get_job(job).state for job in jobs}
            return NodeRemoval(name, registered, revoked, states)

    def _caller_run(self, run_token: str | None) -> Run:
        run = self.store.get_run(self.scheduler.run_tokens.run_id_of(run_token))
        if run.state not in LIVE_RUN_STATES:
            raise StateError(f"run {run.id} of job {run.job_id} is over ({run.state})")
        return run

    def get_whole_life_state(self, run_token: str | None) -> dict[str, Any]:
        """What the chain of the calling run last stored, or an empty dict."""
        stored = self.store.get_chain_state(self._caller_run(run_token).job_id)
        return {} if stored is None else json.loads(stored)

    def set_whole_life_state(self, run_token: str | None, state: Any) -> int:
        """Replaces the calling run's chain state (a JSON object of bounded size); returns
        its size in bytes."""
        if not isinstance(state, dict):
            raise ConfigError(f"whole-life state must be a dict, not {type(state).__name__}")
        text = json.dumps(state)
        if len(text) > WHOLE_LIFE_STATE_LIMIT:
            raise ConfigError(
                f"whole-life state is {len(text)} bytes of JSON; the limit is "
                f"{WHOLE_LIFE_STATE_LIMIT} (keep a path to a file for anything bigger)"
            )
        run = self._caller_run(run_token)
        self.store.set_chain_state(run.job_id, run.id, text, self.scheduler.clock())
        return len(text)
