"""The scheduler's mechanism: applies policy decisions to the store and to agents.

Policy (:mod:`hai.policy`) decides who runs where. This module keeps the books: it turns
starts into runs, preemptions into suspend requests with a grace deadline, agent reports
into finished runs, and silence from an agent into a dead node whose jobs are requeued.
Agents learn what to do from :meth:`Scheduler.heartbeat`'s answer, never from a push, so
the scheduler can restart at any time: everything it knows is in the store.

All methods take the one lock, so gRPC threads and the pass loop never interleave writes.
"""

from __future__ import annotations

import logging
import shlex
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from hai.auth import RunTokens
from hai.config import HaiConfig
from hai.errors import NotFoundError
from hai.policy import Decision, NodeView, PendingView, RunningView, schedule
from hai.protocol import (
    DESIRED_RUN,
    DESIRED_STOP,
    DESIRED_SUSPEND,
    Assignment,
    Heartbeat,
    HeartbeatReply,
    NodeInfo,
    run_log_dir,
)
from hai.records import (
    AFTER_FAIL,
    AFTER_HOLD,
    AFTER_REQUEUE,
    AFTER_STOP,
    FAILED,
    LIVE_RUN_STATES,
    NODE_DEAD,
    NODE_READY,
    NODE_UNHEALTHY,
    QUEUED,
    RUN_DONE,
    RUN_RUNNING,
    RUN_STOPPING,
    RUN_SUSPENDING,
    RUNNING,
    STOPPED,
    SUCCEEDED,
    SUSPENDED,
    SUSPENDING,
    Event,
    Job,
    Node,
    Run,
)
from hai.store import StateStore

log = logging.getLogger("hai.scheduler")

# Exit code recorded for a node whose ranks were lost with it (agent dead or restarted).
LOST = -9
# Rendezvous ports: one per run, spread so neighbouring runs on a host do not collide.
_PORT_BASE, _PORT_SPAN = 29500, 20000


@dataclass
class PassStats:
    """What one pass did, for metrics and tests."""

    started: int = 0
    preempted: int = 0
    pending: int = 0
    seconds: float = 0.0


