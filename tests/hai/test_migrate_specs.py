"""Revision 0005: jobs whose stored spec the stricter submit checks of issue 17 refuse.

A database at 0004 (what an older release left) holds such rows, written as JSON directly;
after the upgrade every job reads back, the unfinished ones among them have failed with the
checks they fail, and the good ones are as they were. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from hai.records import FAILED, QUEUED, RUN_DONE, RUN_RUNNING, SUCCEEDED, SUSPENDED
from hai.spec import JobSpec, spec_from_dict
from hai.store import SqlStore, schema
from hai.store.migrate import alembic_config, migrate

GOOD = JobSpec(name="good", entrypoint="python train.py", arguments=["--lr", "3"]).to_dict()


def _revision() -> ModuleType:
    return ScriptDirectory.from_config(alembic_config()).get_revision("0005").module


def _add_job(conn: sa.Connection, name: str, state: str, spec: Any) -> int:
    return conn.execute(
        sa.insert(schema.jobs).values(
            name=name,
            user="ann",
            group="default",
            priority=-1,
            nodes=1,
            gpus_per_node=8,
            spec=spec,
            state=state,
            created_at=1.0,
            queued_at=1.0,
            restarts=0,
            suspends=0,
            message="as it was",
        )
    ).inserted_primary_key[0]


def _events(store: SqlStore, job_id: int) -> dict[str, str]:
    return {e.kind: e.message for e in store.list_events(job_id=job_id)}


def test_unrunnable_specs_fail_their_jobs_and_every_job_reads_back(store_url: str) -> None:
    engine = sa.create_engine(store_url.replace("postgresql://", "postgresql+psycopg://"))
    assert migrate(engine, target="0004") == "0004"
    quote = {**GOOD, "name": "quote", "entrypoint": "python 'train.py", "nodes": 0}
    nul = {
        **GOOD,
        "name": "nul",
        "environment": {"A": "x\x00y"},
        "secret_environment": {"TOKEN": "hunter2"},
    }
    odd = {"name": "odd", "entrypoint": "true", "port": 99999, "max_run_time": 1e12}
    done = {**GOOD, "name": "done", "gpus_per_node": 5000}
    with engine.begin() as conn:
        good = _add_job(conn, "good", QUEUED, GOOD)
        queued = _add_job(conn, "quote", QUEUED, quote)
        running = _add_job(conn, "nul", "running", nul)
        run = conn.execute(
            sa.insert(schema.runs).values(
                job_id=running,
                attempt=0,
                priority=20,
                nodes=["n0"],
                state=RUN_RUNNING,
                started_at=2.0,
                after_stop="",
                reason="",
                node_exits={},
                acked=False,
            )
        ).inserted_primary_key[0]
        held = _add_job(conn, "odd", SUSPENDED, odd)
        finished = _add_job(conn, "done", SUCCEEDED, done)
        listed = _add_job(conn, "listed", QUEUED, ["not", "a", "mapping"])

    store = SqlStore(store_url)  # upgrades to head
    jobs = {job.id: job for job in store.list_jobs()}  # what `hai ls` and every pass read
    assert sorted(jobs) == [good, queued, running, held, finished, listed]

    assert jobs[good].spec.to_dict() == GOOD and jobs[good].state == QUEUED
    assert jobs[good].message == "as it was" and _events(store, good) == {}

    failed = {queued: ("entrypoint", "nodes"), running: ("environment",)}
    failed |= {held: ("port", "max_run_time"), listed: ("not a mapping",)}
    for job_id, checks in failed.items():
        job = jobs[job_id]
        assert job.state == FAILED and job.finished_at is not None
        assert "\n" not in job.message and all(check in job.message for check in checks)
        assert _events(store, job_id)["finish"] == f"job {job_id} failed: {job.message}"
    assert "no closing quotation" in jobs[queued].message
    assert "A holds a NUL character" in jobs[running].message
    assert jobs[queued].spec.entrypoint == "false" and jobs[queued].spec.nodes == 1
    assert jobs[queued].spec.arguments == GOOD["arguments"]  # what reads back is kept
    assert jobs[running].spec.environment == {}
    assert jobs[running].spec.secret_environment == {"TOKEN": "hunter2"}
    assert jobs[held].spec.max_run_time is None
    assert jobs[listed].spec.name == "listed"
    [ended] = store.list_runs(job_id=running)
    assert ended.id == run and ended.state == RUN_DONE and ended.ended_at is not None

    # The spec as stored is in the event, but never a secret value.
    event = _events(store, running)["spec"]
    assert "hunter2" not in event
    kept = json.loads(event.split("as stored before: ", 1)[1])
    assert kept == {**nul, "secret_environment": {"TOKEN": "***"}}
    kept = json.loads(_events(store, queued)["spec"].split("as stored before: ", 1)[1])
    assert kept == quote

    # A finished job keeps its state and message; its spec reads back all the same.
    assert jobs[finished].state == SUCCEEDED and jobs[finished].message == "as it was"
    assert jobs[finished].spec.gpus_per_node == 8
    assert "gpus_per_node" in _events(store, finished)["spec"]
    assert "finish" not in _events(store, finished)
    store.close()
    engine.dispose()


# Values the checks of issue 17 refuse, or that no release should have stored, per field.
BAD = [
    ("name", "has space"),
    ("name", 5),
    ("entrypoint", ""),
    ("entrypoint", "  "),
    ("entrypoint", '"" x'),
    ("entrypoint", "a\\"),
    ("entrypoint", "a\x00b"),
    ("entrypoint", ["python"]),
    ("arguments", ["a\x00"]),
    ("arguments", "--lr 3"),
    ("arguments", [3]),
    ("environment", {"1A": "x"}),
    ("environment", {"A": 1}),
    ("environment", []),
    ("secret_environment", {"A": "x\x00"}),
    ("image", 5),
    ("nodes", 0),
    ("nodes", 100_001),
    ("nodes", 2.0),
    ("nodes", True),
    ("gpus_per_node", -1),
    ("gpus_per_node", 1025),
    ("priority", 15),
    ("priority", True),
    ("group", ""),
    ("max_run_time", 0),
    ("max_run_time", float("inf")),
    ("max_run_time", float("nan")),
    ("max_run_time", "60"),
    ("restart_policy", "always"),
    ("max_restarts", 1_000_001),
    ("suspend_grace_period", -1.0),
    ("suspend_grace_period", None),
    ("port", 99999),
]


@pytest.mark.parametrize(("field", "value"), BAD)
def test_every_refused_value_is_named_and_replaced_by_one_that_reads_back(
    field: str, value: Any
) -> None:
    stored = {**GOOD, field: value}
    spec, problems = _revision().readable(7, "good", stored)
    assert [line.split(":")[0] for line in problems] == [field]
    # The revision's frozen checks may be stricter than hai.spec's, never looser.
    assert spec_from_dict(spec).to_dict() == spec
    others = {k: v for k, v in GOOD.items() if k != field}
    assert {k: v for k, v in spec.items() if k != field} == others


def test_a_variable_both_plain_and_secret_keeps_the_plain_one() -> None:
    stored = {**GOOD, "environment": {"A": "1"}, "secret_environment": {"A": "2", "B": "3"}}
    spec, problems = _revision().readable(7, "good", stored)
    assert problems == ["environment and secret_environment both set A"]
    assert spec_from_dict(spec).environment == {"A": "1"}


@pytest.mark.parametrize(
    "spec",
    [
        GOOD,
        {"name": "minimal", "entrypoint": "true"},
        JobSpec(
            name="full",
            entrypoint="/opt/my tools/run 'a b'",
            environment={"OMP_NUM_THREADS": "4"},
            secret_environment={"KEY": "v"},
            image="img:1",
            nodes=100_000,
            gpus_per_node=0,
            priority=50,
            group="g",
            max_run_time=10.0**9,
            restart_policy="on_failure",
            max_restarts=0,
            suspend_grace_period=0.5,
        ).to_dict(),
    ],
)
def test_a_spec_that_passes_today_is_left_as_stored(spec: dict[str, Any]) -> None:
    assert _revision().readable(7, "good", spec) == (spec, [])
