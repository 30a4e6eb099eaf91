"""The scheduler mechanism against a simulated clock and scripted agent reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from hai.config import load_config
from hai.errors import AuthError, ConfigError, ForbiddenError, NotFoundError, QuotaError, StateError
from hai.protocol import (
    DESIRED_RUN,
    DESIRED_STOP,
    DESIRED_SUSPEND,
    Heartbeat,
    NodeInfo,
    RunReport,
    rank_log,
)
from hai.records import ROLE_ADMIN, Quota, User
from hai.scheduler import Scheduler
from hai.service import Service
from hai.spec import spec_from_dict
from hai.store import SqlStore, StateStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(store: StateStore, state_dir: Path):  # type: ignore[no-untyped-def]
    clock = Clock()
    config = load_config(
        env={}, overrides={"policy": {"min_run_s": 0}, "scheduler": {"node_lease_s": 10}}
    )
    sched = Scheduler(store, config, clock)
    for i in range(2):
        sched.register(NodeInfo(f"n{i}", f"agent{i}", gpus=8))
    store.set_quota(Quota("ann", "default", 50, 2))
    return sched, Service(sched, state_dir), clock


ANN, BOB, ADMIN = User("ann"), User("bob"), User("root", ROLE_ADMIN)


def spec(**kw: object):  # type: ignore[no-untyped-def]
    return spec_from_dict({"name": "j", "entrypoint": "python train.py", **kw})


def beat(sched: Scheduler, node: str, *reports: RunReport):  # type: ignore[no-untyped-def]
    return {
        a.run_id: a
        for a in sched.heartbeat(Heartbeat(node, f"agent{node[1:]}", list(reports))).assignments
    }


def test_preempt_suspend_ack_requeue_resume(world) -> None:  # type: ignore[no-untyped-def]
    sched, svc, clock = world
    low = svc.submit(BOB, spec(nodes=2, priority=10))
    sched.tick()
    a0, a1 = beat(sched, "n0"), beat(sched, "n1")
    (run_id,) = a0
    assert a0[run_id].desired == DESIRED_RUN and a1[run_id].node_rank == 1
    assert a0[run_id].argv == ["python", "train.py"] and a0[run_id].ranks_per_node == 8
    high = svc.submit(ANN, spec(nodes=2, priority=50))
    sched.tick()
    assert beat(sched, "n0")[run_id].desired == DESIRED_SUSPEND
    assert svc.describe(BOB, low.id).job.state == "suspending"
    # rank 0's node acknowledges; both nodes are told to stop, then report their exits.
    assert beat(sched, "n0", RunReport(run_id, acked=True))[run_id].desired == DESIRED_STOP
    beat(sched, "n0", RunReport(run_id, exit_code=-15, acked=True))
    beat(sched, "n1", RunReport(run_id, exit_code=-15))
    assert svc.describe(BOB, low.id).job.state == "queued"
    sched.tick()
    assert svc.describe(ANN, high.id).job.state == "running"
    (hrun,) = beat(sched, "n0")
    beat(sched, "n0", RunReport(hrun, exit_code=0))
    beat(sched, "n1", RunReport(hrun, exit_code=0))
    assert svc.describe(ANN, high.id).job.state == "succeeded"
    sched.tick()
    detail = svc.describe(BOB, low.id)
    assert detail.job.state == "running" and detail.job.suspends == 1
    assert [r.attempt for r in detail.runs] == [0, 1]  # same chain, next run
    assert beat(sched, "n0")[detail.runs[1].id].attempt == 1


def test_run_that_finishes_before_acknowledging_a_suspend_succeeds(world) -> None:  # type: ignore[no-untyped-def]
    sched, svc, clock = world
    low = svc.submit(BOB, spec(nodes=2, priority=10))
    sched.tick()
    (run_id,) = beat(sched, "n0")
    svc.submit(ANN, spec(nodes=2, priority=50))
    sched.tick()
    assert svc.describe(BOB, low.id).job.state == "suspending"
    # The request arrived after the job's last step: its ranks exit 0 and never acknowledge.
    beat(sched, "n1", RunReport(run_id, exit_code=0))
    beat(sched, "n0", RunReport(run_id, exit_code=0))
    detail = svc.describe(BOB, low.id)
    assert detail.job.state == "succeeded" and detail.job.suspends == 0
    sched.tick()
    assert [r.attempt for r in svc.describe(BOB, low.id).runs] == [0]  # not run again


def test_whole_life_state_follows_the_chain_under_its_run_tokens(world) -> None:  # type: ignore[no-untyped-def]
    sched, svc, clock = world
    job = svc.submit(BOB, spec(nodes=2, priority=10))
    sched.tick()
    (first,) = beat(sched, "n0").values()
    token = first.run_token
    assert svc.get_whole_life_state(token) == {}
    svc.set_whole_life_state(token, {"step": 40, "ckpt": "fs3://c/40"})
    # A forged token, a user's token and a token for another run id are all refused.
    for bad in (None, "", "garbage", f"{first.run_id}.{'0' * 64}", f"{first.run_id + 1}.x"):
        with pytest.raises(AuthError):
            svc.get_whole_life_state(bad)
    with pytest.raises(ConfigError, match="dict"):
        svc.set_whole_life_state(token, [1, 2])
    with pytest.raises(ConfigError, match="limit"):
        svc.set_whole_life_state(token, {"blob": "x" * (70 << 10)})
    assert svc.get_whole_life_state(token) == {"step": 40, "ckpt": "fs3://c/40"}
    # Suspend, requeue, resume: the next run of the chain reads what the first stored,
    # and a restarted server (a new Scheduler on the same store) accepts its token.
    svc.suspend(BOB, job.id)
    beat(sched, "n0", RunReport(first.run_id, exit_code=-15, acked=True))
    beat(sched, "n1", RunReport(first.run_id, exit_code=-15))
    with pytest.raises(StateError, match="over"):
        svc.get_whole_life_state(token)
    svc.resume(BOB, job.id)
    sched.tick()
    (second,) = beat(sched, "n0").values()
    assert second.attempt == 1 and second.run_token != token
    restarted = Service(Scheduler(sched.store, sched.config, clock), svc.state_dir)
    assert restarted.get_whole_life_state(second.run_token) == {"step": 40, "ckpt": "fs3://c/40"}


def test_grace_period_expiry_forces_stop(world) -> None:  # type: ignore[no-untyped-def]
    sched, svc, clock = world
    svc.submit(BOB, spec(nodes=2, priority=10, suspend_grace_period=3))
    sched.tick()
    (run_id,) = beat(sched, "n0")
    svc.submit(ANN, spec(nodes=2, priority=50))
    sched.tick()
    clock.now += 4
    beat(sched, "n1")
    sched.tick()
    assert beat(sched, "n0")[run_id].desired == DESIRED_STOP
    assert any("grace" in e.message for e in svc.describe(BOB, 1).events)


def test_dead_node_requeues_its_jobs(world) -> None:  # type: ignore[no-untyped-def]
    sched, svc, clock = world
    job = svc.submit(BOB, spec(nodes=2, priority=10))
    sched.tick()
    (run_id,) = beat(sched, "n0")
    clock.now += 11
    beat(sched, "n0")  # n1 stays silent
    sched.tick()
    assert {n.name: n.state for n in svc.nodes(BOB)} == {"n0": "ready", "n1": "dead"}
    assert beat(sched, "n0")[run_id].desired == DESIRED_STOP
    beat(sched, "n0", RunReport(run_id, exit_code=-15))
    assert svc.describe(BOB, job.id).job.state == "queued"


def test_failure_restart_policy(world) -> None:  # type: ignore[no-untyped-def]
    sched, svc, clock = world
    job = svc.submit(BOB, spec(restart_policy="on_failure", max_restarts=1, priority=10))
    for expected in ("queued", "failed"):
        sched.tick()
        (run_id,) = beat(sched, "n1") or beat(sched, "n0")
        for node in ("n0", "n1"):
            beat(sched, node, RunReport(run_id, exit_code=3))
        assert svc.describe(BOB, job.id).job.state == expected


def test_a_stored_spec_without_max_restarts_restarts_as_often_as_jobspec_says(world) -> None:  # type: ignore[no-untyped-def]
    """The spec's defaults live in JobSpec alone: a stored spec that omits a field (written
    by hand or by an older release) gets JobSpec's default, here 3 restarts, not the
    scheduler's own idea of it."""
    sched, svc, clock = world
    job = svc.submit(BOB, spec(restart_policy="on_failure", priority=10))
    partial = {"name": "j", "entrypoint": "python train.py", "restart_policy": "on_failure"}
    sched.store.update_job(job.id, spec=partial)
    assert sched.store.get_job(job.id).spec.max_restarts == 3
    for expected in ("queued", "queued", "queued", "failed"):
        sched.tick()
        (run_id,) = beat(sched, "n1") or beat(sched, "n0")
        beat(sched, "n0", RunReport(run_id, exit_code=3))
        beat(sched, "n1", RunReport(run_id, exit_code=3))
        assert svc.describe(BOB, job.id).job.state == expected
    assert svc.describe(BOB, job.id).job.restarts == 3


