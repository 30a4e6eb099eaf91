"""hai's schema migrations (Alembic): databases from every earlier release upgrade in place
with their rows, a migrated database matches the tables the code uses, and a database newer
than the code is refused with one line. Each runs on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from hai.errors import SchemaError
from hai.records import Event, Job, Node, Quota, Run, User
from hai.store import SqlStore, schema
from hai.store.migrate import head, migrate, schema_revision

# What the releases before Alembic created, statement by statement, for each
# hai_schema_version (as SQLAlchemy emitted it then; {serial} is the autoincrementing
# integer: INTEGER on SQLite, SERIAL on PostgreSQL).
LEGACY_DDL = {
    1: [
        "CREATE TABLE users (name VARCHAR(64) NOT NULL, role VARCHAR(16) NOT NULL, "
        "token_hash VARCHAR(64) NOT NULL, PRIMARY KEY (name), UNIQUE (token_hash))",
        'CREATE TABLE jobs (id {serial} NOT NULL, name VARCHAR(64) NOT NULL, "user" '
        'VARCHAR(64) NOT NULL, "group" VARCHAR(64) NOT NULL, priority INTEGER NOT NULL, '
        "nodes INTEGER NOT NULL, gpus_per_node INTEGER NOT NULL, spec JSON NOT NULL, "
        "state VARCHAR(16) NOT NULL, created_at FLOAT NOT NULL, queued_at FLOAT NOT NULL, "
        "started_at FLOAT, finished_at FLOAT, exit_code INTEGER, restarts INTEGER NOT NULL, "
        "suspends INTEGER NOT NULL, message TEXT NOT NULL, PRIMARY KEY (id))",
        "CREATE INDEX ix_jobs_state ON jobs (state)",
        "CREATE TABLE runs (id {serial} NOT NULL, job_id INTEGER NOT NULL, attempt INTEGER "
        "NOT NULL, priority INTEGER NOT NULL, nodes JSON NOT NULL, state VARCHAR(16) NOT "
        "NULL, started_at FLOAT NOT NULL, ended_at FLOAT, exit_code INTEGER, after_stop "
        "VARCHAR(16) NOT NULL, reason TEXT NOT NULL, suspend_deadline FLOAT, kill_at FLOAT, "
        "preempted_for INTEGER, node_exits JSON NOT NULL, acked BOOLEAN NOT NULL, "
        "PRIMARY KEY (id), FOREIGN KEY(job_id) REFERENCES jobs (id))",
        "CREATE INDEX ix_runs_job_id ON runs (job_id)",
        'CREATE TABLE nodes (name VARCHAR(128) NOT NULL, "group" VARCHAR(64) NOT NULL, '
        "gpus INTEGER NOT NULL, cpus INTEGER NOT NULL, memory_bytes BIGINT NOT NULL, "
        "state VARCHAR(16) NOT NULL, address VARCHAR(256) NOT NULL, heartbeat_at FLOAT NOT "
        "NULL, agent_id VARCHAR(64) NOT NULL, message TEXT NOT NULL, PRIMARY KEY (name))",
        "CREATE TABLE events (id {serial} NOT NULL, time FLOAT NOT NULL, kind VARCHAR(32) "
        "NOT NULL, message TEXT NOT NULL, job_id INTEGER, node VARCHAR(128), "
        "PRIMARY KEY (id))",
        'CREATE TABLE quotas ("user" VARCHAR(64) NOT NULL, "group" VARCHAR(64) NOT NULL, '
        'priority INTEGER NOT NULL, nodes INTEGER NOT NULL, PRIMARY KEY ("user", "group", '
        "priority))",
    ],
    2: ["CREATE INDEX ix_events_job_id ON events (job_id)"],
    3: [
        "CREATE TABLE chain_state (job_id INTEGER NOT NULL, state TEXT NOT NULL, run_id "
        "INTEGER NOT NULL, updated_at FLOAT NOT NULL, PRIMARY KEY (job_id), "
        "FOREIGN KEY(job_id) REFERENCES jobs (id))",
        "CREATE TABLE settings (name VARCHAR(64) NOT NULL, value TEXT NOT NULL, "
        "PRIMARY KEY (name))",
    ],
}


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))


def _legacy_database(engine: sa.Engine, version: int) -> None:
    """A database as a release before Alembic left it at ``version``, with a row in each of
    the first version's tables."""
    serial = "SERIAL" if engine.dialect.name == "postgresql" else "INTEGER"
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE hai_schema_version (version INTEGER NOT NULL, PRIMARY KEY (version))"
        )
        for step in range(1, version + 1):
            for statement in LEGACY_DDL[step]:
                conn.exec_driver_sql(statement.replace("{serial}", serial))
            conn.execute(sa.text("INSERT INTO hai_schema_version VALUES (:v)"), {"v": step})
        conn.execute(sa.insert(schema.users).values(name="ann", role="admin", token_hash="h"))
        conn.execute(
            sa.insert(schema.jobs).values(
                name="j",
                user="ann",
                group="default",
                priority=20,
                nodes=2,
                gpus_per_node=8,
                spec={"name": "j", "entrypoint": "true"},
                state="running",
                created_at=1.0,
                queued_at=1.0,
                restarts=0,
                suspends=0,
                message="",
            )
        )
        conn.execute(
            sa.insert(schema.runs).values(
                job_id=1,
                attempt=0,
                priority=20,
                nodes=["n0", "n1"],
                state="running",
                started_at=2.0,
                after_stop="queue",
                reason="",
                node_exits={},
                acked=True,
            )
        )
        conn.execute(
            sa.insert(schema.nodes).values(
                name="n0",
                group="default",
                gpus=8,
                cpus=64,
                memory_bytes=2**40,
                state="ready",
                address="10.0.0.1:7000",
                heartbeat_at=3.0,
                agent_id="a",
                message="",
            )
        )
        conn.execute(sa.insert(schema.events).values(time=4.0, kind="start", message="m", job_id=1))
        conn.execute(
            sa.insert(schema.quotas).values(user="ann", group="default", priority=20, nodes=4)
        )


