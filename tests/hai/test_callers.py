"""Three kinds of caller, attacked on a real local cluster by a second account (uid 65534).

User bob holds a plain user token and tries to act as a node (register a fake one, report
ann's running run as succeeded); a node's credential tries to act as another node; a run
token and a user token try each other's calls. Each is refused and ann's job runs on. Then
the admin commands: `hai nodes add/rm`, `hai users ls/rm/rotate`.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import psutil
import pytest

from hai.auth import RunTokens
from hai.credentials import agent_client, credential_file
from hai.protocol import NodeInfo
from hai.rpc import ApiClient
from hai.store import SqlStore, sqlite_url

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
# Calls one method as the second account and prints the error's type and text, or "ok".
CALL = """
import json, sys
from hai.errors import HaiError
from hai.rpc import ApiClient
address, token, method, body = sys.argv[1:]
try:
    ApiClient(address, token).call(method, **json.loads(body))
    print("ok")
except HaiError as err:
    print(f"{type(err).__name__}: {err}")
"""


def _as_nobody(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NOBODY, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HAI_STATE_DIR": "/nonexistent", **env},
        cwd="/",
    )


def _call_as_nobody(address: str, token: str, method: str, /, **body: object) -> str:
    """``method`` called by uid 65534 with ``token``: "ok" or "ErrorType: message"."""
    done = _as_nobody([sys.executable, "-c", CALL, address, token, method, json.dumps(body)], {})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _hai_as_nobody(address: str, token: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {"HAI_SERVER": address, "HAI_TOKEN": token}
    return _as_nobody([sys.executable, "-m", "hai", *argv], env)


def _hai(address: str, token: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HAI_SERVER": address, "HAI_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "hai", *argv], capture_output=True, text=True, timeout=60, env=env
    )


def _sleeper() -> dict:
    return {
        "name": "long",
        "entrypoint": "sleep",  # on any account's PATH, whichever the ranks run as
        "arguments": ["600"],
        "nodes": 1,
        "gpus_per_node": 1,
    }


def _beat(node: str, agent_id: str, run_id: int, exit_code: int = 0) -> dict:
    runs = [{"run_id": run_id, "exit_code": exit_code, "acked": False, "reason": ""}]
    return {"node": node, "agent_id": agent_id, "runs": runs, "health_failures": []}


def _ended(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE  # nothing here may reap it
    except psutil.NoSuchProcess:
        return True


def _ranks_of(run_id: int) -> list[int]:
    """Pids of live processes started for run ``run_id`` (by their HAI_RUN_ID)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("HAI_RUN_ID") == str(run_id) and not _ended(proc):
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.mark.slow
def test_only_the_right_caller_can_act(cluster) -> None:  # type: ignore[no-untyped-def]
    admin = cluster.client
    address = admin.address
    ann = ApiClient(address, admin.call("AddUser", name="ann"))
    bob = admin.call("AddUser", name="bob")
    try:
        job = ann.call("Submit", spec=_sleeper())["id"]
        cluster.wait_for(
            f"job {job} to run",
            lambda: ann.call("Describe", job_id=job)["job"]["state"] == "running",
        )
        run = ann.call("Describe", job_id=job)["runs"][-1]
        node = run["nodes"][0]
        other = "node-1" if node == "node-0" else "node-0"
        agent_ids = {n["name"]: n["agent_id"] for n in admin.call("Nodes")}

        def still_running() -> None:
            detail = ann.call("Describe", job_id=job)
            assert detail["job"]["state"] == "running"
            assert [r["state"] for r in detail["runs"]] == ["running"]

        # `hai up` gave each agent its own credential, and none of them the admin's token.
        for name in ("node-0", "node-1"):
            assert stat.S_IMODE(credential_file(cluster.state_dir, name).stat().st_mode) == 0o600
        for pid in (cluster.info.pids["node-0"], cluster.info.pids["node-1"]):
            assert b"HAI_TOKEN=" not in Path(f"/proc/{pid}/environ").read_bytes()

        # A user token poses as a node: a fake 8-GPU node, a forged report of ann's run.
        fake = asdict(NodeInfo("fake", "f00", gpus=8))
        assert _call_as_nobody(address, bob, "Register", **fake) == (
            "AuthError: bob's user token may not act as a node: node calls need node fake's "
            "credential (`hai nodes add fake` issues one)"
        )
        assert "fake" not in {n["name"] for n in admin.call("Nodes")}
        forged = _beat(node, agent_ids[node], run["id"])
        assert _call_as_nobody(address, bob, "Heartbeat", **forged).startswith(
            f"AuthError: bob's user token may not act as a node: node calls need node {node}'s"
        )
        still_running()

        # One node's credential poses as another.
        own = credential_file(cluster.state_dir, other).read_text().strip()
        assert _call_as_nobody(address, own, "Heartbeat", **forged) == (
            f"ForbiddenError: the credential of node '{other}' may not act as node '{node}'"
        )
        still_running()

        # A run token for a user call; a user token for a run's call.
        store = SqlStore(sqlite_url(cluster.state_dir))
        try:
            run_token = RunTokens(store).issue(run["id"])
        finally:
            store.close()
        assert _call_as_nobody(address, run_token, "List") == (
            f"AuthError: this is run {run['id']}'s token; user calls need a user token "
            "(`hai users add` gives one)"
        )
        assert _call_as_nobody(address, bob, "GetWholeLifeState").startswith(
            "AuthError: not a run token"
        )

        # A node of its own reports ann's run, which is not on it: ignored.
        joined = _hai(address, admin.token, "nodes", "add", "intruder")
        assert joined.returncode == 0, joined.stderr
        token = joined.stdout.strip()
        assert "HAI_NODE_TOKEN=<the token> hai agent --name intruder" in joined.stderr
        assert (
            _call_as_nobody(address, token, "Register", **asdict(NodeInfo("intruder", "i1")))
            == "ok"
        )
        assert (
            _call_as_nobody(address, token, "Heartbeat", **_beat("intruder", "i1", run["id"]))
            == "ok"
        )
        still_running()
        again = _hai(address, admin.token, "nodes", "add", "intruder")
        assert "intruder's earlier credential is revoked" in again.stderr
        assert _call_as_nobody(
            address, token, "Heartbeat", **_beat("intruder", "i1", 0)
        ).startswith("AuthError: an unknown token may not act as a node")

        # Removing ann's node: its credential is refused, the node is gone, the job requeued.
        removed = _hai(address, admin.token, "nodes", "rm", node)
        assert removed.returncode == 0, removed.stderr
        assert removed.stdout.splitlines() == [
            f"{node} removed, its credential revoked; an agent still running there stops its "
            "ranks and exits",
            f"job {job} lost its run on {node}, as when a node dies: now queued",
        ]
        mine = credential_file(cluster.state_dir, node).read_text().strip()
        assert _call_as_nobody(address, mine, "Heartbeat", **forged).startswith(
            "AuthError: an unknown token may not act as a node"
        )
        assert node not in {n["name"] for n in admin.call("Nodes")}
        # Its agent, refused, ends the removed run's ranks and exits: the job runs elsewhere.
        agent = psutil.Process(cluster.info.pids[node])
        cluster.wait_for(f"{node}'s agent to exit", lambda: _ended(agent))
        assert _ranks_of(run["id"]) == []
        log = (cluster.state_dir / "logs" / f"{node}.log").read_text()
        assert f"{node}: refused by the server, ranks stopped: an unknown token" in log
    finally:
        ann.close()


