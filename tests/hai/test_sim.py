"""The simulator runs the real policy; a small cluster keeps these quick."""

from __future__ import annotations

from hai.bench import main, policies, summarize
from hai.sim import simulate
from hai.workload import generate


def test_every_job_finishes_and_priority_helps_high_jobs() -> None:
    trace = generate(400, 128, load=1.5, seed=1)
    fifo, ours, _ = (summarize(simulate(trace, 128, c)) for c in policies(1800.0).values())
    assert fifo["preemptions"] == 0 and ours["preemptions"] > 0
    assert ours["wait_high_mean_h"] < fifo["wait_high_mean_h"]
    assert 0.5 < ours["util"] <= 1.0


def test_bench_entry_point_prints_the_table(capsys) -> None:  # type: ignore[no-untyped-def]
    main(["--nodes", "40", "--jobs", "150", "--pending", "200", "--reps", "2"])
    out = capsys.readouterr().out
    assert "ours + time-slicing" in out and "target <= 100 ms" in out


def test_job_that_ends_while_checkpointing_finishes_without_a_requeue() -> None:
    from hai.workload import TraceJob

    # The low job's work ends 10 s after the urgent job's pass asks it to suspend, within
    # its 30 s checkpoint: it finishes then, as the scheduler has it, and is not rerun.
    low = TraceJob(1, "ann", 0.0, 2, 3610.0, 10)
    urgent = TraceJob(2, "bob", 3600.0, 2, 100.0, 50)
    config = policies(1800.0)["priority + preemption (ours)"]
    result = simulate([low, urgent], 2, config, pass_interval_s=1.0, suspend_s=30.0)
    done = {job.id: at for job, at in result.jobs}
    assert result.preemptions == 1
    assert done[1] == 3610.0 and done[2] == 3610.0 + 100.0
