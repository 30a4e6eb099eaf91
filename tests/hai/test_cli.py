"""The hai command line as users run it: bench forwarding, job commands on a real cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

HAI = Path(sys.executable).with_name("hai")


def test_bench_allreduce_forwards_its_arguments() -> None:
    result = subprocess.run(
        [str(HAI), "bench", "allreduce", "--max-size", "4096", "--layouts", "1x2", "--iters", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "1x2 ranks" in line]
    assert len(lines) == 1 and lines[0].split()[0:2] == ["4", "KiB"]


def test_bench_passes_the_exit_status_through() -> None:
    result = subprocess.run(
        [str(HAI), "bench", "allreduce", "--no-such-option"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-option" in result.stderr


def hai(cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    """Runs the hai command against the cluster, found through its state folder as users do."""
    # A wide terminal, so rich's tables (`hai top`) fold no cell across lines.
    env = {**os.environ, "HAI_STATE_DIR": str(cluster.state_dir), "COLUMNS": "200"}
    env.pop("HAI_SERVER", None)
    return subprocess.run(
        [str(HAI), *args], capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.mark.slow
def test_top_suspend_resume_and_logs_follow(cluster) -> None:  # type: ignore[no-untyped-def]
    job = cluster.client.call("Submit", spec=cluster.train_spec("follow", 10, steps=1000))["id"]
    state = lambda: cluster.describe(job)["job"]["state"]  # noqa: E731
    first = cluster.header(job, 0, 1)
    env = {**os.environ, "HAI_STATE_DIR": str(cluster.state_dir)}
    argv = [str(HAI), "logs", str(job), "-f", "--rank", "1"]
    follow = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    printed: list[str] = []  # what -f printed so far, line by line

    def read() -> None:
        for line in follow.stdout:  # type: ignore[union-attr]
            printed.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        top = hai(cluster, "top", "-n", "2", "--interval", "0.2")
        assert top.returncode == 0, top.stderr
        for word in ("node-0", "node-1", "follow", "running"):
            assert word in top.stdout, top.stdout

        assert hai(cluster, "suspend", str(job)).returncode == 0
        cluster.wait_for("the suspend", lambda: state() == "suspended")
        assert hai(cluster, "resume", str(job)).stdout.strip() == f"job {job}: queued"
        resumed = cluster.header(job, 1, 1)
        assert resumed["restart_count"] == 1 and resumed["resumed_from"] > 0
        # The first run's header and suspend line, then the resumed run's header.
        cluster.wait_for("hai logs -f to print the resumed run", lambda: len(printed) >= 3)
        assert follow.poll() is None  # still following: the job runs on
        assert hai(cluster, "stop", str(job)).returncode == 0
        # -f returns by itself once the job is over, having printed both runs in order.
        follow.wait(timeout=60)
        reader.join(timeout=60)
    finally:
        follow.kill()
    assert follow.returncode == 0
    lines = [line.rstrip("\n") for line in printed]
    assert json.loads(lines[0]) == first and lines[1].startswith("suspending at step")
    assert json.loads(lines[2]) == resumed
    listed = json.loads(hai(cluster, "ls", "-a", "--json").stdout)
    assert [(j["id"], j["state"]) for j in listed] == [(job, "stopped")]
