"""Brings a state database's schema up to the code's, with Alembic run from code.

The revisions live in ``hai.store.migrations/versions`` (one file each, never edited once
released: a change is a new revision) and the database records its revision in Alembic's
``alembic_version`` table. Servers call :func:`migrate` on every start, so a store made by
an older release upgrades in place; there is no ``alembic.ini``, the configuration is built
here.

Releases before Alembic recorded an integer in ``hai_schema_version``; such a database is
stamped with the revision that integer stands for, then upgraded like any other.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from hai.errors import SchemaError

MIGRATIONS = Path(__file__).with_name("migrations")

LEGACY_REVISIONS = {1: "0001", 2: "0002", 3: "0003"}
"""The revision each ``hai_schema_version`` of the releases before Alembic stands for."""
_LEGACY_TABLE = "hai_schema_version"

_MIGRATION_LOCK = 0x4A1_5C7E
"""PostgreSQL advisory lock key that serialises servers migrating one database."""


def alembic_config() -> Config:
    """The Alembic configuration for hai's state store; ``env.py`` finds the connection to
    migrate in ``config.attributes["connection"]``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    """The newest revision this code knows."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None, "hai.store.migrations has no revisions"
    return revision


def schema_revision(engine: sa.Engine) -> str | None:
    """The revision the database is at; None for a database without hai's tables."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


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


def _newer_than_code(engine: sa.Engine, revision: object) -> SchemaError:
    url = engine.url.render_as_string(hide_password=True)
    return SchemaError(
        f"the state database {url} is at schema revision {revision!r}, which this hai "
        f"(newest revision {head()!r}) does not know: a newer hai made it; run that release "
        f"or a later one against it"
    )


def _adopt_legacy_version(conn: sa.Connection, engine: sa.Engine) -> None:
    """Stamps a database that a release before Alembic made with the revision its
    ``hai_schema_version`` stands for, and drops that table: Alembic's is the record now."""
    inspector = sa.inspect(conn)
    if not inspector.has_table(_LEGACY_TABLE) or inspector.has_table("alembic_version"):
        return
    version = conn.execute(sa.text(f"SELECT max(version) FROM {_LEGACY_TABLE}")).scalar()
    if version is not None:
        if version not in LEGACY_REVISIONS:
            raise _newer_than_code(engine, version)
        script = ScriptDirectory.from_config(alembic_config())
        MigrationContext.configure(conn).stamp(script, LEGACY_REVISIONS[version])
    conn.execute(sa.text(f"DROP TABLE {_LEGACY_TABLE}"))


def migrate(engine: sa.Engine, target: str = "head") -> str | None:
    """Upgrades the database to revision ``target``, all in one transaction under the
    migration lock.

    Returns the revision reached. Safe to run on every start, also from several processes at
    once: a current database is untouched.

    Raises:
        SchemaError: the database is at a revision this code does not know (a newer release
            made it).
    """
    config = alembic_config()
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    with _locked_transaction(engine) as conn:
        _adopt_legacy_version(conn, engine)
        for revision in MigrationContext.configure(conn).get_current_heads():
            if revision not in known:
                raise _newer_than_code(engine, revision)
        config.attributes["connection"] = conn
        command.upgrade(config, target)
        return MigrationContext.configure(conn).get_current_revision()
