"""Scheduling policy: who runs where, as a pure function of a snapshot.

:func:`schedule` takes the nodes, the queue and the running jobs and returns which jobs to
start on which nodes and which running jobs to suspend. It never touches processes, the
store or a clock: the scheduler service (:mod:`hai.scheduler`) applies its decisions to
real agents, and the simulator (:mod:`hai.sim`) applies them to simulated time, so both run
this same code.

Rules (HAI-Platform's, with the gang- and thrash-safety users of Volcano and Kueue ask for):

* Whole nodes, whole gangs: a job starts on all of its nodes at once or not at all.
* Higher priority first, FIFO within a priority (or pure FIFO with ``order="fifo"``).
* Per-(user, group, priority) node quotas; AUTO takes the highest level with quota left.
* Preemption picks victims lowest priority first, then most recently started, never a job
  of the same user at the same priority, and only when the victims free enough nodes for
  the whole gang; nodes already being freed for a job are counted before asking for more.
* Anti-starvation: a job suspended before cannot be suspended again before it ran
  ``min_run_s``; a job waiting longer than ``reserve_after_s`` stops backfill in its group;
  a run started at ABOVE_NORMAL is a NORMAL victim once it ran ``demote_after_s``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from hai.config import PolicyConfig
from hai.spec import AUTO, PRIORITY_LEVELS

QuotaKey = tuple[str, str, int]
"""(user, group, priority level)."""

DEMOTIONS = {20: 10}
"""HAI-Platform's aging rule: ABOVE_NORMAL drops to NORMAL after ``demote_after_s``."""


@dataclass(slots=True)
class NodeView:
    name: str
    group: str
    schedulable: bool = True
    """False for drained, unhealthy and dead nodes: they get no new work."""


@dataclass(slots=True)
class PendingView:
    id: int
    user: str
    group: str
    priority: int
    """Requested level, or AUTO."""
    nodes: int
    queued_at: float


@dataclass(slots=True)
class RunningView:
    id: int
    """The job id."""
    user: str
    group: str
    priority: int
    """The level the run was started at."""
    nodes: list[str]
    started_at: float
    suspended_before: bool = False
    suspending: bool = False
    preempted_for: int | None = None


@dataclass(slots=True)
class Start:
    job_id: int
    priority: int
    nodes: list[str]


@dataclass(slots=True)
class Preempt:
    job_id: int
    for_job: int
    time_slice: bool
    """True when the victim runs at the same priority (it goes to the tail of the queue)."""


@dataclass
class Decision:
    starts: list[Start] = field(default_factory=list)
    preemptions: list[Preempt] = field(default_factory=list)
    waiting: dict[int, str] = field(default_factory=dict)
    """Why each job that did not start is still waiting."""


def quota_limit(
    quotas: Mapping[QuotaKey, int], config: PolicyConfig, user: str, group: str, level: int
) -> int | None:
    """Nodes ``user`` may hold in ``group`` at ``level``; None means unlimited."""
    key = (user, group, level)
    return quotas[key] if key in quotas else config.default_quotas.get(level)


def resolve_priority(
    job: PendingView,
    used: Mapping[QuotaKey, int],
    quotas: Mapping[QuotaKey, int],
    config: PolicyConfig,
) -> int | None:
    """The level the job would run at now: its own, or for AUTO the highest with room.

    Returns None when the job does not fit its quota at any allowed level right now.
    """
    levels = PRIORITY_LEVELS if job.priority == AUTO else (job.priority,)
    for level in levels:
        limit = quota_limit(quotas, config, job.user, job.group, level)
        if limit is None or used.get((job.user, job.group, level), 0) + job.nodes <= limit:
            return level
    return None


def victim_view(run: RunningView, now: float, config: PolicyConfig) -> RunningView:
    """The run as a preemption candidate: at NORMAL once an ABOVE_NORMAL run aged out.

    Quotas keep counting it at the level it started at; only who may preempt it changes.
    """
    demoted = DEMOTIONS.get(run.priority)
    if (
        demoted is None
        or config.demote_after_s is None
        or now - run.started_at < config.demote_after_s
    ):
        return run
    return replace(run, priority=demoted)


