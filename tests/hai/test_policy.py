"""The scheduling policy as a pure function: gangs, order, quotas, victims, anti-starvation."""

from __future__ import annotations

from hai.config import PolicyConfig
from hai.policy import NodeView, PendingView, RunningView, schedule
from hai.spec import AUTO


def nodes(n: int, group: str = "default", down: tuple[int, ...] = ()) -> list[NodeView]:
    return [NodeView(f"{group}-{i}", group, schedulable=i not in down) for i in range(n)]


def job(
    id: int, n: int, prio: int = 20, user: str = "ann", t: float = 0.0, group: str = "default"
) -> PendingView:
    return PendingView(id, user, group, prio, n, queued_at=t)


def run(
    id: int, names: list[str], prio: int = 10, user: str = "bob", started: float = 0.0, **kw: object
) -> RunningView:
    return RunningView(id, user, "default", prio, names, started_at=started, **kw)  # type: ignore[arg-type]


CFG = PolicyConfig(default_quotas={50: None, 40: None, 30: None, 20: None, 10: None})


def test_gang_never_partial() -> None:
    busy = [run(9, ["default-0"], prio=50)]
    d = schedule(nodes(4), [job(1, 4), job(2, 2)], busy, {}, 0.0, CFG)
    assert [s.job_id for s in d.starts] == [2]
    assert "1 more free nodes" in d.waiting[1]
    assert "has 3 schedulable" in schedule(nodes(3), [job(1, 4)], [], {}, 0.0, CFG).waiting[1]
    assert all(len(s.nodes) == 2 for s in d.starts)


def test_priority_then_fifo() -> None:
    pending = [job(1, 1, 10, t=0), job(2, 1, 30, t=5), job(3, 1, 30, t=3), job(4, 1, 20, t=1)]
    d = schedule(nodes(2), pending, [], {}, 10.0, CFG)
    assert [s.job_id for s in d.starts] == [3, 2]
    fifo = PolicyConfig(order="fifo", preemption=False, default_quotas=CFG.default_quotas)
    d = schedule(nodes(2), pending, [], {}, 10.0, fifo)
    assert [s.job_id for s in d.starts] == [1, 4]


def test_started_nodes_are_disjoint_and_free() -> None:
    running = [run(9, ["default-0", "default-1"], prio=50)]
    d = schedule(nodes(6), [job(1, 2), job(2, 2), job(3, 2)], running, {}, 0.0, CFG)
    used = [n for s in d.starts for n in s.nodes]
    assert len(used) == len(set(used)) == 4
    assert not {"default-0", "default-1"} & set(used)


def test_quota_per_user_group_level() -> None:
    quotas = {("ann", "default", 20): 2}
    d = schedule(nodes(8), [job(1, 2), job(2, 1), job(3, 1, user="bob")], [], quotas, 0.0, CFG)
    assert [s.job_id for s in d.starts] == [1, 3]
    assert "over quota" in d.waiting[2]


def test_auto_takes_highest_level_with_quota_left() -> None:
    config = PolicyConfig(default_quotas={50: 0, 40: 0, 30: 2, 20: None, 10: None})
    running = [run(9, ["default-0"], prio=30, user="ann")]
    d = schedule(nodes(8), [job(1, 1, AUTO), job(2, 2, AUTO)], running, {}, 0.0, config)
    assert [(s.job_id, s.priority) for s in d.starts] == [(1, 30), (2, 20)]


def test_preempts_lowest_priority_most_recent_first() -> None:
    running = [
        run(11, ["default-0"], prio=10, started=1.0),
        run(12, ["default-1"], prio=10, started=5.0),
        run(13, ["default-2"], prio=20, started=9.0),
    ]
    d = schedule(nodes(3), [job(1, 1, 50, user="cat")], running, {}, 100.0, CFG)
    assert [(p.job_id, p.for_job, p.time_slice) for p in d.preemptions] == [(12, 1, False)]
    assert d.starts == []


def test_no_preemption_that_cannot_fit_the_gang() -> None:
    running = [run(11, ["default-0"], prio=10), run(12, ["default-1"], prio=50)]
    d = schedule(nodes(2), [job(1, 2, 40)], running, {}, 100.0, CFG)
    assert d.preemptions == []


def test_never_preempts_same_user_same_priority_and_not_higher() -> None:
    running = [run(11, ["default-0"], prio=20, user="ann"), run(12, ["default-1"], prio=30)]
    slicing = PolicyConfig(time_slice_s=10.0, default_quotas=CFG.default_quotas)
    d = schedule(nodes(2), [job(1, 1, 20, user="ann")], running, {}, 100.0, slicing)
    assert d.preemptions == []


