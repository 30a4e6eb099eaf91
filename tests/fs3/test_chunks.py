"""The chunk client's retries (ChunkIO.retry) against a real cluster: a retryable error is
tried again with jittered pauses on a refreshed chain table, until success or
``timeouts.retry_s``; a permanent error goes straight to the caller."""

from __future__ import annotations

from typing import Any

import pytest

from fs3.client import FS3FileSystem
from fs3.errors import Fs3TimeoutError, NotFound, StaleRouting, Unavailable
from fs3.types import RoutingTable


@pytest.fixture
def chunks(fs3fs: FS3FileSystem, pauses: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The client's ChunkIO, pausing through ``pauses`` and counting table refreshes."""
    chunks = fs3fs.chunks
    monkeypatch.setattr(chunks, "sleep", pauses)
    chunks.mgmtd.table()  # cached now: only the retries refresh it
    refresh = chunks.mgmtd.refresh
    chunks.refreshes = 0

    def counted() -> RoutingTable:
        chunks.refreshes += 1
        return refresh()

    monkeypatch.setattr(chunks.mgmtd, "refresh", counted)
    yield chunks
    del chunks.refreshes


def test_a_retryable_error_is_retried_on_a_fresh_table(chunks: Any, pauses: Any) -> None:
    tables: list[RoutingTable] = []

    def attempt(table: RoutingTable) -> int:
        tables.append(table)
        if len(tables) < 6:
            raise StaleRouting(f"table {table.version} is stale")
        return table.version

    assert chunks.retry("reading a test chunk", attempt) == tables[-1].version
    assert len(pauses.pauses) == chunks.refreshes == 5
    assert len(set(pauses.pauses)) > 1  # jittered


def test_retries_stop_at_retry_s_naming_the_operation_and_last_error(
    chunks: Any, pauses: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunks, "timeouts", chunks.timeouts.model_copy(update={"retry_s": 0.3}))

    def attempt(table: RoutingTable) -> None:
        raise Unavailable("storage 10.0.0.9:9000 refused the connection")

    with pytest.raises(
        Fs3TimeoutError,
        match=r"^writing a test chunk: no success within timeouts.retry_s=0.3s; "
        r"last error: storage 10.0.0.9:9000 refused",
    ):
        chunks.retry("writing a test chunk", attempt)
    assert len(pauses.pauses) > 1 and sum(pauses.pauses) <= 0.3


def test_a_permanent_error_is_not_retried(chunks: Any, pauses: Any) -> None:
    def attempt(table: RoutingTable) -> None:
        raise NotFound("/no/such/file")

    with pytest.raises(NotFound):
        chunks.retry("reading /no/such/file", attempt)
    assert pauses.pauses == [] and chunks.refreshes == 0