def schedule(
    nodes: list[NodeView],
    pending: list[PendingView],
    running: list[RunningView],
    quotas: Mapping[QuotaKey, int],
    now: float,
    config: PolicyConfig,
) -> Decision:
    """One scheduling pass; see the module docstring for the rules."""
    decision = Decision()
    busy = {name for run in running for name in run.nodes}
    free: dict[str, list[str]] = defaultdict(list)
    capacity: dict[str, int] = defaultdict(int)
    for node in nodes:
        if node.schedulable:
            capacity[node.group] += 1
            if node.name not in busy:
                free[node.group].append(node.name)
    used: dict[QuotaKey, int] = defaultdict(int)
    incoming: dict[int, int] = defaultdict(int)
    pools: dict[str, list[RunningView]] = defaultdict(list)
    for run in running:
        used[(run.user, run.group, run.priority)] += len(run.nodes)
        if run.suspending:
            if run.preempted_for is not None:
                incoming[run.preempted_for] += len(run.nodes)
        else:
            pools[run.group].append(victim_view(run, now, config))
    for pool in pools.values():
        # Victim order: lowest priority first, then most recently started.
        pool.sort(key=lambda r: (r.priority, -r.started_at))

    if config.order == "fifo":
        order = sorted(pending, key=lambda j: (j.queued_at, j.id))
    else:
        # AUTO sorts at its best possible level; its real level is resolved below.
        order = sorted(
            pending,
            key=lambda j: (
                -(PRIORITY_LEVELS[0] if j.priority == AUTO else j.priority),
                j.queued_at,
                j.id,
            ),
        )
    blocked: set[str] = set()
    failed: dict[tuple[str, int, str | None], int] = {}
    for job in order:
        group = job.group
        if group in blocked:
            decision.waiting[job.id] = "behind an earlier job that holds this group's free nodes"
            continue
        if job.nodes > capacity[group]:
            decision.waiting[job.id] = (
                f"needs {job.nodes} nodes; group {group!r} has {capacity[group]} schedulable"
            )
            continue
        level = resolve_priority(job, used, quotas, config)
        if level is None:
            decision.waiting[job.id] = f"over quota in group {group!r}"
            continue
        group_free = free[group]
        if len(group_free) >= job.nodes:
            taken = group_free[len(group_free) - job.nodes :]
            del group_free[len(group_free) - job.nodes :]
            decision.starts.append(Start(job.id, level, taken))
            used[(job.user, group, level)] += job.nodes
            continue
        coming = incoming.get(job.id, 0)
        short = job.nodes - len(group_free) - coming
        if short > 0 and config.preemption:
            victims = _pick_victims(job, level, short, pools[group], now, config, failed)
            for victim in victims:
                pools[group].remove(victim)
                coming += len(victim.nodes)
                decision.preemptions.append(
                    Preempt(victim.id, job.id, time_slice=victim.priority >= level)
                )
            if victims:
                short = 0
        if short <= 0:
            # Hold the free nodes this job needs beyond what its victims will free.
            hold = max(job.nodes - coming, 0)
            del group_free[len(group_free) - hold :]
            decision.waiting[job.id] = "waiting for preempted jobs to suspend"
            continue
        decision.waiting[job.id] = f"waiting for {short} more free nodes in group {group!r}"
        if not config.backfill or now - job.queued_at >= config.reserve_after_s:
            blocked.add(group)
    return decision


def _pick_victims(
    job: PendingView,
    level: int,
    short: int,
    pool: list[RunningView],
    now: float,
    config: PolicyConfig,
    failed: dict[tuple[str, int, str | None], int],
) -> list[RunningView]:
    """Running jobs whose suspension frees at least ``short`` nodes for ``job``, or none.

    ``failed`` remembers the smallest shortfall that found no victims per (group, level,
    user when time-slicing), so a long queue does not rescan the pool for every job.
    """
    slicing = config.time_slice_s is not None and now - job.queued_at >= config.time_slice_s
    key = (job.group, level, job.user if slicing else None)
    if key in failed and short >= failed[key]:
        return []
    chosen: list[RunningView] = []
    freed = 0
    for run in pool:
        if run.priority > level or (run.priority == level and not slicing):
            break
        if run.suspended_before and now - run.started_at < config.min_run_s:
            continue
        if run.priority == level and (
            run.user == job.user or now - run.started_at < config.time_slice_s  # type: ignore[operator]
        ):
            continue
        chosen.append(run)
        freed += len(run.nodes)
        if freed >= short:
            return chosen
    failed[key] = min(short, failed.get(key, short))
    return []
