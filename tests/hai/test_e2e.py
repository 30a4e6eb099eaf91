"""End to end with real processes: a local cluster, a preempted job that resumes."""

from __future__ import annotations

import pytest

from hai.errors import ForbiddenError, SpecError
from hai.rpc import ApiClient


@pytest.mark.slow
def test_preempted_job_checkpoints_and_resumes(cluster) -> None:  # type: ignore[no-untyped-def]
    client = cluster.client
    job, header, log_lines = cluster.describe, cluster.header, cluster.log_lines
    train_spec, wait_for = cluster.train_spec, cluster.wait_for
    me = client.call("WhoAmI")["name"]
    client.call("SetQuota", user=me, priority=50, nodes=2)
    low = client.call("Submit", spec=train_spec("low", 10, steps=60))["id"]
    first = header(low, 0)
    assert first["world"] == 2 and first["restart_count"] == 0 and first["resumed_from"] == 0
    assert {header(low, 0, 1)["node"], first["node"]} == {"node-0", "node-1"}
    # Preempted past its first steps, it must resume past step 0.
    wait_for("the low job to save step 5", lambda: "saved step 5" in log_lines(low, 0))
    high = client.call("Submit", spec=train_spec("high", 50, steps=3))["id"]
    wait_for("the high job to finish", lambda: job(high)["job"]["state"] == "succeeded")
    assert any(line.startswith("suspending at step") for line in log_lines(low, 0))
    # Both ranks of the low job saw the suspend, not only rank 0.
    assert any(line.startswith("suspending") for line in log_lines(low, 0, 1))
    wait_for("the low job to finish", lambda: job(low)["job"]["state"] == "succeeded", timeout=60)
    detail = job(low)
    assert [r["attempt"] for r in detail["runs"]] == [0, 1]
    assert detail["job"]["suspends"] == 1
    resumed = header(low, 1)
    assert resumed["restart_count"] == 1 and resumed["resumed_from"] > 0
    assert log_lines(low, 1)[-1] == "finished"
    # Never a partial gang: every run had both nodes.
    assert all(len(r["nodes"]) == 2 for r in detail["runs"])
    kinds = [e["kind"] for e in detail["events"]]
    assert kinds.index("suspend") < kinds.index("requeue")


@pytest.mark.slow
def test_bad_spec_and_foreign_stop_refused_over_rpc(cluster) -> None:  # type: ignore[no-untyped-def]
    client, job = cluster.client, cluster.describe
    train_spec, wait_for = cluster.train_spec, cluster.wait_for
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
        wait_for("the stop", lambda: job(mine)["job"]["state"] == "stopped")
    finally:
        eve.close()
