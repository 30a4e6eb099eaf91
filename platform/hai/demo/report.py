"""The demo's results: figures drawn from what the platform and the job recorded, the
summary table, and the loss-curve picture with the suspend and the resume marked."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hai.demo.scenario import DemoOutcome, JobRecord


@dataclass
class Summary:
    steps: int
    world: int
    """Ranks of the training job."""
    runs: int
    suspends: int
    suspended_at_step: int | None
    resumed_from_step: int | None
    tokens_per_s: float
    loss_start: float
    loss_end: float
    ce_start: float
    """The next-token cross-entropy alone (the loss adds MTP and balance terms)."""
    ce_end: float
    suspend_to_ack_s: float | None
    """From the scheduler's suspend request to the job's acknowledgement (checkpoint done)."""
    suspend_to_free_s: float | None
    """From the suspend request until the job's run had ended and its nodes were free."""
    urgent_wait_s: float | None
    """From the urgent job's submission until it started."""
    urgent_run_s: float | None
    checkpoints: dict[int, int]
    checkpoint_stall_s: list[float]
    checkpoint_write_s: list[float]
    allreduce_gbps: list[float]
    allreduce_bytes: int
    """Size of the timed all-reduce: the model's gradients."""
    wall_s: float
    cut_off: str = ""
    """``hai demo --hosts``: the host cut off midway and what the job saw of it."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first_event_time(job: JobRecord, kind: str) -> float | None:
    times = [e["time"] for e in job.detail["events"] if e["kind"] == kind]
    return min(times) if times else None


def summarize(outcome: DemoOutcome, wall_s: float) -> Summary:
    """The figures of the summary table, from the jobs' metrics and platform records."""
    train, urgent = outcome.train, outcome.urgent
    steps = train.metrics.of("step")
    starts = train.metrics.of("start")
    suspends = train.metrics.of("suspend")
    runs = train.detail["runs"]
    # The first step of each run pays for start-up (imports, first all-reduce); leave it out.
    first_steps = {s["step"] + 1 for s in starts}
    rates = [s["tokens_per_s"] for s in steps if s["step"] not in first_steps]
    requested = _first_event_time(train, "suspend")
    acked = suspends[0]["acknowledged_at"] if suspends else None
    first_end = runs[0].get("ended_at") if len(runs) > 1 else None
    urgent_runs = urgent.detail["runs"]
    urgent_start = urgent_runs[0]["started_at"] if urgent_runs else None
    urgent_end = urgent_runs[0].get("ended_at") if urgent_runs else None
    checkpoint_events = train.metrics.of("checkpoint")
    return Summary(
        steps=steps[-1]["step"] if steps else 0,
        world=starts[0]["world"] if starts else 0,
        runs=len(runs),
        suspends=train.detail["job"].get("suspends", 0),
        suspended_at_step=suspends[0]["step"] if suspends else None,
        resumed_from_step=starts[1]["step"] if len(starts) > 1 else None,
        tokens_per_s=statistics.median(rates) if rates else 0.0,
        loss_start=steps[0]["loss"] if steps else float("nan"),
        loss_end=steps[-1]["loss"] if steps else float("nan"),
        ce_start=steps[0]["ce_loss"] if steps else float("nan"),
        ce_end=steps[-1]["ce_loss"] if steps else float("nan"),
        suspend_to_ack_s=acked - requested if acked and requested else None,
        suspend_to_free_s=first_end - requested if first_end and requested else None,
        urgent_wait_s=(urgent_start - outcome.submitted_urgent_at) if urgent_start else None,
        urgent_run_s=(urgent_end - urgent_start) if urgent_start and urgent_end else None,
        checkpoints=outcome.checkpoints,
        checkpoint_stall_s=[e["stall_s"] for e in checkpoint_events],
        checkpoint_write_s=[e["write_s"] for e in checkpoint_events],
        allreduce_gbps=[e["algbw_gbps"] for e in train.metrics.of("allreduce")],
        allreduce_bytes=max((e["bytes"] for e in train.metrics.of("allreduce")), default=0),
        wall_s=wall_s,
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _spread(values: list[float], unit: str, scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "-"
    low, mid, high = (
        f"{v * scale:.{digits}f}" for v in (min(values), statistics.median(values), max(values))
    )
    return f"{mid} {unit} (min {low}, max {high})"


def summary_rows(s: Summary) -> list[tuple[str, str]]:
    sizes = sorted(s.checkpoints.items())
    kept = ", ".join(f"step {step}: {size / 2**20:.2f} MiB" for step, size in sizes) or "-"
    return [
        ("steps", f"{s.steps} in {s.runs} runs, suspended {s.suspends}x"),
        (
            "suspend / resume",
            f"suspended after step {s.suspended_at_step}, resumed from the checkpoint of "
            f"step {s.resumed_from_step}",
        ),
        ("tokens/s", f"{s.tokens_per_s:,.0f} over {s.world} ranks (median step)"),
        (
            "loss",
            f"{s.loss_start:.3f} -> {s.loss_end:.3f} (next-token cross-entropy "
            f"{s.ce_start:.3f} -> {s.ce_end:.3f})",
        ),
        (
            "suspend latency",
            f"{_seconds(s.suspend_to_ack_s)} to the checkpoint acknowledged, "
            f"{_seconds(s.suspend_to_free_s)} until the nodes were free",
        ),
        (
            "urgent job",
            f"started {_seconds(s.urgent_wait_s)} after submission, ran {_seconds(s.urgent_run_s)}",
        ),
        ("checkpoints on fs3", f"{len(s.checkpoint_write_s)} written; kept {kept}"),
        ("checkpoint stall", _spread(s.checkpoint_stall_s, "ms", 1e3, 1)),
        ("checkpoint write", _spread(s.checkpoint_write_s, "s")),
        (
            "all-reduce (hfreduce)",
            f"{_spread(s.allreduce_gbps, 'GB/s')} on {s.allreduce_bytes / 2**20:.2f} MiB of "
            "gradients",
        ),
        *([("host cut off", s.cut_off)] if s.cut_off else []),
        ("demo wall time", _seconds(s.wall_s)),
    ]


def plot(outcome: DemoOutcome, path: Path) -> Path:
    """Loss against step (the resumed run continues the curve) and step against time (the
    pause while the urgent job ran), with the suspend and the resume marked."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    train = outcome.train
    starts = train.metrics.of("start")
    suspends = train.metrics.of("suspend")
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    t0 = starts[0]["time"] if starts else 0.0
    for run, start in enumerate(starts):
        end = starts[run + 1]["time"] if run + 1 < len(starts) else float("inf")
        all_steps = train.metrics.of("step")
        points = [s for s in all_steps if start["time"] <= s["time"] < end]
        # A resumed run continues from its checkpoint's step: draw its loss from there.
        before = [s for s in all_steps if s["time"] < start["time"] and s["step"] == start["step"]]
        joined = before[-1:] + points
        label = "first run" if run == 0 else f"run {run} (resumed)"
        by_step.plot([p["step"] for p in joined], [p["loss"] for p in joined], label=label)
        by_time.plot([p["time"] - t0 for p in points], [p["step"] for p in points], label=label)
    for event in suspends:
        by_step.axvline(
            event["step"],
            color="tab:red",
            linestyle="--",
            label=f"suspended after step {event['step']}",
        )
        by_time.axvline(
            event["requested_at"] - t0, color="tab:red", linestyle="--", label="suspend requested"
        )
    if len(starts) > 1:
        by_step.axvline(
            starts[1]["step"],
            color="tab:green",
            linestyle=":",
            label=f"resumed from checkpoint of step {starts[1]['step']}",
        )
        by_time.axvline(starts[1]["time"] - t0, color="tab:green", linestyle=":", label="resumed")
    urgent = outcome.urgent.detail["runs"]
    if urgent and urgent[0].get("ended_at"):
        by_time.axvspan(
            urgent[0]["started_at"] - t0,
            urgent[0]["ended_at"] - t0,
            color="tab:orange",
            alpha=0.2,
            label="urgent job running",
        )
    by_step.set(xlabel="step", ylabel="training loss", title="loss: the resumed run continues")
    by_step.xaxis.get_major_locator().set_params(integer=True)
    by_time.set(
        xlabel="seconds since the job started",
        ylabel="step",
        title="progress: paused while the urgent job ran",
    )
    for ax in (by_step, by_time):
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.suptitle(
        "hai demo: tiny DeepSeek-V3, 2 nodes x 2 ranks, DDP over hfreduce, data "
        "and checkpoints on fs3"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
