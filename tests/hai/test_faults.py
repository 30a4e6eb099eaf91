"""Fault cases with real processes: a killed agent, a job ignoring suspend, a server restart.

(Bad specs and a user stopping another's job are in test_e2e.py and test_scheduler.py.)
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from hai.cluster import restart_server
from hai.errors import HaiError

pytestmark = pytest.mark.slow


def _live_run(cluster, job_id: int) -> dict | None:  # type: ignore[no-untyped-def]
    runs = [r for r in cluster.describe(job_id)["runs"] if r["state"] != "done"]
    return runs[0] if runs else None


def test_killed_agent_requeues_its_jobs(cluster) -> None:  # type: ignore[no-untyped-def]
    spec = cluster.train_spec("one", 10, steps=1000, nodes=1)
    job = cluster.client.call("Submit", spec=spec)["id"]
    cluster.header(job, 0)
    node = _live_run(cluster, job)["nodes"][0]
    os.kill(cluster.info.pids[node], signal.SIGKILL)
    cluster.wait_for(
        "the node to be declared dead",
        lambda: any(
            n["name"] == node and n["state"] == "dead" for n in cluster.client.call("Nodes")
        ),
    )
    cluster.wait_for(
        "the job to run again",
        lambda: (
            len(cluster.describe(job)["runs"]) == 2
            and cluster.describe(job)["job"]["state"] == "running"
        ),
    )
    detail = cluster.describe(job)
    assert detail["runs"][0]["state"] == "done" and detail["runs"][1]["nodes"] != [node]
    assert "died" in detail["runs"][0]["reason"]
    cluster.header(job, 1)  # the resumed run really started on the surviving node


def test_job_ignoring_suspend_is_killed_at_grace_and_requeued(cluster) -> None:  # type: ignore[no-untyped-def]
    me = cluster.client.call("WhoAmI")["name"]
    cluster.client.call("SetQuota", user=me, priority=50, nodes=2)
    stubborn = cluster.train_spec(
        "stubborn", 10, steps=1000, suspend_grace_period=1, extra=["--ignore-suspend"]
    )
    low = cluster.client.call("Submit", spec=stubborn)["id"]
    cluster.header(low, 0)
    high = cluster.client.call("Submit", spec=cluster.train_spec("high", 50, steps=3))["id"]
    cluster.wait_for(
        "the high job to finish", lambda: cluster.describe(high)["job"]["state"] == "succeeded"
    )
    first = cluster.describe(low)["runs"][0]
    assert first["state"] == "done" and not first["acked"]
    assert first["exit_code"] in (-signal.SIGTERM, -signal.SIGKILL)
    events = [e["message"] for e in cluster.describe(low)["events"]]
    assert any("grace period ran out" in m for m in events)
    cluster.wait_for(
        "the low job to resume",
        lambda: (
            cluster.describe(low)["job"]["state"] == "running"
            and len(cluster.describe(low)["runs"]) == 2
        ),
    )
    cluster.client.call("Stop", job_id=low)


def test_server_restart_keeps_running_jobs(cluster) -> None:  # type: ignore[no-untyped-def]
    job = cluster.client.call("Submit", spec=cluster.train_spec("steady", 10, steps=50))["id"]
    cluster.header(job, 0)
    before = _live_run(cluster, job)
    pid = cluster.info.pids["server"]
    os.kill(pid, signal.SIGKILL)
    cluster.wait_for("the server to exit", lambda: _gone(pid))
    time.sleep(1.0)  # agents keep retrying; the ranks keep running meanwhile
    restart_server(cluster.state_dir, cluster.env)
    cluster.wait_for(
        "the job to finish", lambda: _call_or_none(cluster, job) == "succeeded", timeout=90
    )
    detail = cluster.describe(job)
    assert [r["id"] for r in detail["runs"]] == [before["id"]]  # not lost, not doubled
    assert cluster.log_lines(job, 0)[-1] == "finished"


def _gone(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
        os.kill(pid, 0)
    except (ChildProcessError, ProcessLookupError):
        return True
    return False


def _call_or_none(cluster, job: int) -> str | None:  # type: ignore[no-untyped-def]
    try:
        return cluster.describe(job)["job"]["state"]
    except HaiError:
        return None  # the new server is still starting
