"""Trace-driven simulation: the real policy (:func:`hai.policy.schedule`) on simulated time.

The simulator is the mechanism's stand-in: instead of agents and processes it keeps job
progress in memory. A suspended job checkpoints for ``suspend_s`` (its nodes stay busy),
then goes back to the queue and pays ``restart_s`` when it resumes, so preemption has the
cost it has on a real cluster; one whose work ends while it checkpoints finishes, as the
scheduler has it. Passes run when something changed, at most once per
``pass_interval_s`` of simulated time, like the scheduler's tick.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

from hai.config import PolicyConfig
from hai.policy import Decision, NodeView, PendingView, RunningView, schedule
from hai.workload import TraceJob

_ARRIVE, _FINISH, _SUSPENDED = 0, 1, 2


@dataclass(slots=True)
class _Job:
    trace: TraceJob
    remaining: float
    queued_at: float
    started_at: float | None = None
    nodes: list[str] = field(default_factory=list)
    suspending_for: int | None = None
    time_slice: bool = False
    suspends: int = 0
    version: int = 0
    """Bumped on each start so a finish event from an earlier run is ignored."""
    finished_at: float | None = None
    ran_s: float = 0.0


@dataclass
class SimResult:
    jobs: list[tuple[TraceJob, float]]
    """Each finished job with its completion time."""
    busy_node_s: float
    window: tuple[float, float]
    cluster_nodes: int
    preemptions: int
    pass_latencies_s: list[float]

    @property
    def utilisation(self) -> float:
        start, end = self.window
        return self.busy_node_s / (self.cluster_nodes * (end - start))


def simulate(
    trace: list[TraceJob],
    cluster_nodes: int,
    config: PolicyConfig,
    pass_interval_s: float = 60.0,
    suspend_s: float = 30.0,
    restart_s: float = 60.0,
) -> SimResult:
    """Runs every job of ``trace`` to completion under ``config``.

    Utilisation is measured over the saturated window from the arrival of the first quarter
    of the trace to the last arrival, when the queue is never empty.
    """
    views = [NodeView(f"n{i}", "default") for i in range(cluster_nodes)]
    jobs = {t.id: _Job(t, t.duration, t.submit) for t in trace}
    window = (trace[len(trace) // 4].submit, trace[-1].submit)
    events: list[tuple[float, int, int, int]] = [(t.submit, _ARRIVE, t.id, 0) for t in trace]
    heapq.heapify(events)
    pending: set[int] = set()
    running: set[int] = set()
    busy_node_s = 0.0
    preemptions = 0
    latencies: list[float] = []
    last_pass = -pass_interval_s

    def occupy(job: _Job, start: float, end: float) -> None:
        nonlocal busy_node_s
        lo, hi = max(start, window[0]), min(end, window[1])
        if hi > lo:
            busy_node_s += (hi - lo) * len(job.nodes)

    while events:
        now = events[0][0]
        if now - last_pass < pass_interval_s and pending:
            now = last_pass + pass_interval_s
        while events and events[0][0] <= now:
            t, kind, job_id, version = heapq.heappop(events)
            job = jobs[job_id]
            if kind == _ARRIVE:
                pending.add(job_id)
            elif kind == _FINISH and version == job.version:
                occupy(job, job.started_at, t)  # type: ignore[arg-type]
                job.finished_at = t
                running.discard(job_id)
                if job.suspending_for is not None:  # done before its checkpoint: no requeue
                    job.suspending_for = None
                    job.suspends -= 1
            elif kind == _SUSPENDED and job.finished_at is None:
                occupy(job, job.started_at, t)  # type: ignore[arg-type]
                running.discard(job_id)
                job.nodes = []
                job.suspending_for = None
                job.queued_at = t if job.time_slice else job.trace.submit
                pending.add(job_id)
        if not pending:
            continue
        last_pass = now
        decision = _pass(jobs, views, pending, running, now, config, latencies)
        for start in decision.starts:
            job = jobs[start.job_id]
            pending.discard(start.job_id)
            running.add(start.job_id)
            job.nodes, job.started_at = start.nodes, now
            job.version += 1
            heapq.heappush(events, (now + job.remaining, _FINISH, start.job_id, job.version))
        for pre in decision.preemptions:
            job = jobs[pre.job_id]
            if job.suspending_for is not None:
                continue
            preemptions += 1
            job.suspends += 1
            job.suspending_for, job.time_slice = pre.for_job, pre.time_slice
            # It checkpoints now; the checkpoint time and the reload are lost work.
            job.remaining -= now - job.started_at  # type: ignore[operator]
            job.remaining = max(job.remaining, 0.0) + restart_s
            heapq.heappush(events, (now + suspend_s, _SUSPENDED, pre.job_id, 0))
        if not events and pending:
            raise RuntimeError(f"{len(pending)} jobs can never start; is a job too large?")
    finished = [(j.trace, j.finished_at) for j in jobs.values() if j.finished_at is not None]
    return SimResult(finished, busy_node_s, window, cluster_nodes, preemptions, latencies)


def _pass(
    jobs: dict[int, _Job],
    views: list[NodeView],
    pending: set[int],
    running: set[int],
    now: float,
    config: PolicyConfig,
    latencies: list[float],
) -> Decision:
    pending_views = [
        PendingView(
            i,
            jobs[i].trace.user,
            "default",
            jobs[i].trace.priority,
            jobs[i].trace.nodes,
            jobs[i].queued_at,
        )
        for i in pending
    ]
    running_views = [
        RunningView(
            i,
            j.trace.user,
            "default",
            j.trace.priority,
            j.nodes,
            j.started_at,
            suspended_before=j.suspends > 0,
            suspending=j.suspending_for is not None,
            preempted_for=j.suspending_for,
        )
        for i in running
        for j in (jobs[i],)
    ]
    began = time.perf_counter()
    decision = schedule(views, pending_views, running_views, {}, now, config)
    latencies.append(time.perf_counter() - began)
    return decision
