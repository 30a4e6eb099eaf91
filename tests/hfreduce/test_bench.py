"""The benchmark runs end to end on real ranks (and test hosts) and prints every column it
promises; a ``--hosts`` row is computed as its legend says."""

from __future__ import annotations

import re

import pytest

from hfreduce.bench import hosts_row, main, parse_layout, tcp_ceiling


def test_bench_prints_both_layouts_with_a_tcp_floor_across_nodes(capsys) -> None:
    main(["--max-size", "4096", "--iters", "1", "--layouts", "1x2,2x1"])
    out = capsys.readouterr().out
    rows = {m.group(1): m.group(0) for m in re.finditer(r"4 KiB\s+(\dx\d) ranks.*", out)}
    assert set(rows) == {"1x2", "2x1"}
    # A row: gloo ms, hfr ms, speed-up, 4 bandwidths, hfr/memcpy, the CPU time of each
    # side; across nodes two more.
    single, multi = rows["1x2"].split(), rows["2x1"].split()
    assert len(single) == 3 + 11 and len(multi) == 3 + 13
    assert float(multi[-2]) > 0 and multi[-1].endswith("x")
    # Both sides spend CPU on every call (the ranks at least copy the bytes).
    assert float(single[-2]) > 0 and float(single[-1]) > 0
    assert "tcp floor:" in out and "cpu: CPU ms per call" in out


def _rank(gloo: list[float], gloo_cpu: float, ours: list[float], ours_cpu: float) -> dict:
    """A rank's timings of one size as ``_interleaved`` returns them: (wall s, CPU s)."""
    return {
        "gloo": [[wall, gloo_cpu] for wall in gloo],
        "hfreduce": [[wall, ours_cpu] for wall in ours],
    }


def test_hosts_row_takes_the_slowest_rank_and_a_hosts_cpu() -> None:
    # Two hosts x two ranks, three timed calls each (seconds).
    ranks = [
        _rank([0.2, 0.2, 0.2], 0.01, [0.1, 0.3, 0.1], 0.02),
        _rank([0.4, 0.2, 0.2], 0.03, [0.2, 0.1, 0.1], 0.04),
        _rank([0.2, 0.2, 0.5], 0.01, [0.1, 0.1, 0.1], 0.0),
        _rank([0.2, 0.2, 0.2], 0.01, [0.1, 0.1, 0.1], 0.02),
    ]
    # 64 MiB over 1 Gbit/s: the bound is 536.9 ms.
    row = hosts_row(64 << 20, ranks, per_node=2, link_bits=10**9)
    assert row["gloo ms"] == pytest.approx(400)  # slowest ranks 400, 200, 500: median 400
    assert row["hfr ms"] == pytest.approx(200)  # slowest ranks 200, 300, 100: median 200
    assert row["hfr/gloo"] == pytest.approx(2.0)
    assert row["of bound"] == pytest.approx((64 << 20) * 8 / 1e9 / 0.2)
    # Per host: host 1's ranks spend 20 + 40 ms per call, host 2's 0 + 20: mean 40.
    assert row["hfr cpu"] == pytest.approx(40)
    assert row["gloo cpu"] == pytest.approx(30)


def test_the_tcp_ceiling_leaves_out_each_packets_headers() -> None:
    assert tcp_ceiling(1500) == pytest.approx(1448 / 1514)
    assert 0.99 < tcp_ceiling(9000) < 1


@pytest.mark.parametrize("spec", ["2", "x2", "2x", "0x2", "2x2x2", "twoxtwo", "-1x2"])
def test_a_bad_layout_is_named(spec: str) -> None:
    with pytest.raises(ValueError, match=f"layout '{re.escape(spec)}' is not NODESxRANKS"):
        parse_layout(spec)
    assert parse_layout("3x4") == (3, 4)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--hosts", "2x2"], "--hosts needs --link RATE"),
        (["--hosts", "2by2", "--link", "2gbit"], "layout '2by2' is not NODESxRANKS"),
        (["--hosts", "2x2", "--link", "fast"], "link rate 'fast' is not like 20mbit"),
    ],
)
def test_hosts_arguments_fail_in_one_line(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("python -m hfreduce.bench: error:")


@pytest.mark.hosts
def test_bench_runs_across_test_hosts(capsys) -> None:
    main(["--hosts", "2x2", "--link", "2gbit", "--sizes", "4096,1048576", "--iters", "1"])
    out = capsys.readouterr().out
    rows = {m.group(1): m.group(0).split() for m in re.finditer(r"^\s*(\d+ [KM]iB) .*", out, re.M)}
    assert set(rows) == {"4 KiB", "1 MiB"}
    # size (2 words), bound, gloo ms, hfr ms, ratio, of bound, and the two CPU times.
    row = rows["1 MiB"]
    assert len(row) == 9 and row[5].endswith("x")
    assert float(row[2]) == pytest.approx((1 << 20) * 8 / 2e9 * 1e3, abs=1e-3)
    # of bound is bound / hfr ms; it may pass 1, as tbf's bucket is full when a call starts.
    assert float(row[6]) == pytest.approx(float(row[2]) / float(row[4]), abs=0.011)
    assert float(row[6]) > 0
    assert float(row[7]) > 0 and float(row[8]) > 0
    assert "cpu: CPU ms per call per host" in out and "payload gets at most\n0.956" in out
