"""`hai demo` end to end at a small step count: real fs3 and platform processes, a real
preemption, and the resumed loss curve checked step for step against an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from hai.cli import main
from hai.demo import DemoOptions, run_demo, stop
from hai.demo.metrics import MetricsTail
from hai.demo.scenario import CHECKPOINT_URL, train_config
from hfreduce.arena import SHM_DIR, SHM_PREFIX
from hfreduce.launch import run_ranks

from .demo_support import processes_under

# Long enough after the urgent job's submission (step 6) that the preemption lands midway
# even where a step takes 0.1 s: the suspend travels a scheduling pass and a heartbeat.
OPTIONS = DemoOptions(steps=40, preempt_at=0.15, checkpoint_every=4, urgent_steps=2)


def _train_rank(config_path: str) -> int:
    from deepseek.train import main

    return main([config_path])


def _uninterrupted_losses(tmp_path: Path, fs3_address: str) -> dict[int, float]:
    """The demo's training job, run straight through on the same 2 x 2 layout."""
    metrics = tmp_path / "reference.jsonl"
    config = train_config(OPTIONS, steps=OPTIONS.steps, metrics=metrics, checkpoints=False)
    path = tmp_path / "reference.yaml"
    path.write_text(yaml.safe_dump(config))
    outcomes = run_ranks(
        _train_rank,
        nodes=2,
        ranks_per_node=2,
        args=(str(path),),
        env={"FS3_CLUSTER": fs3_address},
        timeout=240,
    )
    assert [o.value for o in outcomes] == [0, 0, 0, 0]
    tail = MetricsTail(metrics)
    tail.poll()
    return {e["step"]: e["loss"] for e in tail.of("step")}


def _inspect_with_the_cli(root: Path, fs3_address: str) -> None:
    env = {"HAI_STATE_DIR": str(root / "hai"), "FS3_CLUSTER": fs3_address}
    runner = CliRunner(env=env)
    listed = runner.invoke(main, ["ls", "--all", "--json"])
    assert listed.exit_code == 0, listed.output
    jobs = {j["name"]: j for j in json.loads(listed.output)}
    assert jobs["train-v3-tiny"]["state"] == jobs["urgent-v3-tiny"]["state"] == "succeeded"
    logs = runner.invoke(main, ["logs", str(jobs["train-v3-tiny"]["id"]), "--rank", "0"])
    assert logs.exit_code == 0 and "resumed from" in logs.output
    files = runner.invoke(main, ["fs3", "ls", "-R", "fs3:///"])
    assert files.exit_code == 0, files.output
    assert "/datasets/pydoc/part-000.parquet" in files.output.split()
    assert f"/checkpoints/demo/step-{OPTIONS.steps:012d}/" in files.output.split()


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_demo_preempts_resumes_exactly_and_cleans_up(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    summary = run_demo(root, OPTIONS, keep=True)
    try:
        assert summary.steps == OPTIONS.steps and summary.runs == 2 and summary.suspends == 1
        assert summary.resumed_from_step == summary.suspended_at_step
        assert 0 < summary.suspended_at_step < OPTIONS.steps
        assert summary.loss_end < summary.loss_start
        assert summary.suspend_to_ack_s is not None and summary.suspend_to_ack_s > 0
        assert summary.allreduce_gbps and all(g > 0 for g in summary.allreduce_gbps)
        assert json.loads((root / "demo" / "summary.json").read_text())["runs"] == 2
        assert (root / "demo" / "loss.png").stat().st_size > 10_000

        # The checkpoints are on fs3 and load: the newest is the last step's.
        fs3_address = (root / "fs3" / "address").read_text().strip()
        os.environ["FS3_CLUSTER"] = fs3_address
        from haiscale.checkpoint import load_latest

        step, state = load_latest(CHECKPOINT_URL)
        assert step == OPTIONS.steps and max(summary.checkpoints) == OPTIONS.steps
        assert any(name.endswith("embed_tokens.weight") for name in state["model"])

        # Exact resume: every step of the preempted job equals the uninterrupted run's.
        demo = MetricsTail(root / "demo" / "train-metrics.jsonl")
        demo.poll()
        demo_losses: dict[int, float] = {}
        for event in demo.of("step"):  # a step run twice (after the checkpoint) must agree
            assert demo_losses.setdefault(event["step"], event["loss"]) == event["loss"]
        assert _uninterrupted_losses(tmp_path, fs3_address) == demo_losses

        # Kept running, everything is visible through the CLI.
        _inspect_with_the_cli(root, fs3_address)
    finally:
        os.environ.pop("FS3_CLUSTER", None)
        stop(root)
    assert processes_under(root) == []
    assert list(SHM_DIR.glob(f"{SHM_PREFIX}*")) == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_stops_everything(tmp_path: Path) -> None:
    root = tmp_path / "interrupted"
    demo = subprocess.Popen(
        [sys.executable, "-m", "hai", "demo", "--steps", "500", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = []
        assert demo.stdout is not None
        for line in demo.stdout:  # not a terminal: one plain line per change
            output.append(line)
            if "train-v3-tiny (NORMAL): running" in line:
                break
        assert output and "running" in output[-1], "".join(output)
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130, rest
    assert "interrupted; every process it started is stopped" in rest
    assert processes_under(root) == []
    assert list(SHM_DIR.glob(f"{SHM_PREFIX}*")) == []
