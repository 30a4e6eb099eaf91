"""Opens the metadata store a ``--db`` value names (a PostgreSQL URL or a SQLite file) and
the namespace over a store."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from fs3.config import MetaConfig
from fs3.db import is_postgres
from fs3.meta.namespace import Namespace
from fs3.meta.store import MetaStore


def open_meta_store(
    db: str | os.PathLike[str], connections: int = MetaConfig().db_connections
) -> MetaStore:
    """``postgresql://USER@HOST:PORT/DB`` opens :class:`~fs3.meta.postgres.PostgresMetaStore`
    (shareable by several meta servers) with at most ``connections`` connections (config
    ``meta.db_connections``); anything else is a SQLite file path.

    Raises:
        Unavailable: the PostgreSQL server cannot be reached.
    """
    db = os.fspath(db)
    if is_postgres(db):
        from fs3.meta.postgres import PostgresMetaStore

        return PostgresMetaStore(db, max_connections=connections)
    from fs3.meta.sqlite import SqliteMetaStore

    return SqliteMetaStore(db)


def namespace_over(
    store: MetaStore, chains: Callable[[], list[int]], clock: Callable[[], float] = time.time
) -> Namespace:
    """The namespace over ``store``: the one whose operations suit that backend best (on
    PostgreSQL one statement each, :class:`~fs3.meta.pg_namespace.PostgresNamespace`)."""
    from fs3.meta.postgres import PostgresMetaStore

    if isinstance(store, PostgresMetaStore):
        from fs3.meta.pg_namespace import PostgresNamespace

        return PostgresNamespace(store, chains, clock)
    return Namespace(store, chains, clock)
