"""``python -m hai.bench_submit`` runs end to end on this tree (a real ``hai server``, real
submits) and prints its figures; a baseline it cannot find is one line. No timings are
asserted: the figures only have to be there."""

from __future__ import annotations

import re
import subprocess
import sys


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hai.bench_submit", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_bench_prints_submit_rates_and_the_policy_figures() -> None:
    done = _bench("--quick", "--jobs", "12", "--clients", "3", "--baseline", "none")
    assert done.returncode == 0, done.stderr
    rows = {
        (cells[0], cells[1]): cells[2:]
        for line in done.stdout.splitlines()
        if len(cells := [c.strip() for c in line.strip("│ ").split("│")]) == 5
    }
    for clients in ("1", "3"):
        for metric in ("submits/s", "p50 ms", "p99 ms"):
            before, after, ratio = rows[(clients, metric)]
            assert (before, ratio) == ("-", "-")  # no baseline
            assert float(after) > 0
    util = rows[("ours + time-slicing", "GPU util %")][1]
    assert 0 < float(util) <= 100
    assert float(rows[("pending queue", "pass median ms")][1]) > 0


def test_a_baseline_that_is_not_a_commit_is_one_line() -> None:
    done = _bench("--quick", "--baseline", "no-such-rev")
    assert done.returncode != 0
    assert re.fullmatch(r"hai\.bench_submit: no commit 'no-such-rev' in \S+.*\n", done.stderr)
