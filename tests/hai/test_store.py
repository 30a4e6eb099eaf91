"""The StateStore conformance suite; the ``store`` fixture runs it on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from hai.errors import NotFoundError, StateError
from hai.records import (
    RUN_DONE,
    RUN_RUNNING,
    RUNNING,
    Event,
    Job,
    Node,
    Quota,
    Run,
    User,
)
from hai.spec import JobSpec
from hai.store import SqlStore, StateStore


def _job(**kw: object) -> Job:
    fields = dict(
        id=0,
        name="j",
        user="ann",
        group="default",
        priority=20,
        nodes=2,
        gpus_per_node=8,
        spec=JobSpec("j", "true"),
        created_at=1.0,
        queued_at=1.0,
    )
    fields.update(kw)
    return Job(**fields)  # type: ignore[arg-type]


def test_jobs_roundtrip_and_filter(store: StateStore) -> None:
    a = store.add_job(_job())
    b = store.add_job(_job(user="bob", state=RUNNING))
    assert b > a
    got = store.get_job(a)
    assert got.spec == JobSpec("j", "true") and got.user == "ann"
    assert [j.id for j in store.list_jobs(states=(RUNNING,))] == [b]
    assert [j.id for j in store.list_jobs(user="ann")] == [a]
    store.update_job(a, state=RUNNING, started_at=5.0, message="go")
    assert store.get_job(a).started_at == 5.0
    for missing in (999, 2**63, -(10**30)):  # beyond a 64-bit INTEGER: still not found
        with pytest.raises(NotFoundError, match=f"no job {missing}"):
            store.get_job(missing)
    with pytest.raises(NotFoundError):
        store.update_job(999, state=RUNNING)


def test_runs_chain(store: StateStore) -> None:
    job = store.add_job(_job())
    r1 = store.add_run(Run(id=0, job_id=job, attempt=0, priority=20, nodes=["n1", "n2"]))
    store.update_run(r1, state=RUN_DONE, node_exits={"n1": 0, "n2": 0}, acked=True)
    r2 = store.add_run(Run(id=0, job_id=job, attempt=1, priority=20, nodes=["n3"]))
    runs = store.list_runs(job_id=job)
    assert [r.id for r in runs] == [r1, r2]
    assert runs[0].node_exits == {"n1": 0, "n2": 0} and runs[0].acked
    assert [r.id for r in store.live_runs()] == [r2]
    assert store.get_run(r2).nodes == ["n3"] and store.get_run(r2).state == RUN_RUNNING


def test_nodes(store: StateStore) -> None:
    store.put_node(Node(name="b", gpus=8, memory_bytes=1 << 40))
    store.put_node(Node(name="a"))
    store.put_node(Node(name="b", gpus=4))
    assert [n.name for n in store.list_nodes()] == ["a", "b"]
    assert store.get_node("b").gpus == 4
    store.update_node("a", state="drained")
    assert store.get_node("a").state == "drained"
    with pytest.raises(NotFoundError):
        store.get_node("zz")


def test_users_events_quotas(store: StateStore) -> None:
    store.add_user(User("ann", "admin"), "h1")
    with pytest.raises(StateError):
        store.add_user(User("ann"), "h2")
    assert store.user_by_token_hash("h1") == User("ann", "admin")
    assert store.user_by_token_hash("nope") is None
    for i in range(5):
        store.add_event(Event(time=float(i), kind="k", message=str(i), job_id=i % 2))
    assert [e.message for e in store.list_events(limit=2)] == ["3", "4"]
    assert [e.message for e in store.list_events(job_id=1)] == ["1", "3"]
    store.set_quota(Quota("ann", "default", 50, 2))
    store.set_quota(Quota("ann", "default", 50, 4))
    assert store.list_quotas() == [Quota("ann", "default", 50, 4)]


def test_transaction_rolls_back_together(store: StateStore) -> None:
    job = store.add_job(_job())
    with pytest.raises(RuntimeError), store.transaction():
        store.update_job(job, state=RUNNING)
        store.add_run(Run(id=0, job_id=job, attempt=0, priority=20, nodes=["n"]))
        raise RuntimeError("crash between the two writes")
    assert store.get_job(job).state != RUNNING
    assert store.list_runs(job_id=job) == []


def test_chain_state_replaces_and_settings_keep_the_first_value(store: StateStore) -> None:
    job = store.add_job(_job())
    assert store.get_chain_state(job) is None
    store.set_chain_state(job, 1, '{"step": 1}', 5.0)
    store.set_chain_state(job, 2, '{"step": 9}', 6.0)
    assert store.get_chain_state(job) == '{"step": 9}'
    assert store.setting_once("secret", "a") == "a"
    assert store.setting_once("secret", "b") == "a"  # a second server keeps the first


def test_reopen_keeps_state(store_url: str) -> None:
    first = SqlStore(store_url)
    job = first.add_job(_job())
    first.close()
    second = SqlStore(store_url)
    assert second.get_job(job).name == "j"
    second.close()


def test_user_tokens_rotate_and_users_go(store: StateStore) -> None:
    store.add_user(User("ann", "admin"), "old")
    store.set_user_token_hash("ann", "new")
    assert store.user_by_token_hash("old") is None
    assert store.user_by_token_hash("new") == User("ann", "admin")
    store.remove_user("ann")
    assert store.list_users() == [] and store.user_by_token_hash("new") is None
    for missing in (lambda: store.remove_user("ann"), lambda: store.set_user_token_hash("x", "h")):
        with pytest.raises(NotFoundError):
            missing()


def test_node_credentials_replace_and_revoke(store: StateStore) -> None:
    assert store.set_node_credential("n1", "first", 1.0) is False
    assert store.set_node_credential("n2", "other", 1.0) is False
    assert store.node_by_credential_hash("first") == "n1"
    assert store.set_node_credential("n1", "second", 2.0) is True  # re-issued
    assert store.node_by_credential_hash("first") is None
    assert store.node_by_credential_hash("second") == "n1"
    assert store.remove_node_credential("n1") is True
    assert store.remove_node_credential("n1") is False
    assert store.node_by_credential_hash("second") is None
    assert store.node_by_credential_hash("other") == "n2"


def test_nodes_are_removed(store: StateStore) -> None:
    store.put_node(Node(name="a"))
    store.remove_node("a")
    assert store.list_nodes() == []
    with pytest.raises(NotFoundError):
        store.remove_node("a")
