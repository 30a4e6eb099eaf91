"""Fixtures for the platform tests: state stores on every backend (the PostgreSQL server
fixtures live in tests/conftest.py, shared with fs3)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hai.store import SqlStore, StateStore, sqlite_url

from ..waiting import wait_for


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, state_dir: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(state_dir)
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url: str) -> Iterator[StateStore]:
    """Every StateStore implementation, in turn (the conformance suite runs on each)."""
    s = SqlStore(store_url)
    yield s
    s.close()


TRAIN = str(Path(__file__).parent / "jobs" / "train.py")
# Short timings so fault cases play out in seconds (leases, grace periods, heartbeats).
FAST = {
    "HAI_SCHEDULER__PASS_INTERVAL_S": "0.2",
    # Long enough that a busy CI machine (the whole suite on 2 cores) misses no lease.
    "HAI_SCHEDULER__NODE_LEASE_S": "10",
    "HAI_SCHEDULER__KILL_GRACE_S": "1",
    "HAI_AGENT__HEARTBEAT_S": "0.2",
    "HAI_AGENT__KILL_GRACE_S": "1",
    "HAI_AGENT__HEALTH_INTERVAL_S": "3600",
    "HAI_POLICY__MIN_RUN_S": "0",
    # Single-user clusters: these ranks run this test's Python (on CI it lives in root's
    # 0700 home) and use pytest's 0700 folders. test_run_as.py runs the default
    # (``submitter``: another account) and shows what it keeps ranks from.
    "HAI_AGENT__RUN_AS": "agent",
}


class LocalCluster:
    """A `hai up` cluster of 1-GPU virtual nodes, with helpers to drive and watch it."""

    def __init__(
        self,
        state_dir: Path,
        port: int,
        nodes: int = 2,
        env: dict[str, str] | None = None,
        metrics_port: int = 0,
    ) -> None:
        from hai.cluster import down, up
        from hai.rpc import ApiClient

        self.state_dir = state_dir
        self.env = {**FAST, **(env or {})}
        try:
            self.info = up(
                state_dir,
                nodes=nodes,
                gpus_per_node=1,
                port=port,
                env=self.env,
                timeout_s=90,
                metrics_port=metrics_port,
            )
        except BaseException:
            down(state_dir)  # what started before the timeout must not outlive the test
            raise
        self.client = ApiClient(self.info.address, (state_dir / "token").read_text().strip())

    def close(self) -> None:
        from hai.cluster import down

        self.client.close()
        down(self.state_dir)

    wait_for = staticmethod(wait_for)

    @staticmethod
    def train_spec(name: str, priority: int, steps: int, **kw: object) -> dict:
        extra = list(kw.pop("extra", []))  # type: ignore[call-overload]
        return {
            "name": name,
            "entrypoint": sys.executable,
            "arguments": [TRAIN, str(steps), "0.1", *extra],
            "nodes": 2,
            "gpus_per_node": 1,
            "priority": priority,
            "suspend_grace_period": 20,
            **kw,
        }

    def describe(self, job_id: int) -> dict:
        return self.client.call("Describe", job_id=job_id)

    def log_lines(self, job_id: int, attempt: int, rank: int = 0) -> list[str]:
        """The rank's complete log lines so far (a line still being written is left out)."""
        path = self.state_dir / "logs" / f"job-{job_id}" / f"run-{attempt}" / f"rank-{rank}.log"
        return path.read_text().split("\n")[:-1] if path.exists() else []

    def header(self, job_id: int, attempt: int, rank: int = 0) -> dict:
        """The JSON line train.py prints first, once it is there."""
        self.wait_for(
            f"rank {rank} of job {job_id} run {attempt} to start",
            lambda: self.log_lines(job_id, attempt, rank),
        )
        return json.loads(self.log_lines(job_id, attempt, rank)[0])


@pytest.fixture
def cluster(state_dir: Path, free_port: Callable[[], int]) -> Iterator[LocalCluster]:
    c = LocalCluster(state_dir, free_port())
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def metered_cluster(
    state_dir: Path, free_port: Callable[[], int]
) -> Iterator[tuple[LocalCluster, int, list[int]]]:
    """A two-node cluster with metrics on: (cluster, server port, the agents' ports)."""
    base = free_port()  # the agents take the next two ports, as `hai up --metrics-port` does
    c = LocalCluster(state_dir, free_port(), nodes=2, metrics_port=base)
    try:
        yield c, base, [base + 1, base + 2]
    finally:
        c.close()
