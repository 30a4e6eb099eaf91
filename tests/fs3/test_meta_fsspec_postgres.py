"""fsspec's conformance suites again, against a cluster whose meta server keeps the namespace
in PostgreSQL (the namespace suite runs on every store in test_namespace.py)."""

from __future__ import annotations

from collections.abc import Iterator

import fsspec.tests.abstract as abstract
import pytest

from fs3.client import FS3FileSystem
from fs3.cluster import LocalCluster
from fs3.db import connect_postgres

from .conftest import FAST, SMALL_CHUNK
from .test_fsspec_abstract import Fs3Fixtures
from .test_quota import check_quota_on_cluster

pytestmark = [pytest.mark.postgres, pytest.mark.slow]  # 137 cases through meta on PostgreSQL


@pytest.fixture(scope="module")
def cluster(
    postgres_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalCluster]:
    """Overrides the session cluster for this module's suites: meta on PostgreSQL."""
    admin = connect_postgres(f"{postgres_server}/postgres", autocommit=True)
    with admin.cursor() as cur:
        cur.execute("DROP DATABASE IF EXISTS fs3_fsspec_suite")
        cur.execute("CREATE DATABASE fs3_fsspec_suite")
    admin.close()
    c = LocalCluster(
        tmp_path_factory.mktemp("fs3-pg-cluster"),
        settings=FAST,
        meta_db=f"{postgres_server}/fs3_fsspec_suite",
    )
    try:
        c.start()
        yield c
    finally:
        c.stop()


class TestCopyOnPostgres(abstract.AbstractCopyTests, Fs3Fixtures):
    pass


class TestGetOnPostgres(abstract.AbstractGetTests, Fs3Fixtures):
    pass


class TestPutOnPostgres(abstract.AbstractPutTests, Fs3Fixtures):
    pass


class TestOpenOnPostgres(abstract.AbstractOpenTests, Fs3Fixtures):
    pass


class TestPipeOnPostgres(abstract.AbstractPipeTests, Fs3Fixtures):
    pass


def test_edquot_through_the_client_on_postgres(cluster: LocalCluster) -> None:
    fs = FS3FileSystem(cluster.address, chunk_size=SMALL_CHUNK, skip_instance_cache=True)
    check_quota_on_cluster(fs, "/quota-pg")
