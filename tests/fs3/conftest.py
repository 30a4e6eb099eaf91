"""fs3 fixtures: a real local cluster (processes on loopback) shared by non-destructive tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fs3.client import FS3FileSystem
from fs3.cluster import LocalCluster
from fs3.meta.backends import namespace_over, open_meta_store
from fs3.meta.namespace import Namespace
from fs3.meta.store import MemoryMetaStore, MetaStore

# Short leases so fault tests see reconfiguration within seconds; no fsync keeps 2-core CI fast.
FAST = {
    "mgmtd": {"lease_s": 1.5, "heartbeat_s": 0.2, "primary_lease_s": 2.0},
    "storage": {"fsync": False},
    "timeouts": {"retry_s": 20.0},
}
SMALL_CHUNK = 256 * 1024


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("fs3-cluster"), settings=FAST)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator:
    """Starts a private cluster for a test that breaks it; always stopped afterwards."""
    started: list[LocalCluster] = []

    def make(**kwargs: object) -> LocalCluster:
        c = LocalCluster(tmp_path / f"cluster{len(started)}", settings=FAST, **kwargs)  # type: ignore[arg-type]
        started.append(c)
        c.start()
        return c

    yield make
    for c in started:
        c.stop()


@pytest.fixture
def fs3fs(cluster: LocalCluster) -> FS3FileSystem:
    return FS3FileSystem(cluster.address, chunk_size=SMALL_CHUNK, skip_instance_cache=True)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MetaStore]:
    """Every MetaStore implementation in turn, each empty: the namespace conformance suite
    (test_namespace.py, test_quota.py, test_trash.py) runs on each."""
    if request.param == "memory":
        s: MetaStore = MemoryMetaStore()
    elif request.param == "sqlite":
        s = open_meta_store(tmp_path / "m.db")
    else:
        s = open_meta_store(request.getfixturevalue("postgres_url"))
    yield s
    s.close()


@pytest.fixture
def ns(store: MetaStore) -> Namespace:
    return namespace_over(store, chains=lambda: [1, 2, 3])
