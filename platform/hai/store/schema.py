"""The state store's tables and the versioned migrations that build them.

The database records its schema version in ``hai_schema_version``; :func:`migrate` applies
every step above it, in order, in one transaction, so a store made by an older
release upgrades in place. Steps are never edited once released: a change is a new step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("user", sa.String(64), nullable=False),
    sa.Column("group", sa.String(64), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("nodes", sa.Integer, nullable=False),
    sa.Column("gpus_per_node", sa.Integer, nullable=False),
    sa.Column("spec", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("queued_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("exit_code", sa.Integer),
    sa.Column("restarts", sa.Integer, nullable=False),
    sa.Column("suspends", sa.Integer, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), nullable=False, index=True),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("nodes", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("exit_code", sa.Integer),
    sa.Column("after_stop", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("suspend_deadline", sa.Float),
    sa.Column("kill_at", sa.Float),
    sa.Column("preempted_for", sa.Integer),
    sa.Column("node_exits", sa.JSON, nullable=False),
    sa.Column("acked", sa.Boolean, nullable=False),
)

nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("group", sa.String(64), nullable=False),
    sa.Column("gpus", sa.Integer, nullable=False),
    sa.Column("cpus", sa.Integer, nullable=False),
    sa.Column("memory_bytes", sa.BigInteger, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("address", sa.String(256), nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
    sa.Column("agent_id", sa.String(64), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("time", sa.Float, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("job_id", sa.Integer),
    sa.Column("node", sa.String(128)),
)

quotas = sa.Table(
    "quotas",
    metadata,
    sa.Column("user", sa.String(64), primary_key=True),
    sa.Column("group", sa.String(64), primary_key=True),
    sa.Column("priority", sa.Integer, primary_key=True),
    sa.Column("nodes", sa.Integer, nullable=False),
)

chain_state = sa.Table(
    "chain_state",
    metadata,
    sa.Column("job_id", sa.Integer, sa.ForeignKey("jobs.id"), primary_key=True),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("run_id", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

settings = sa.Table(
    "settings",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

_version = sa.Table(
    "hai_schema_version",
    sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True),
)


def _v1_tables(conn: sa.Connection) -> None:
    # v1 is the tables above without the indexes v2 adds.
    for table in (users, jobs, runs, nodes, events, quotas):
        table.create(conn, checkfirst=False)


def _v2_event_index(conn: sa.Connection) -> None:
    # `hai describe` reads one job's events; without this it scans the whole log.
    conn.execute(sa.text("CREATE INDEX ix_events_job_id ON events (job_id)"))


def _v3_chain_state(conn: sa.Connection) -> None:
    # Whole-life state moved from a file in the local state folder into the store, so a
    # chain's runs find it whichever hosts they land on; settings holds the server's
    # secret for the tokens runs call back with.
    for table in (chain_state, settings):
        table.create(conn, checkfirst=False)


MIGRATIONS: list[tuple[int, str, Callable[[sa.Connection], None]]] = [
    (1, "users, jobs, runs, nodes, events, quotas", _v1_tables),
    (2, "index events by job", _v2_event_index),
    (3, "whole-life state per chain, server settings", _v3_chain_state),
]
LATEST = MIGRATIONS[-1][0]


def schema_version(engine: sa.Engine) -> int:
    """The version the database is at; 0 for an empty database."""
    with engine.connect() as conn:
        return _version_in(conn)


def _version_in(conn: sa.Connection) -> int:
    if not sa.inspect(conn).has_table(_version.name):
        return 0
    return conn.execute(sa.select(sa.func.max(_version.c.version))).scalar() or 0


_MIGRATION_LOCK = 0x4A1_5C7E
"""PostgreSQL advisory lock key that serialises servers migrating one database."""


@contextmanager
def _locked_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction that holds the database's migration lock from its first statement, so
    servers starting together on a new database migrate it once: the others wait, then find
    it current. Python's sqlite3 runs DDL outside any transaction and defers locks, so on
    SQLite we issue ``BEGIN IMMEDIATE`` ourselves (SQLite's DDL is transactional)."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
                )
            yield conn
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.exec_driver_sql("ROLLBACK")
            raise
        conn.exec_driver_sql("COMMIT")


def migrate(engine: sa.Engine, target: int = LATEST) -> int:
    """Applies the migration steps between the database's version and ``target``, all in
    one transaction under the migration lock.

    Returns the version reached. Safe to run on every start, also from several processes at
    once: a current database is untouched.
    """
    with _locked_transaction(engine) as conn:
        current = _version_in(conn)
        for version, _, step in MIGRATIONS:
            if current < version <= target:
                _version.create(conn, checkfirst=True)
                step(conn)
                conn.execute(sa.insert(_version).values(version=version))
                current = version
    return current
