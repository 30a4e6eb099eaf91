"""The platform across test hosts that share no folder (docs/hosts.md): the server on host 1,
agents on hosts 2 and 3, each with its own state folder.

A two-node gloo job (``jobs/gloo_train.py``) all-reduces across the hosts with MASTER_ADDR
its node rank 0's host address. Its logs reach the server over the network (`hai logs` on
host 1 shows both ranks); a higher-priority job preempts it over the network; host 3 cut
off is dead within its lease, the job requeued, and it resumes from its checkpoint when
host 3 is back. The test process is outside every host's network, so it calls the server
through ``hosts_proxy`` on host 1.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from testhosts import Hosts

from ..waiting import wait_for
from .conftest import FAST

pytestmark = pytest.mark.hosts

REPO = Path(__file__).resolve().parents[2]
GLOO_TRAIN = str(Path(__file__).parent / "jobs" / "gloo_train.py")
PORT = 7700  # each host has its own network: no other process holds it there
LEASE_S = 6.0
STEPS, STEP_S = 200, 0.1
START_S = 90  # processes importing torch on a loaded 2-core machine; only bounds waits
ENV = {
    **FAST,
    "HAI_SCHEDULER__NODE_LEASE_S": str(LEASE_S),
    "HAI_AGENT__HEARTBEAT_S": "0.5",
    "HAI_AGENT__RPC_TIMEOUT_S": "3",
    "HAI_AGENT__LOG_SHIP_INTERVAL_S": "0.5",
}


class Proxy:
    """The server's API as host 1 reaches it (``hosts_proxy``)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def call(self, method: str, **body: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"method": method, "body": body}) + "\n")
        self.proc.stdin.flush()
        answer = json.loads(self.proc.stdout.readline())
        if "error" in answer:
            raise AssertionError(f"{method}: {answer['error']}")
        return answer["ok"]

    def log(self, job_id: int, rank: int, attempt: int) -> str:
        """All of the rank's log of run ``attempt`` the server has."""
        text, offset = "", 0
        while True:
            chunk = self.call("Logs", job_id=job_id, rank=rank, offset=offset, attempt=attempt)
            if not chunk["text"] or chunk["attempt"] != attempt:
                return text
            text, offset = text + chunk["text"], chunk["offset"]

    def header(self, job_id: int, rank: int, attempt: int) -> dict:
        """The JSON line gloo_train.py prints once its process group is up."""
        first = wait_for(
            f"rank {rank} of job {job_id} run {attempt} to start",
            lambda: _lines(self.log(job_id, rank, attempt), '{"rank"'),
            timeout=START_S,
            interval=0.5,
        )
        return json.loads(first[0])  # type: ignore[index]

    def job(self, job_id: int) -> dict:
        return self.call("Describe", job_id=job_id)

    def node(self, name: str) -> dict:
        return next(n for n in self.call("Nodes") if n["name"] == name)


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def platform(make_hosts, tmp_path: Path) -> Iterator[tuple[Hosts, Proxy, list[Path]]]:  # type: ignore[no-untyped-def]
    """Hosts 1-3 with the server on 1 and agents node-2 and node-3 on 2 and 3; yields the
    hosts, the proxy and each host's state folder (index 0: host 1's)."""
    hosts = make_hosts(3)
    server = f"{hosts[1].address}:{PORT}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("HAI_")}
    env = {**base, **ENV}
    folders = [hosts[i].dir / "hai" for i in (1, 2, 3)]
    procs: list[subprocess.Popen] = []

    def start(host: int, argv: list[str], name: str, **extra: Any) -> subprocess.Popen:
        out = (tmp_path / f"{name}.log").open("w")  # the test process reads it on failure
        procs.append(
            hosts.popen(host, argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, **extra)
        )
        return procs[-1]

    hai = [sys.executable, "-m", "hai"]
    try:
        argv = [*hai, "server", "--state-dir", str(folders[0]), "--host", hosts[1].address]
        start(1, [*argv, "--port", str(PORT)], "server", env=env)
        token_file = folders[0] / "token"
        wait_for("the server's admin token", token_file.exists, timeout=START_S)
        proxied = {**env, "HAI_SERVER": server, "HAI_TOKEN": token_file.read_text().strip()}
        procs.append(
            hosts.popen(
                1,
                [sys.executable, "-m", "tests.hai.hosts_proxy"],
                cwd=REPO,
                env=proxied,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
        proxy = Proxy(procs[-1])
        wait_for("the server to answer", lambda: _answers(proxy), timeout=START_S, interval=0.5)
        for i in (2, 3):
            node_token = proxy.call("AddNode", name=f"node-{i}")["token"]
            argv = [*hai, "agent", "--name", f"node-{i}", "--server", server, "--gpus", "1"]
            start(
                i,
                [*argv, "--state-dir", str(folders[i - 1])],
                f"agent-{i}",
                env={**env, "HAI_NODE_TOKEN": node_token},
            )
        wait_for(
            "both agents to register",
            lambda: (
                {n["name"]: n["state"] for n in proxy.call("Nodes")}
                == {"node-2": "ready", "node-3": "ready"}
            ),
            timeout=START_S,
            interval=0.5,
        )
        yield hosts, proxy, folders
    finally:
        for host in (2, 3):
            hosts.restore(host)  # a failed test may leave one cut off: its agent must stop
        _stop(procs[::-1])


def _answers(proxy: Proxy) -> bool:
    try:
        proxy.call("WhoAmI")
    except AssertionError:
        return False  # not listening yet
    return True


def _spec(name: str, priority: int, steps: int) -> dict:
    return {
        "name": name,
        "entrypoint": sys.executable,
        "arguments": [GLOO_TRAIN, str(steps), str(STEP_S)],
        "nodes": 2,
        "gpus_per_node": 1,
        "priority": priority,
        "suspend_grace_period": 30,
        "environment": {"GLOO_SOCKET_IFNAME": "eth0"},
    }


def _lines(log: str, start: str) -> list[str]:
    """The log's lines that start with ``start`` (torch's warnings come between)."""
    return [line for line in log.splitlines() if line.startswith(start)]


def _saved(log: str) -> list[int]:
    return [int(line.split()[-1]) for line in _lines(log, "saved step")]


@pytest.mark.slow
def test_a_job_across_hosts_is_preempted_survives_a_cut_host_and_logs_reach_the_server(
    platform: tuple[Hosts, Proxy, list[Path]],
) -> None:
    hosts, proxy, folders = platform
    addresses = {f"node-{i}": hosts[i].address for i in (2, 3)}
    me = proxy.call("WhoAmI")["name"]
    proxy.call("SetQuota", user=me, priority=50, nodes=2)
    low = proxy.call("Submit", spec=_spec("low", 10, STEPS))["id"]

    # Both ranks started, on both hosts, with node rank 0's host address as MASTER_ADDR.
    first = [proxy.header(low, rank, 0) for rank in (0, 1)]
    assert {h["node"] for h in first} == {"node-2", "node-3"}
    assert {h["master"] for h in first} == {addresses[first[0]["node"]]}
    assert [n["address"] for n in proxy.call("Nodes")] == [addresses["node-2"], addresses["node-3"]]

    # Preempted over the network: it checkpoints at the suspend and resumes there.
    wait_for("a first checkpoint", lambda: _saved(proxy.log(low, 0, 0)), timeout=START_S)
    high = proxy.call("Submit", spec=_spec("high", 50, 3))["id"]
    wait_for(
        "the high job to succeed",
        lambda: proxy.job(high)["job"]["state"] == "succeeded",
        timeout=START_S,
        interval=0.5,
    )
    assert "suspending at step" in proxy.log(low, 1, 0)  # rank 1's log, from host 2 or 3
    resumed = proxy.header(low, 0, 1)
    assert resumed["restart_count"] == 1 and resumed["resumed_from"] > 0

    # Host 3 cut off: dead within its lease, the job requeued (its other rank stopped).
    at_least = resumed["resumed_from"] + 5
    wait_for(
        f"a checkpoint past step {at_least}",
        lambda: max(_saved(proxy.log(low, 0, 1)), default=0) >= at_least,
        timeout=START_S,
    )
    hosts.cut(3)
    cut_at = time.monotonic()
    wait_for(
        "node-3 to be dead",
        lambda: proxy.node("node-3")["state"] == "dead",
        timeout=LEASE_S + 30,
        interval=0.2,
    )
    dead_after = time.monotonic() - cut_at
    # Its lease, a scheduling pass and this poll; slack for a loaded machine.
    assert dead_after <= LEASE_S + 10, f"node-3 was dead {dead_after:.1f}s after the cut"
    detail = wait_for(
        "the job to be requeued",
        lambda: (d := proxy.job(low))["job"]["state"] == "queued" and d,
        timeout=30,
        interval=0.5,
    )
    assert detail["runs"][-1]["attempt"] == 1 and detail["runs"][-1]["state"] != "running"
    last_checkpoint = max(_saved(proxy.log(low, 0, 1)))
    cut_run = detail["runs"][-1]["id"]

    # Back: node-3 is ready again, and the job resumes from its checkpoint on both hosts.
    hosts.restore(3)
    wait_for(
        "node-3 to come back",
        lambda: proxy.node("node-3")["state"] == "ready",
        timeout=START_S,
        interval=0.5,
    )
    again = [proxy.header(low, rank, 2) for rank in (0, 1)]
    assert {h["node"] for h in again} == {"node-2", "node-3"}
    assert again[0]["restart_count"] == 2 and again[0]["resumed_from"] >= last_checkpoint
    # Its agent, back, stopped the rank the cut left running on host 3.
    wait_for(f"run {cut_run}'s ranks to be gone", lambda: not _ranks_of(cut_run), timeout=30)
    wait_for(
        "the low job to succeed",
        lambda: proxy.job(low)["job"]["state"] == "succeeded",
        timeout=START_S + STEPS * STEP_S,
        interval=0.5,
    )
    # Consistent checkpoints: the weight is the one of an uninterrupted run.
    expected = 1.0 - 1e-3 * 3 * STEPS * (STEPS + 1) / 2
    for rank in (0, 1):
        [last] = _lines(proxy.log(low, rank, 2), "finished w=")
        assert float(last.split("=")[1]) == pytest.approx(expected, abs=1e-9)

    # `hai logs` on host 1 reads both ranks' whole logs from the server's own folder,
    # which holds them privately.
    for rank, follow in ((0, []), (1, ["-f"])):  # -f of a finished job ends at its end
        shown = hosts.run(
            1,
            [sys.executable, "-m", "hai", "logs", *follow, str(low), "--rank", str(rank)],
            cwd=REPO,
            env={**os.environ, "HAI_SERVER": f"{hosts[1].address}:{PORT}", **_token(folders[0])},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        assert json.loads(_lines(shown.stdout, '{"rank"')[0])["rank"] == rank
        assert _lines(shown.stdout, "finished w=")
        served = folders[0] / "logs" / f"job-{low}" / "run-2" / f"rank-{rank}.log"
        assert stat.S_IMODE(served.stat().st_mode) == 0o600
        assert stat.S_IMODE(served.parent.stat().st_mode) == 0o700


def _ranks_of(run_id: int) -> list[int]:
    """Pids of live processes of run ``run_id`` (by their HAI_RUN_ID) on any host: the
    hosts share this machine's processes."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("HAI_RUN_ID") == str(run_id) and proc.status() != "zombie":
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _token(folder: Path) -> dict[str, str]:
    return {"HAI_TOKEN": (folder / "token").read_text().strip()}
