"""The benchmark runs end to end on real ranks and prints every column it promises."""

from __future__ import annotations

import re

from hfreduce.bench import main


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