def test_an_assignment_carries_what_the_agent_launches_with(world) -> None:  # type: ignore[no-untyped-def]
    """Image, GPUs and the log folder come with the assignment (no agent asks the server),
    and the server serves ``hai logs`` from the folder it named."""
    sched, svc, clock = world
    job = svc.submit(BOB, spec(image="train:1", gpus_per_node=4, priority=10))
    sched.tick()
    (a,) = (beat(sched, "n0") or beat(sched, "n1")).values()
    assert (a.image, a.gpus_per_node, a.ranks_per_node) == ("train:1", 4, 4)
    log = rank_log(svc.state_dir, a.log_dir, 3)
    log.parent.mkdir(parents=True)
    log.write_text("step 1\n")
    assert svc.logs(BOB, job.id, 3, 0, None).text == "step 1\n"


def test_permissions_and_quotas(world) -> None:  # type: ignore[no-untyped-def]
    sched, svc, clock = world
    job = svc.submit(ANN, spec(priority=10))
    with pytest.raises(ForbiddenError):
        svc.stop(BOB, job.id)
    with pytest.raises(PermissionError):
        svc.drain(BOB, "n0", True)
    assert svc.stop(ADMIN, job.id).state == "stopped"
    with pytest.raises(QuotaError):
        svc.submit(BOB, spec(priority=50))
    with pytest.raises(QuotaError):
        svc.submit(ANN, spec(priority=50, nodes=3))
    with pytest.raises(NotFoundError):
        svc.describe(ANN, 999).job  # noqa: B018


