"""Where the platform keeps its state: the interface and its SQLAlchemy implementation."""

from hai.store.base import StateStore
from hai.store.sql import SqlStore, sqlite_url

__all__ = ["SqlStore", "StateStore", "sqlite_url"]