def test_time_slicing_same_priority_other_user() -> None:
    running = [run(11, ["default-0"], prio=20, user="bob", started=0.0)]
    slicing = PolicyConfig(time_slice_s=60.0, default_quotas=CFG.default_quotas)
    early = schedule(nodes(1), [job(1, 1, 20, t=30.0)], running, {}, 50.0, slicing)
    assert early.preemptions == []
    late = schedule(nodes(1), [job(1, 1, 20, t=30.0)], running, {}, 100.0, slicing)
    assert [(p.job_id, p.time_slice) for p in late.preemptions] == [(11, True)]
    assert schedule(nodes(1), [job(1, 1, 20, t=30.0)], running, {}, 100.0, CFG).preemptions == []


def test_resumed_job_has_a_minimum_run_slice() -> None:
    config = PolicyConfig(min_run_s=60.0, default_quotas=CFG.default_quotas)
    resumed = [run(11, ["default-0"], prio=10, started=50.0, suspended_before=True)]
    assert schedule(nodes(1), [job(1, 1, 50)], resumed, {}, 100.0, config).preemptions == []
    assert schedule(nodes(1), [job(1, 1, 50)], resumed, {}, 111.0, config).preemptions


def test_nodes_being_freed_are_not_preempted_twice() -> None:
    running = [
        run(11, ["default-0", "default-1"], prio=10, suspending=True, preempted_for=1),
        run(12, ["default-2", "default-3"], prio=10),
    ]
    d = schedule(nodes(4), [job(1, 2, 50)], running, {}, 100.0, CFG)
    assert d.preemptions == [] and d.starts == []
    assert "suspend" in d.waiting[1]


def test_free_nodes_held_for_preempting_job() -> None:
    running = [run(11, ["default-0"], prio=10)]
    d = schedule(nodes(2), [job(1, 2, 50, t=0), job(2, 1, 20, t=1)], running, {}, 100.0, CFG)
    assert [p.job_id for p in d.preemptions] == [11]
    assert d.starts == []  # default-1 is held for job 1, not given to job 2


def test_long_wait_reserves_group_against_backfill() -> None:
    running = [run(11, ["default-0"], prio=50)]
    pending = [job(1, 2, 20, t=0.0), job(2, 1, 10, t=1.0)]
    fresh = schedule(nodes(2), pending, running, {}, 10.0, CFG)
    assert [s.job_id for s in fresh.starts] == [2]  # backfill while the head is young
    starving = schedule(nodes(2), pending, running, {}, 10_000.0, CFG)
    assert starving.starts == [] and "holds" in starving.waiting[2]


def test_drained_nodes_and_groups() -> None:
    all_nodes = nodes(2, down=(0,)) + nodes(2, group="h800")
    pending = [job(1, 2), job(2, 1), job(3, 2, group="h800")]
    d = schedule(all_nodes, pending, [], {}, 0.0, CFG)
    assert {s.job_id: s.nodes for s in d.starts} == {2: ["default-1"], 3: ["h800-0", "h800-1"]}
    assert "has 1 schedulable" in d.waiting[1]


def test_ten_thousand_pending_jobs_one_pass() -> None:
    cluster = nodes(1250)
    pending = [
        job(i, 1 + i % 8, (10, 20, 30, 40, 50)[i % 5], user=f"u{i % 50}", t=float(i))
        for i in range(10_000)
    ]
    d = schedule(cluster, pending, [], {}, 1e6, CFG)
    placed = [n for s in d.starts for n in s.nodes]
    assert len(placed) == len(set(placed)) and len(placed) > 1240
    assert len(d.starts) + len(d.waiting) == 10_000


def test_above_normal_run_is_a_normal_victim_after_thirty_minutes() -> None:
    config = PolicyConfig(default_quotas=CFG.default_quotas)  # demote_after_s = 1800
    running = [run(11, ["default-0"], prio=20, user="bob", started=1000.0)]
    waiting = [job(1, 1, 20, user="ann", t=1000.0)]
    # The fake clock: 29 min 59 s into the run it still holds its level against peers.
    assert schedule(nodes(1), waiting, running, {}, 2799.0, config).preemptions == []
    aged = schedule(nodes(1), waiting, running, {}, 2800.0, config)
    assert [(p.job_id, p.for_job, p.time_slice) for p in aged.preemptions] == [(11, 1, False)]
    # NORMAL work does not preempt it without time-slicing; with aging off nothing changes.
    normal = [job(2, 1, 10, user="ann", t=1000.0)]
    assert schedule(nodes(1), normal, running, {}, 9999.0, config).preemptions == []
    never = PolicyConfig(demote_after_s=None, default_quotas=CFG.default_quotas)
    assert schedule(nodes(1), waiting, running, {}, 9999.0, never).preemptions == []
    assert running[0].priority == 20  # the caller's view is left as it was