def _differences(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), schema.metadata)


@pytest.mark.parametrize("version", sorted(LEGACY_DDL))
def test_a_database_from_before_alembic_upgrades_with_its_rows(
    store_url: str, version: int
) -> None:
    engine = _engine(store_url)
    _legacy_database(engine, version)

    store = SqlStore(store_url)
    assert store.list_users() == [User("ann", "admin")]
    [job] = store.list_jobs()
    assert isinstance(job, Job) and (job.name, job.user, job.gpus_per_node) == ("j", "ann", 8)
    [run] = store.list_runs(job_id=job.id)
    assert isinstance(run, Run) and run.nodes == ["n0", "n1"] and run.acked is True
    assert store.get_node("n0") == Node(
        "n0", "default", 8, 64, 2**40, "ready", "10.0.0.1:7000", 3.0, "a", ""
    )
    assert [e.kind for e in store.list_events(job_id=job.id)] == ["start"]
    assert isinstance(store.list_events()[0], Event)
    assert store.list_quotas() == [Quota("ann", "default", 20, 4)]
    # The tables of later versions work, and new rows follow the old ones.
    store.set_chain_state(job.id, run.id, '{"step": 7}', 5.0)
    assert store.get_chain_state(job.id) == '{"step": 7}'
    assert store.add_job(job) == job.id + 1
    store.close()

    assert schema_revision(engine) == head()
    assert not sa.inspect(engine).has_table("hai_schema_version")  # Alembic's is the record
    assert _differences(engine) == []
    with engine.connect() as conn:
        spec = conn.execute(sa.select(schema.jobs.c.spec)).scalars().first()
    assert spec == {"name": "j", "entrypoint": "true"}
    engine.dispose()


def test_a_new_database_matches_the_tables_the_code_uses(store_url: str) -> None:
    SqlStore(store_url).close()
    engine = _engine(store_url)
    assert schema_revision(engine) == head()
    assert _differences(engine) == []
    engine.dispose()


def test_migrations_upgrade_in_place(store_url: str) -> None:
    engine = _engine(store_url)
    assert migrate(engine, target="0001") == "0001"
    assert "ix_events_job_id" not in {i["name"] for i in sa.inspect(engine).get_indexes("events")}
    assert _differences(engine) != []  # the check below can fail
    store = SqlStore(store_url)  # opening upgrades to the latest revision
    assert schema_revision(engine) == head()
    assert "ix_events_job_id" in {i["name"] for i in sa.inspect(engine).get_indexes("events")}
    assert migrate(engine) == head()  # idempotent
    store.close()
    engine.dispose()


def test_a_database_newer_than_the_code_is_refused_in_one_line(store_url: str) -> None:
    SqlStore(store_url).close()
    engine = _engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00d'"))
    with pytest.raises(SchemaError, match="revision 'f00d'.*newer hai made it") as caught:
        SqlStore(store_url)
    assert "\n" not in str(caught.value)
    engine.dispose()


def test_a_legacy_version_newer_than_the_code_is_refused(store_url: str) -> None:
    engine = _engine(store_url)
    _legacy_database(engine, 3)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO hai_schema_version VALUES (4)"))
    with pytest.raises(SchemaError, match="revision 4, which this hai"):
        SqlStore(store_url)
    assert sa.inspect(engine).has_table("hai_schema_version")  # left as it was
    engine.dispose()
