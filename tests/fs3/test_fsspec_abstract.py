"""fsspec's own conformance suites against a real cluster."""

from __future__ import annotations

from collections.abc import Iterator

import fsspec.tests.abstract as abstract
import pytest

from fs3.client import FS3FileSystem
from fs3.cluster import LocalCluster

from .conftest import SMALL_CHUNK


class Fs3Fixtures(abstract.AbstractFixtures):
    @pytest.fixture
    def fs(self, cluster: LocalCluster) -> Iterator[FS3FileSystem]:
        fs = FS3FileSystem(cluster.address, chunk_size=SMALL_CHUNK, skip_instance_cache=True)
        yield fs
        if fs.exists("/root"):
            fs.rm("/root", recursive=True)

    @pytest.fixture
    def fs_join(self):  # type: ignore[no-untyped-def]
        return lambda *parts: "/".join(parts)

    @pytest.fixture
    def fs_path(self) -> str:
        return "/root"


class TestCopy(abstract.AbstractCopyTests, Fs3Fixtures):
    pass


class TestGet(abstract.AbstractGetTests, Fs3Fixtures):
    pass


class TestPut(abstract.AbstractPutTests, Fs3Fixtures):
    pass


class TestOpen(abstract.AbstractOpenTests, Fs3Fixtures):
    pass


class TestPipe(abstract.AbstractPipeTests, Fs3Fixtures):
    pass
