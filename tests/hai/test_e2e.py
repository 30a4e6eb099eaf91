"""End to end with real processes: a local cluster, a preempted job that resumes."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hai.cluster import down, up
from hai.errors import ForbiddenError, SpecError
from hai.rpc import ApiClient

TRAIN = str(Path(__file__).parent / "jobs" / "train.py")
FAST = {
    "HAI_SCHEDULER__PASS_INTERVAL_S": "0.2",
    "HAI_SCHEDULER__NODE_LEASE_S": "3",
    "HAI_SCHEDULER__KILL_GRACE_S": "1",
    "HAI_AGENT__HEARTBEAT_S": "0.2",
    "HAI_AGENT__KILL_GRACE_S": "1",
    "HAI_AGENT__HEALTH_INTERVAL_S": "3600",
    "HAI_POLICY__MIN_RUN_S": "0",
}


def wait_for(what: str, check: Callable[[], object], timeout: float = 40.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def cluster(state_dir: Path, free_port: Callable[[], int]) -> Iterator[tuple[ApiClient, Path]]:
    info = up(state_dir, nodes=2, gpus_per_node=1, port=free_port(), env=FAST)
    client = ApiClient(info.address, (state_dir / "token").read_text().strip())
    try:
        yield client, state_dir
    finally:
        client.close()
        down(state_dir)


def train_spec(name: str, priority: int, steps: int, **kw: object) -> dict:
    return {
        "name": name,
        "entrypoint": sys.executable,
        "arguments": [TRAIN, str(steps), "0.1", *kw.pop("extra", [])],
        "nodes": 2,
        "gpus_per_node": 1,
        "priority": priority,
        "suspend_grace_period": 20,
        **kw,
    }


def job(client: ApiClient, job_id: int) -> dict:
    return client.call("Describe", job_id=job_id)


def log_lines(state_dir: Path, job_id: int, attempt: int, rank: int = 0) -> list[str]:
    path = state_dir / "logs" / f"job-{job_id}" / f"run-{attempt}" / f"rank-{rank}.log"
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.slow
def test_preempted_job_checkpoints_and_resumes(cluster) -> None:  # type: ignore[no-untyped-def]
    client, state_dir = cluster
    me = client.call("WhoAmI")["name"]
    client.call("SetQuota", user=me, priority=50, nodes=2)
    low = client.call("Submit", spec=train_spec("low", 10, steps=60))["id"]
    wait_for("the low job to run", lambda: len(log_lines(state_dir, low, 0)) >= 1)
    first = json.loads(log_lines(state_dir, low, 0)[0])
    assert first["world"] == 2 and first["restart_count"] == 0 and first["resumed_from"] == 0
    assert {json.loads(log_lines(state_dir, low, 0, 1)[0])["node"], first["node"]} == {
        "node-0",
        "node-1",
    }
    time.sleep(1.0)
    high = client.call("Submit", spec=train_spec("high", 50, steps=3))["id"]
    wait_for("the high job to finish", lambda: job(client, high)["job"]["state"] == "succeeded")
    assert any(line.startswith("suspending at step") for line in log_lines(state_dir, low, 0))
    # Both ranks of the low job saw the suspend, not only rank 0.
    assert any(line.startswith("suspending") for line in log_lines(state_dir, low, 0, 1))
    wait_for(
        "the low job to finish", lambda: job(client, low)["job"]["state"] == "succeeded", timeout=60
    )
    detail = job(client, low)
    assert [r["attempt"] for r in detail["runs"]] == [0, 1]
    assert detail["job"]["suspends"] == 1
    resumed = json.loads(log_lines(state_dir, low, 1)[0])
    assert resumed["restart_count"] == 1 and resumed["resumed_from"] > 0
    assert log_lines(state_dir, low, 1)[-1] == "finished"
    # Never a partial gang: every run had both nodes.
    assert all(len(r["nodes"]) == 2 for r in detail["runs"])
    kinds = [e["kind"] for e in detail["events"]]
    assert kinds.index("suspend") < kinds.index("requeue")


@pytest.mark.slow
def test_bad_spec_and_foreign_stop_refused_over_rpc(cluster) -> None:  # type: ignore[no-untyped-def]
    client, state_dir = cluster
    with pytest.raises(SpecError) as info:
        client.call("Submit", spec={"name": "x", "nodes": -1})
    assert {p.split(":")[0] for p in info.value.problems} == {"entrypoint", "nodes"}
    token = client.call("AddUser", name="eve")
    eve = ApiClient(client.address, token)
    try:
        mine = client.call("Submit", spec=train_spec("mine", 10, steps=1000))["id"]
        with pytest.raises(ForbiddenError):
            eve.call("Stop", job_id=mine)
        with pytest.raises(PermissionError):
            eve.call("Drain", node="node-0")
        assert client.call("Stop", job_id=mine)["state"] in ("stopped", "running", "queued")
        wait_for("the stop", lambda: job(client, mine)["job"]["state"] == "stopped")
    finally:
        eve.close()
