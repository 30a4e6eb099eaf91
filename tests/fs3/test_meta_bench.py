"""The metadata benchmark runs end to end (tiny sizes; its figures are not checked)."""

from __future__ import annotations

import pytest

from fs3.meta.bench import bench_meta_stores, format_meta_table


@pytest.mark.postgres
def test_meta_bench_reports_both_stores(postgres_server: str) -> None:
    results = bench_meta_stores(files=8, threads=2, postgres_url=postgres_server, existing=20)
    assert set(results) == {"sqlite", "postgresql", "postgresql retries"}
    assert results["sqlite"].keys() == results["postgresql"].keys()
    assert results["postgresql retries"].keys() == results["postgresql"].keys()
    assert all(v > 0 for v in results["postgresql"].values())
    table = format_meta_table(results)
    assert "1 thread, empty" in table and "2 servers x 1, own dirs, 20 files there" in table