def test_drained_node_gets_no_new_work_and_suspend_resume(world) -> None:  # type: ignore[no-untyped-def]
    sched, svc, clock = world
    svc.drain(ADMIN, "n1", True)
    job = svc.submit(BOB, spec(nodes=2, priority=10))
    sched.tick()
    assert "schedulable" in svc.describe(BOB, job.id).job.message
    svc.drain(ADMIN, "n1", False)
    sched.tick()
    (run_id,) = beat(sched, "n0")
    svc.suspend(BOB, job.id)
    beat(sched, "n0", RunReport(run_id, exit_code=0, acked=True))
    beat(sched, "n1", RunReport(run_id, exit_code=0))
    assert svc.describe(BOB, job.id).job.state == "suspended"
    sched.tick()
    assert svc.describe(BOB, job.id).job.state == "suspended"
    svc.resume(BOB, job.id)
    sched.tick()
    assert svc.describe(BOB, job.id).job.state == "running"


def test_restart_recovers_from_store(world, store_url: str, state_dir: Path) -> None:  # type: ignore[no-untyped-def]
    sched, svc, clock = world
    job = svc.submit(BOB, spec(nodes=2, priority=10))
    sched.tick()
    (run_id,) = beat(sched, "n0")
    again = Scheduler(SqlStore(store_url), sched.config, clock)  # a restarted server
    again.tick()
    assert list(beat(again, "n0")) == [run_id]  # same run, nothing doubled
    assert len(again.store.list_runs(job_id=job.id)) == 1


def test_above_normal_run_ages_into_a_normal_victim(world) -> None:  # type: ignore[no-untyped-def]
    sched, svc, clock = world
    svc.submit(BOB, spec(nodes=2, priority=20))
    sched.tick()
    (run_id,) = beat(sched, "n0")
    started = clock.now
    svc.submit(ANN, spec(nodes=2, priority=20))
    for minutes, desired in ((29, DESIRED_RUN), (30, DESIRED_SUSPEND)):
        clock.now = started + minutes * 60
        beat(sched, "n1")  # keep both nodes' leases alive across the jump
        beat(sched, "n0")
        sched.tick()
        assert beat(sched, "n0")[run_id].desired == desired, f"after {minutes} minutes"


@pytest.mark.parametrize("where", ["environment", "secret_environment"])
@pytest.mark.parametrize("name", ["HAI_K8S_NAMESPACE", "HAI_K8S_OWNER"])
def test_only_admins_say_where_a_jobs_pods_go(world, where: str, name: str) -> None:  # type: ignore[no-untyped-def]
    """The operator (an admin) sets these for a HaiJob's pods; a user setting them would put
    pods in another namespace or under another user's HaiJob."""
    _, svc, _ = world
    placed = spec(**{where: {name: "kube-system"}})
    with pytest.raises(ForbiddenError, match=f"setting {name} .* needs the admin role; 'ann'"):
        svc.submit(ANN, placed)
    assert svc.list_jobs(ADMIN, all_states=True) == []
    assert svc.submit(ADMIN, placed).state == "queued"
