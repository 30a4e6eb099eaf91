"""The state store's tables as the code reads and writes them.

The database gets them from the Alembic revisions in ``hai.store.migrations``
(:func:`hai.store.migrate.migrate`); a change here needs a new revision there, and the
store tests check that a migrated database and these tables agree.
"""

from __future__ import annotations

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
    # `hai describe` reads one job's events; without this it scans the whole log.
    sa.Index("ix_events_job_id", "job_id"),
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

node_credentials = sa.Table(
    "node_credentials",
    metadata,
    # No foreign key to nodes: a credential is issued (`hai nodes add`) before its agent
    # first registers the node.
    sa.Column("node", sa.String(128), primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("issued_at", sa.Float, nullable=False),
)
