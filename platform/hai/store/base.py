"""The state store interface: every primitive the platform needs, each with its contract.

Implementations: :class:`hai.store.sql.SqlStore` (SQLite by default, PostgreSQL by URL).
``tests/hai/test_store.py`` runs one conformance suite on each of them.

Records are the dataclasses of :mod:`hai.records`; the store hands out copies, so a caller
changes state only through ``update_*``.
"""

from __future__ import annotations

import abc
from contextlib import AbstractContextManager
from typing import Any

from hai.records import LIVE_RUN_STATES, Event, Job, Node, Quota, Run, User


class StateStore(abc.ABC):
    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """All calls made inside the block commit together or not at all (nestable)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Releases connections; the store is unusable afterwards."""

    # users
    @abc.abstractmethod
    def add_user(self, user: User, token_hash: str) -> None:
        """Adds a user. Raises StateError if the name is taken."""

    @abc.abstractmethod
    def user_by_token_hash(self, token_hash: str) -> User | None:
        """The user owning the token, or None."""

    @abc.abstractmethod
    def list_users(self) -> list[User]:
        """All users, by name."""

    @abc.abstractmethod
    def set_user_token_hash(self, name: str, token_hash: str) -> None:
        """Gives the user a new token; the old one stops matching at once. Raises
        NotFoundError for an unknown name."""

    @abc.abstractmethod
    def remove_user(self, name: str) -> None:
        """Removes the user (their jobs stay). Raises NotFoundError for an unknown name."""

    # node credentials
    @abc.abstractmethod
    def set_node_credential(self, node: str, token_hash: str, issued_at: float) -> bool:
        """Binds the token to ``node``, replacing the node's earlier one; returns whether
        there was one (it no longer matches)."""

    @abc.abstractmethod
    def node_by_credential_hash(self, token_hash: str) -> str | None:
        """The node the credential is bound to, or None."""

    @abc.abstractmethod
    def remove_node_credential(self, node: str) -> bool:
        """Revokes the node's credential; returns whether it had one."""

    # jobs
    @abc.abstractmethod
    def add_job(self, job: Job) -> int:
        """Stores a new job (its ``id`` is ignored) and returns the id, also its chain id."""

    @abc.abstractmethod
    def get_job(self, job_id: int) -> Job:
        """Raises NotFoundError when no such job exists."""

    @abc.abstractmethod
    def list_jobs(
        self, states: tuple[str, ...] | None = None, user: str | None = None
    ) -> list[Job]:
        """Jobs in id order, optionally only those in ``states`` and/or of ``user``."""

    @abc.abstractmethod
    def update_job(self, job_id: int, **fields: Any) -> None:
        """Sets the given fields. Raises NotFoundError for an unknown id."""

    # runs
    @abc.abstractmethod
    def add_run(self, run: Run) -> int:
        """Stores a new run of ``run.job_id`` (``id`` ignored) and returns its id."""

    @abc.abstractmethod
    def get_run(self, run_id: int) -> Run:
        """Raises NotFoundError when no such run exists."""

    @abc.abstractmethod
    def list_runs(
        self, job_id: int | None = None, states: tuple[str, ...] | None = None
    ) -> list[Run]:
        """Runs in id order, optionally of one chain and/or in ``states``."""

    @abc.abstractmethod
    def update_run(self, run_id: int, **fields: Any) -> None:
        """Sets the given fields. Raises NotFoundError for an unknown id."""

    # nodes
    @abc.abstractmethod
    def put_node(self, node: Node) -> None:
        """Adds the node, or replaces the stored one of the same name."""

    @abc.abstractmethod
    def get_node(self, name: str) -> Node:
        """Raises NotFoundError when no such node exists."""

    @abc.abstractmethod
    def list_nodes(self) -> list[Node]:
        """All nodes, by name."""

    @abc.abstractmethod
    def update_node(self, name: str, **fields: Any) -> None:
        """Sets the given fields. Raises NotFoundError for an unknown name."""

    @abc.abstractmethod
    def remove_node(self, name: str) -> None:
        """Forgets the node. Raises NotFoundError for an unknown name."""

    # events
    @abc.abstractmethod
    def add_event(self, event: Event) -> None:
        """Appends an event (``id`` ignored)."""

    @abc.abstractmethod
    def list_events(self, job_id: int | None = None, limit: int = 100) -> list[Event]:
        """The latest ``limit`` events (of one job if given), oldest first."""

    # quotas
    @abc.abstractmethod
    def set_quota(self, quota: Quota) -> None:
        """Sets the node quota for (user, group, priority), replacing any earlier one."""

    @abc.abstractmethod
    def list_quotas(self) -> list[Quota]:
        """All quota rows."""

    # whole-life state
    @abc.abstractmethod
    def get_chain_state(self, job_id: int) -> str | None:
        """The JSON text last stored for a job's chain, or None."""

    @abc.abstractmethod
    def set_chain_state(self, job_id: int, run_id: int, state: str, at: float) -> None:
        """Replaces the chain's JSON text, noting which run wrote it and when."""

    # settings
    @abc.abstractmethod
    def setting_once(self, name: str, value: str) -> str:
        """Stores ``value`` under ``name`` unless one is there; returns the stored value
        (the first writer wins, also between two servers racing on one database)."""

    def live_runs(self) -> list[Run]:
        """Runs that still hold nodes (running, suspending or stopping)."""
        return self.list_runs(states=LIVE_RUN_STATES)
