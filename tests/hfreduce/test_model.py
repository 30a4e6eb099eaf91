"""The at-scale cost model: the paper's memory arithmetic, and sane orderings."""

from __future__ import annotations

import pytest

from hfreduce.model import (
    GB,
    GPU_COUNTS,
    PAPER_SIZE,
    Hardware,
    Software,
    main,
    memory_ops_per_byte,
    predict_hfreduce,
    predict_ring,
)


def test_memory_ops_reproduce_the_papers_ceiling() -> None:
    hw = Hardware()
    assert memory_ops_per_byte(8, 2, hw) == 24
    assert hw.memory_bw / 24 / GB == pytest.approx(13.3, abs=0.05)


def test_hfreduce_never_beats_its_bounds_and_beats_the_ring_across_nodes() -> None:
    hw, sw = Hardware(), Software(efficiency=1.0)
    ceiling = hw.memory_bw / memory_ops_per_byte(8, 2, hw)
    previous_ring = float("inf")
    for gpus in (16, 64, 256, 1440):
        seconds, _ = predict_hfreduce(PAPER_SIZE, gpus, hw, sw)
        assert PAPER_SIZE / seconds <= ceiling
        ring = PAPER_SIZE / predict_ring(PAPER_SIZE, gpus, hw)
        assert ring < PAPER_SIZE / seconds
        assert ring < previous_ring  # more ring steps, more latency
        previous_ring = ring


def test_lower_efficiency_is_slower() -> None:
    hw = Hardware()
    fast, _ = predict_hfreduce(PAPER_SIZE, 64, hw, Software(efficiency=0.9))
    slow, limit = predict_hfreduce(PAPER_SIZE, 64, hw, Software(efficiency=0.5))
    assert slow > fast and limit == "host memory"


def test_table_has_a_row_per_gpu_count(capsys: pytest.CaptureFixture[str]) -> None:
    main([])
    rows = [line for line in capsys.readouterr().out.splitlines() if line[:5].strip().isdigit()]
    assert [int(r.split()[0]) for r in rows] == GPU_COUNTS
    assert "8.10 (" in rows[GPU_COUNTS.index(16)]
