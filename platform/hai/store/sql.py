"""The SQLAlchemy state store: SQLite by default, PostgreSQL (or any SQLAlchemy URL) at scale."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from fs3.db import enter_wal_mode, redact
from hai.errors import ConfigError, NotFoundError, StateError
from hai.records import Event, Job, Node, Quota, Run, User
from hai.spec import spec_from_dict
from hai.store import schema
from hai.store.base import StateStore
from hai.store.migrate import migrate


def sqlite_url(state_dir: str | Path) -> str:
    """The default store: one SQLite file in the state folder."""
    return f"sqlite:///{Path(state_dir).expanduser() / 'hai.db'}"


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets `hai` readers run beside the server; busy_timeout waits out short locks
    # instead of failing.
    enter_wal_mode(cursor)
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _make_private(database: str | None) -> None:
    """Creates the SQLite file 0600, or tightens one that exists, with its -wal and -shm.

    The database holds the run-token secret and every user's token hashes. SQLite creates
    -wal and -shm with the mode of the database file itself, so a database file made
    private here (rather than by sqlite, through the umask) keeps them private too.
    """
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if not path.parent.is_dir():
        return  # SQLite's own error names the missing folder
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # empty: SQLite makes it new
    for name in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if name.exists():
            os.chmod(name, 0o600)


def _from_row(cls: type, row: sa.Row) -> Any:
    data = dict(row._mapping)
    data.pop("token_hash", None)
    if cls is Job:  # the spec column is JobSpec as JSON (dataclasses.asdict on the way in)
        data["spec"] = spec_from_dict(data["spec"])
    return cls(**data)


class SqlStore(StateStore):
    """A :class:`StateStore` on any SQLAlchemy URL; the schema is migrated on open.

    Raises:
        ConfigError: the URL's database driver is not installed (psycopg for PostgreSQL:
            fireflyer's ``postgres`` extra).
    """

    def __init__(self, url: str) -> None:
        given = url
        if url.startswith("postgresql://"):
            # psycopg 3 is the postgres extra's driver; plain postgresql:// would ask for psycopg2.
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        self.url = url
        try:
            self._engine = sa.create_engine(url, pool_pre_ping=True)
        except ModuleNotFoundError as err:  # SQLAlchemy imports the URL's driver here
            fix = "pip install 'fireflyer[postgres]'" if err.name == "psycopg" else "install it"
            raise ConfigError(
                f"the state store {redact(given)} needs the database driver {err.name}: {fix}"
            ) from None
        if self._engine.dialect.name == "sqlite":
            _make_private(self._engine.url.database)
            sa.event.listen(self._engine, "connect", _on_sqlite_connect)
        migrate(self._engine)
        self._local = threading.local()

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if getattr(self._local, "conn", None) is not None:
            yield
            return
        with self._engine.begin() as conn:
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    @contextmanager
    def _conn(self) -> Iterator[sa.Connection]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
        else:
            with self._engine.begin() as conn:
                yield conn

    def _insert(self, table: sa.Table, record: Any, drop: tuple[str, ...] = ("id",)) -> int:
        values = {k: v for k, v in dataclasses.asdict(record).items() if k not in drop}
        with self._conn() as conn:
            result = conn.execute(sa.insert(table).values(**values))
            key = result.inserted_primary_key
            return int(key[0]) if key and isinstance(key[0], int) else 0

    def _update(
        self, table: sa.Table, key_col: sa.Column, key: Any, what: str, fields: dict
    ) -> None:
        with self._conn() as conn:
            result = conn.execute(sa.update(table).where(key_col == key).values(**fields))
            if result.rowcount == 0:
                raise NotFoundError(f"no {what} {key!r}")

    def _delete(self, table: sa.Table, key_col: sa.Column, key: Any, what: str) -> None:
        with self._conn() as conn:
            if conn.execute(sa.delete(table).where(key_col == key)).rowcount == 0:
                raise NotFoundError(f"no {what} {key!r}")

    def _get(self, table: sa.Table, cls: type, key_col: sa.Column, key: Any, what: str) -> Any:
        # No row has an id beyond a 64-bit INTEGER; SQLite would raise OverflowError for one.
        if isinstance(key, int) and not -(2**63) <= key < 2**63:
            raise NotFoundError(f"no {what} {key!r}; `hai ls` lists jobs, `hai nodes` nodes")
        with self._conn() as conn:
            row = conn.execute(sa.select(table).where(key_col == key)).first()
        if row is None:
            raise NotFoundError(f"no {what} {key!r}; `hai ls` lists jobs, `hai nodes` nodes")
        return _from_row(cls, row)

    def _select(self, query: sa.Select, cls: type) -> list[Any]:
        with self._conn() as conn:
            return [_from_row(cls, row) for row in conn.execute(query)]

    # users
    def add_user(self, user: User, token_hash: str) -> None:
        try:
            with self._conn() as conn:
                conn.execute(
                    sa.insert(schema.users).values(
                        name=user.name, role=user.role, token_hash=token_hash
                    )
                )
        except sa.exc.IntegrityError:
            raise StateError(f"user {user.name!r} already exists") from None

    def user_by_token_hash(self, token_hash: str) -> User | None:
        query = sa.select(schema.users).where(schema.users.c.token_hash == token_hash)
        found = self._select(query, User)
        return found[0] if found else None

    def list_users(self) -> list[User]:
        return self._select(sa.select(schema.users).order_by(schema.users.c.name), User)

    def set_user_token_hash(self, name: str, token_hash: str) -> None:
        self._update(schema.users, schema.users.c.name, name, "user", {"token_hash": token_hash})

    def remove_user(self, name: str) -> None:
        self._delete(schema.users, schema.users.c.name, name, "user")

    # node credentials
    def set_node_credential(self, node: str, token_hash: str, issued_at: float) -> bool:
        table = schema.node_credentials
        with self.transaction(), self._conn() as conn:
            replaced = conn.execute(sa.delete(table).where(table.c.node == node)).rowcount > 0
            conn.execute(
                sa.insert(table).values(node=node, token_hash=token_hash, issued_at=issued_at)
            )
        return replaced

    def node_by_credential_hash(self, token_hash: str) -> str | None:
        table = schema.node_credentials
        with self._conn() as conn:
            return conn.execute(
                sa.select(table.c.node).where(table.c.token_hash == token_hash)
            ).scalar_one_or_none()

    def remove_node_credential(self, node: str) -> bool:
        table = schema.node_credentials
        with self._conn() as conn:
            return conn.execute(sa.delete(table).where(table.c.node == node)).rowcount > 0

    # jobs
    def add_job(self, job: Job) -> int:
        return self._insert(schema.jobs, job)

    def get_job(self, job_id: int) -> Job:
        return self._get(schema.jobs, Job, schema.jobs.c.id, job_id, "job")

    def list_jobs(
        self, states: tuple[str, ...] | None = None, user: str | None = None
    ) -> list[Job]:
        query = sa.select(schema.jobs).order_by(schema.jobs.c.id)
        if states is not None:
            query = query.where(schema.jobs.c.state.in_(states))
        if user is not None:
            query = query.where(schema.jobs.c.user == user)
        return self._select(query, Job)

    def update_job(self, job_id: int, **fields: Any) -> None:
        self._update(schema.jobs, schema.jobs.c.id, job_id, "job", fields)

    # runs
    def add_run(self, run: Run) -> int:
        return self._insert(schema.runs, run)

    def get_run(self, run_id: int) -> Run:
        return self._get(schema.runs, Run, schema.runs.c.id, run_id, "run")

    def list_runs(
        self, job_id: int | None = None, states: tuple[str, ...] | None = None
    ) -> list[Run]:
        query = sa.select(schema.runs).order_by(schema.runs.c.id)
        if job_id is not None:
            query = query.where(schema.runs.c.job_id == job_id)
        if states is not None:
            query = query.where(schema.runs.c.state.in_(states))
        return self._select(query, Run)

    def update_run(self, run_id: int, **fields: Any) -> None:
        self._update(schema.runs, schema.runs.c.id, run_id, "run", fields)

    # nodes
    def put_node(self, node: Node) -> None:
        with self._conn() as conn:
            conn.execute(sa.delete(schema.nodes).where(schema.nodes.c.name == node.name))
            conn.execute(sa.insert(schema.nodes).values(**dataclasses.asdict(node)))

    def get_node(self, name: str) -> Node:
        return self._get(schema.nodes, Node, schema.nodes.c.name, name, "node")

    def list_nodes(self) -> list[Node]:
        return self._select(sa.select(schema.nodes).order_by(schema.nodes.c.name), Node)

    def update_node(self, name: str, **fields: Any) -> None:
        self._update(schema.nodes, schema.nodes.c.name, name, "node", fields)

    def remove_node(self, name: str) -> None:
        self._delete(schema.nodes, schema.nodes.c.name, name, "node")

    # events
    def add_event(self, event: Event) -> None:
        self._insert(schema.events, event)

    def list_events(self, job_id: int | None = None, limit: int = 100) -> list[Event]:
        query = sa.select(schema.events).order_by(schema.events.c.id.desc()).limit(limit)
        if job_id is not None:
            query = query.where(schema.events.c.job_id == job_id)
        return list(reversed(self._select(query, Event)))

    # quotas
    def set_quota(self, quota: Quota) -> None:
        table = schema.quotas
        with self._conn() as conn:
            conn.execute(
                sa.delete(table).where(
                    (table.c.user == quota.user)
                    & (table.c.group == quota.group)
                    & (table.c.priority == quota.priority)
                )
            )
            conn.execute(sa.insert(table).values(**dataclasses.asdict(quota)))

    def list_quotas(self) -> list[Quota]:
        return self._select(sa.select(schema.quotas), Quota)

    # whole-life state
    def get_chain_state(self, job_id: int) -> str | None:
        table = schema.chain_state
        with self._conn() as conn:
            return conn.execute(
                sa.select(table.c.state).where(table.c.job_id == job_id)
            ).scalar_one_or_none()

    def set_chain_state(self, job_id: int, run_id: int, state: str, at: float) -> None:
        table = schema.chain_state
        with self.transaction(), self._conn() as conn:
            conn.execute(sa.delete(table).where(table.c.job_id == job_id))
            conn.execute(
                sa.insert(table).values(job_id=job_id, run_id=run_id, state=state, updated_at=at)
            )

    # settings
    def setting_once(self, name: str, value: str) -> str:
        table = schema.settings
        query = sa.select(table.c.value).where(table.c.name == name)
        with self._conn() as conn:
            # Read first: once set, a setting costs no write (and no SQLite write lock).
            if (stored := conn.execute(query).scalar_one_or_none()) is not None:
                return stored
        try:
            with self._conn() as conn:
                conn.execute(sa.insert(table).values(name=name, value=value))
        except sa.exc.IntegrityError:
            pass  # another writer was first: theirs stands
        with self._conn() as conn:
            return conn.execute(query).scalar_one()