class Scheduler:
    def __init__(
        self,
        store: StateStore,
        config: HaiConfig,
        clock: Callable[[], float] = time.time,
        on_suspended: Callable[[float], None] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.lock = threading.RLock()
        self.run_tokens = RunTokens(store)
        self._on_suspended = on_suspended
        """Called with each suspend's latency (request to stop), for the metric."""
        self._started_at = clock()
        """Leases count from here at the earliest: agents that heartbeated to the previous
        server instance get a full lease to find this one before their nodes are dead."""

    def event(self, kind: str, message: str, job_id: int | None = None, node: str | None = None):
        self.store.add_event(Event(self.clock(), kind, message, job_id, node))
        log.info("%s: %s", kind, message)

    # ---- agents -------------------------------------------------------------------------
    def register(self, info: NodeInfo) -> None:
        """Adds or refreshes a node. A new agent id means the agent restarted and lost its
        ranks, so runs it had are treated as lost on that node."""
        with self.lock, self.store.transaction():
            now = self.clock()
            try:
                old: Node | None = self.store.get_node(info.name)
            except NotFoundError:
                old = None
            if old is not None and old.agent_id != info.agent_id:
                self._node_lost(info.name, now, f"agent on {info.name} restarted")
            keep = old is not None and old.state not in (NODE_DEAD, NODE_UNHEALTHY)
            self.store.put_node(
                Node(
                    info.name,
                    info.group,
                    info.gpus,
                    info.cpus,
                    info.memory_bytes,
                    old.state if keep else NODE_READY,
                    info.address,
                    now,
                    info.agent_id,
                )
            )
            self.event("node", f"{info.name} registered ({info.gpus} GPUs)", node=info.name)

    def heartbeat(self, beat: Heartbeat) -> HeartbeatReply:
        """Records the agent's run reports and answers with the node's assignments.

        Raises:
            NotFoundError: the node is unknown (the agent must register again).
        """
        with self.lock, self.store.transaction():
            now = self.clock()
            node = self.store.get_node(beat.node)
            if node.agent_id != beat.agent_id:
                raise NotFoundError(f"node {beat.node} is registered to another agent")
            changes: dict = {"heartbeat_at": now}
            if beat.health_failures and node.state != NODE_UNHEALTHY:
                changes.update(state=NODE_UNHEALTHY, message="; ".join(beat.health_failures))
                self.event("unhealthy", f"{node.name}: {changes['message']}", node=node.name)
            elif node.state == NODE_DEAD or (
                node.state == NODE_UNHEALTHY and not beat.health_failures
            ):
                changes.update(state=NODE_READY, message="")
                self.event("node", f"{node.name} is back", node=node.name)
            self.store.update_node(node.name, **changes)
            live = {run.id: run for run in self._runs_on(node.name)}
            for report in beat.runs:
                run = live.get(report.run_id)
                if run is None:
                    continue
                if report.acked and not run.acked:
                    self.store.update_run(run.id, acked=True)
                    if run.state == RUN_SUSPENDING:
                        self._stop_run(run, run.after_stop, "checkpoint acknowledged", now)
                if report.exit_code is not None:
                    self._node_exited(
                        self.store.get_run(run.id), node.name, report.exit_code, now, report.reason
                    )
            return HeartbeatReply(
                [self._assignment(r, node.name) for r in self._runs_on(node.name)]
            )

    # ---- the pass -----------------------------------------------------------------------
    def tick(self) -> PassStats:
        """Expires leases and grace periods, then runs one policy pass and applies it."""
        with self.lock, self.store.transaction():
            now = self.clock()
            self._expire(now)
            began = time.perf_counter()
            decision = self._decide(now)
            stats = PassStats(
                len(decision.starts),
                len(decision.preemptions),
                len(decision.waiting),
                time.perf_counter() - began,
            )
            self._apply(decision, now)
            return stats

    def _expire(self, now: float) -> None:
        lease = self.config.scheduler.node_lease_s
        for node in self.store.list_nodes():
            if node.state != NODE_DEAD and now - max(node.heartbeat_at, self._started_at) > lease:
                self.store.update_node(
                    node.name,
                    state=NODE_DEAD,
                    message=f"no heartbeat for {now - node.heartbeat_at:.0f}s",
                )
                self.event("dead", f"{node.name}: no heartbeat within {lease:g}s", node=node.name)
                self._node_lost(node.name, now, f"node {node.name} died")
        for run in self.store.live_runs():
            job = self.store.get_job(run.job_id)
            limit = job.spec.max_run_time
            if (
                run.state == RUN_SUSPENDING
                and run.suspend_deadline is not None
                and now >= run.suspend_deadline
            ):
                self._stop_run(run, run.after_stop, "suspend grace period ran out", now)
            elif run.state == RUN_RUNNING and limit and now - run.started_at > limit:
                self._stop_run(run, AFTER_FAIL, f"ran past max_run_time {limit:g}s", now)

    def _decide(self, now: float) -> Decision:
        nodes = [NodeView(n.name, n.group, n.state == NODE_READY) for n in self.store.list_nodes()]
        jobs = {j.id: j for j in self.store.list_jobs(states=(QUEUED, RUNNING, SUSPENDING))}
        pending = [
            PendingView(j.id, j.user, j.group, j.priority, j.nodes, j.queued_at)
            for j in jobs.values()
            if j.state == QUEUED
        ]
        running = [
            RunningView(
                r.job_id,
                jobs[r.job_id].user,
                jobs[r.job_id].group,
                r.priority,
                r.nodes,
                r.started_at,
                suspended_before=jobs[r.job_id].suspends > 0,
                suspending=r.state != RUN_RUNNING,
                preempted_for=r.preempted_for,
            )
            for r in self.store.live_runs()
            if r.job_id in jobs
        ]
        quotas = {(q.user, q.group, q.priority): q.nodes for q in self.store.list_quotas()}
        decision = schedule(nodes, pending, running, quotas, now, self.config.policy)
        for job_id, why in decision.waiting.items():
            if jobs[job_id].message != why:
                self.store.update_job(job_id, message=why)
        return decision

    def _apply(self, decision: Decision, now: float) -> None:
        live = {r.job_id: r for r in self.store.live_runs()}
        for pre in decision.preemptions:
            run = live[pre.job_id]
            job = self.store.get_job(run.job_id)
            grace = self._begin_suspend(
                run,
                job,
                AFTER_REQUEUE,
                f"preempted for job {pre.for_job}",
                now,
                preempted_for=pre.for_job,
            )
            if pre.time_slice:  # a time-sliced job waits again from now, at the queue's end
                self.store.update_job(job.id, queued_at=now)
            self.event(
                "suspend",
                f"job {job.id} asked to suspend for job {pre.for_job} (grace {grace:g}s)",
                job.id,
            )
        for start in decision.starts:
            job = self.store.get_job(start.job_id)
            attempt = len(self.store.list_runs(job_id=job.id))
            run_id = self.store.add_run(
                Run(0, job.id, attempt, start.priority, start.nodes, started_at=now)
            )
            self.store.update_job(
                job.id, state=RUNNING, started_at=job.started_at or now, message=""
            )
            self.event(
                "start",
                f"job {job.id} run {run_id} on {', '.join(start.nodes)} "
                f"at priority {start.priority}",
                job.id,
            )

    # ---- run bookkeeping ------------------------------------------------------------------
    def stop_run(self, run: Run, after: str, reason: str) -> None:
        """Asks the run's agents to terminate it; ``after`` says what becomes of the job."""
        with self.lock, self.store.transaction():
            self._stop_run(run, after, reason, self.clock())

    def suspend_run(self, run: Run, after: str, reason: str) -> None:
        """Asks the job to checkpoint and suspend, within its grace period."""
        with self.lock, self.store.transaction():
            job = self.store.get_job(run.job_id)
            grace = self._begin_suspend(run, job, after, reason, self.clock())
            self.event("suspend", f"job {job.id}: {reason} (grace {grace:g}s)", job.id)

    def _begin_suspend(
        self, run: Run, job: Job, after: str, reason: str, now: float, **fields: object
    ) -> float:
        """Mark the run suspending with its grace deadline; return the grace in seconds."""
        grace = _grace_s(job)
        self.store.update_run(
            run.id,
            state=RUN_SUSPENDING,
            after_stop=after,
            suspend_deadline=now + grace,
            reason=reason,
            **fields,
        )
        self.store.update_job(job.id, state=SUSPENDING)
        return grace

    def _stop_run(self, run: Run, after: str, reason: str, now: float) -> None:
        if run.state == RUN_SUSPENDING and self._on_suspended is not None:
            self._on_suspended(
                now - (run.suspend_deadline or now) + _grace_s(self.store.get_job(run.job_id))
            )
        self.store.update_run(
            run.id, state=RUN_STOPPING, after_stop=after, kill_at=now, reason=run.reason or reason
        )
        self.event("stop", f"job {run.job_id} run {run.id}: {reason}", run.job_id)
        self._maybe_finish(self.store.get_run(run.id), now)

    def _node_exited(self, run: Run, node: str, code: int, now: float, reason: str) -> None:
        if node in run.node_exits:
            return
        exits = {**run.node_exits, node: code}
        self.store.update_run(run.id, node_exits=exits)
        run = self.store.get_run(run.id)
        if code != 0 and run.state == RUN_RUNNING:
            why = reason or f"rank on {node} exited with {code}{_EXIT_MEANINGS.get(code, '')}"
            after = AFTER_REQUEUE if code == LOST else AFTER_FAIL
            self._stop_run(run, after, why, now)
        elif code != 0 and code == LOST and run.state == RUN_SUSPENDING:
            self._stop_run(run, run.after_stop, reason, now)
        else:
            self._maybe_finish(run, now)

    def _maybe_finish(self, run: Run, now: float) -> None:
        if run.state == RUN_DONE or set(run.nodes) - set(run.node_exits):
            return
        job = self.store.get_job(run.job_id)
        worst = max(run.node_exits.values(), key=abs)
        self.store.update_run(run.id, state=RUN_DONE, ended_at=now, exit_code=worst)
        # A run told to suspend that exits 0 before acknowledging finished its work first
        # (the request came after its last step); one stopped after its acknowledgement or
        # its grace period goes where it was headed.
        after = run.after_stop if run.state != RUN_RUNNING else AFTER_FAIL
        if run.state in (RUN_RUNNING, RUN_SUSPENDING) and worst == 0:
            self.store.update_job(job.id, state=SUCCEEDED, finished_at=now, exit_code=0, message="")
            self.event("finish", f"job {job.id} succeeded", job.id)
        elif after == AFTER_REQUEUE:
            self.store.update_job(
                job.id, state=QUEUED, suspends=job.suspends + 1, message=f"requeued: {run.reason}"
            )
            self.event("requeue", f"job {job.id} requeued on its chain ({run.reason})", job.id)
        elif after == AFTER_HOLD:
            self.store.update_job(
                job.id,
                state=SUSPENDED,
                suspends=job.suspends + 1,
                message="suspended; `hai resume` queues it again",
            )
            self.event("suspended", f"job {job.id} suspended", job.id)
        elif after == AFTER_STOP:
            self.store.update_job(
                job.id, state=STOPPED, finished_at=now, exit_code=worst, message=run.reason
            )
            self.event("finish", f"job {job.id} stopped", job.id)
        elif job.spec.restart_policy == "on_failure" and job.restarts < job.spec.max_restarts:
            self.store.update_job(
                job.id,
                state=QUEUED,
                restarts=job.restarts + 1,
                message=f"restarting after: {run.reason}",
            )
            self.event("restart", f"job {job.id} restarts ({run.reason})", job.id)
        else:
            self.store.update_job(
                job.id, state=FAILED, finished_at=now, exit_code=worst, message=run.reason
            )
            self.event("finish", f"job {job.id} failed: {run.reason}", job.id)

    def remove_node(self, name: str, reason: str) -> list[int]:
        """Forgets node ``name``; its live runs lose their ranks there as on a dead node.
        Returns the ids of their jobs. Raises NotFoundError for an unknown node."""
        with self.lock, self.store.transaction():
            jobs = [run.job_id for run in self._runs_on(name)]
            self._node_lost(name, self.clock(), reason)
            self.store.remove_node(name)
            self.event("node", f"{name} removed: {reason}", node=name)
            return jobs

    def _node_lost(self, node: str, now: float, reason: str) -> None:
        """Ends every live run's part on ``node`` as lost (dead, restarted or removed)."""
        for run in self._runs_on(node):
            self._node_exited(run, node, LOST, now, reason)

    def _runs_on(self, node: str) -> list[Run]:
        return [r for r in self.store.list_runs(states=LIVE_RUN_STATES) if node in r.nodes]

    def _assignment(self, run: Run, node: str) -> Assignment:
        job = self.store.get_job(run.job_id)
        spec = job.spec
        desired = {RUN_RUNNING: DESIRED_RUN, RUN_SUSPENDING: DESIRED_SUSPEND}.get(
            run.state, DESIRED_STOP
        )
        if node in run.node_exits:
            desired = DESIRED_STOP
        try:
            master = self.store.get_node(run.nodes[0]).address
        except NotFoundError:  # removed (`hai nodes rm`): the run is stopping, no rendezvous
            master = ""
        return Assignment(
            run_id=run.id,
            job_id=job.id,
            attempt=run.attempt,
            desired=desired,
            argv=[*shlex.split(spec.entrypoint), *spec.arguments],
            environment=spec.environment,
            secret_environment=spec.secret_environment,
            node_rank=run.nodes.index(node),
            nodes=len(run.nodes),
            ranks_per_node=max(spec.gpus_per_node, 1),
            master_addr=master,
            master_port=_PORT_BASE + zlib.crc32(str(run.id).encode()) % _PORT_SPAN,
            kill_grace_s=self.config.scheduler.kill_grace_s,
            run_token=self.run_tokens.issue(run.id),
            image=spec.image,
            gpus_per_node=spec.gpus_per_node,
            log_dir=run_log_dir(job.id, run.attempt),
            user=job.user,
        )


# The shell's codes, which the executors use for a rank whose command could not be started
# (hai.executor.die_with_parent, the local executor): the node is fine, the job is not.
_EXIT_MEANINGS = {
    126: " (its command could not be executed; see the rank's log)",
    127: " (its command was not found or could not be started; see the rank's log)",
}


def _grace_s(job: Job) -> float:
    """How long the job may take to checkpoint once asked to suspend (spec field)."""
    return job.spec.suspend_grace_period
