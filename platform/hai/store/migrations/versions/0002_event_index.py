"""Index events by job (``hai_schema_version`` 2 before Alembic): ``hai describe`` reads one
job's events, and without the index it scans the whole log.

Revision ID: 0002
"""

from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_index("ix_events_job_id", "events", ["job_id"])