@pytest.mark.slow
def test_users_are_listed_rotated_and_removed(cluster) -> None:  # type: ignore[no-untyped-def]
    admin = cluster.client
    address = admin.address
    me = admin.call("WhoAmI")["name"]
    bob = admin.call("AddUser", name="bob")

    listed = _hai(address, admin.token, "users", "ls", "--json")
    users = [{"name": "bob", "role": "user"}, {"name": me, "role": "admin"}]
    assert json.loads(listed.stdout) == sorted(users, key=lambda u: u["name"])
    refused = _hai_as_nobody(address, bob, "users", "ls")
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [
        "Error: listing users needs the admin role; 'bob' is a user"
    ]

    rotated = _hai_as_nobody(address, bob, "users", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    new = rotated.stdout.strip()
    assert rotated.stderr.strip() == "bob's old token no longer works"
    old = _hai_as_nobody(address, bob, "whoami")
    assert old.returncode != 0 and old.stderr.strip().startswith("Error: unknown token")
    assert _hai_as_nobody(address, new, "whoami").stdout.strip() == "bob (user)"
    other = _hai_as_nobody(address, new, "users", "rotate", me)
    assert other.returncode != 0
    assert (
        other.stderr.strip()
        == f"Error: rotating {me!r}'s token needs the admin role; 'bob' is a user"
    )

    last = _hai(address, admin.token, "users", "rm", me)
    assert last.returncode != 0
    assert last.stderr.strip().splitlines() == [
        f"Error: {me!r} is the last admin; add another (`hai users add NAME --admin`) first"
    ]
    gone = _hai(address, admin.token, "users", "rm", "bob")
    assert gone.stdout.strip() == "removed bob (user); their token no longer works"
    assert _hai_as_nobody(address, new, "whoami").returncode != 0


def test_an_agent_with_an_admin_token_enrols_once(tmp_path: Path, free_port, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from hai.config import load_config
    from hai.server import Server

    config = load_config(env={}, overrides={"server": {"port": free_port()}})
    server = Server(config, tmp_path / "server")
    server.start()
    admin = (tmp_path / "server" / "token").read_text().strip()
    node_dir = tmp_path / "node"  # the agent's own folder: it shares nothing with the server
    monkeypatch.setenv("HAI_TOKEN", admin)
    monkeypatch.delenv("HAI_NODE_TOKEN", raising=False)
    address = f"127.0.0.1:{config.server.port}"
    try:
        client = agent_client(address, "gpu-9", node_dir, 5.0)
        client.call("Register", **asdict(NodeInfo("gpu-9", "a9", gpus=2)))
        saved = credential_file(node_dir, "gpu-9")
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        assert client.token == saved.read_text().strip() != admin
        client.close()
        # Restarted, it calls with the saved credential and never uses the admin token.
        monkeypatch.setenv("HAI_TOKEN", "not-a-token")
        again = agent_client(address, "gpu-9", node_dir, 5.0)
        assert again.token == saved.read_text().strip()
        again.call("Register", **asdict(NodeInfo("gpu-9", "a9", gpus=2)))
        again.close()
        assert [n.name for n in server.store.list_nodes()] == ["gpu-9"]
        # A credential given in the environment leaves it: the agent's ranks inherit it.
        monkeypatch.setenv("HAI_NODE_TOKEN", "given")
        given = agent_client(address, "gpu-9", node_dir, 5.0)
        given.close()
        assert given.token == "given" and "HAI_NODE_TOKEN" not in os.environ
    finally:
        server.stop()
