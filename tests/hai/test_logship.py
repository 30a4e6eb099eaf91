"""Rank logs shipped to the server (hai.logship) against a real server in this process: who
may ship what, the size bound, offsets (a retry is idempotent, a hole is not written), a
shared state folder detected, and an agent with a folder of its own whose run is reported
finished only once the server has its last line."""

from __future__ import annotations

import base64
import json
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from hai.agent import Agent
from hai.config import load_config
from hai.errors import AuthError, ConfigError, ForbiddenError, NotFoundError
from hai.executor import LocalExecutor
from hai.files import private_dir
from hai.logship import CALL_BYTES, FOLDER_FILE
from hai.protocol import NodeInfo, rank_log, run_log_dir
from hai.rpc import ApiClient
from hai.server import Server

from ..waiting import wait_for


class Platform:
    def __init__(self, tmp_path: Path, port: int, rank_log_bytes: int = 1 << 30) -> None:
        self.config = load_config(
            env={},
            overrides={
                "server": {"port": port, "rank_log_bytes": rank_log_bytes},
                "scheduler": {"pass_interval_s": 0.1, "node_lease_s": 60},
                # run_as agent: the ranks run this test's Python, in root's 0700 home on CI.
                "agent": {"health_interval_s": 3600, "log_ship_interval_s": 0.1, "run_as": "agent"},
                "policy": {"min_run_s": 0},
            },
        )
        self.state = tmp_path / "server"
        self.server = Server(self.config, self.state)
        self.server.start()
        token = (self.state / "token").read_text().strip()
        self.admin = ApiClient(f"127.0.0.1:{port}", token)
        self.nodes = {
            name: ApiClient(self.admin.address, self.admin.call("AddNode", name=name)["token"])
            for name in ("node-0", "node-1")
        }

    def close(self) -> None:
        for client in [self.admin, *self.nodes.values()]:
            client.close()
        self.server.stop()

    def two_node_run(self) -> dict:
        """A run of a 2-node job on node-0 and node-1, registered by hand (no agent)."""
        for name, client in self.nodes.items():
            client.call("Register", **asdict(NodeInfo(name, f"a-{name}", gpus=1)))
        spec = {"name": "x", "entrypoint": "true", "nodes": 2, "gpus_per_node": 1}
        job = self.admin.call("Submit", spec=spec)["id"]
        detail = wait_for("the run", lambda: self.admin.call("Describe", job_id=job)["runs"])
        return detail[0]  # type: ignore[index]

    def ship(self, node: str, run: dict, rank: int, offset: int, data: bytes, **kw: object) -> dict:
        entry = {"run_id": run["id"], "rank": rank, "offset": offset}
        entry["data"] = base64.b64encode(data).decode()
        return self.nodes[node].call("AppendLogs", node=node, appends=[entry], **kw)

    def served(self, run: dict, rank: int) -> Path:
        return rank_log(self.state, run_log_dir(run["job_id"], run["attempt"]), rank)


@pytest.fixture
def platform(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[Platform]:
    p = Platform(tmp_path, free_port())
    try:
        yield p
    finally:
        p.close()


def test_a_node_ships_its_own_ranks_logs_once_in_order(platform: Platform) -> None:
    run = platform.two_node_run()
    first = run["nodes"].index("node-0")  # node-0's rank: its place among the run's nodes
    assert platform.ship("node-0", run, first, 0, b"hello\n") == {"shared": False, "sizes": [6]}
    # A retry (its answer lost) and an overlap add only what is new.
    assert platform.ship("node-0", run, first, 0, b"hello\n")["sizes"] == [6]
    assert platform.ship("node-0", run, first, 3, b"lo\nworld\n")["sizes"] == [12]
    # A hole is not written; the answer says where to go on from.
    assert platform.ship("node-0", run, first, 20, b"later\n")["sizes"] == [12]
    served = platform.served(run, first)
    assert served.read_bytes() == b"hello\nworld\n"
    assert stat.S_IMODE(served.stat().st_mode) == 0o600
    assert stat.S_IMODE(served.parent.stat().st_mode) == 0o700
    chunk = platform.admin.call("Logs", job_id=run["job_id"], rank=first)
    assert chunk["text"] == "hello\nworld\n"


def test_a_node_may_not_ship_others_logs_nor_too_much(platform: Platform) -> None:
    run = platform.two_node_run()
    mine, theirs = run["nodes"].index("node-0"), run["nodes"].index("node-1")
    with pytest.raises(ForbiddenError, match=f"may not ship rank {theirs}'s log"):
        platform.ship("node-0", run, theirs, 0, b"forged\n")
    with pytest.raises(ForbiddenError, match="may not act as node 'node-0'"):
        platform.nodes["node-1"].call("AppendLogs", node="node-0", appends=[])
    with pytest.raises(NotFoundError):
        platform.ship("node-0", {**run, "id": run["id"] + 100}, mine, 0, b"x")
    too_much = b"x" * (CALL_BYTES + 1)
    with pytest.raises(ConfigError, match=f"the limit is {CALL_BYTES} per call"):
        platform.ship("node-0", run, mine, 0, too_much)
    with pytest.raises(ConfigError, match="offset must be an integer 0 or more"):
        platform.ship("node-0", run, mine, -1, b"x")
    # A user's token is no node's.
    entry = {"run_id": run["id"], "rank": mine, "offset": 0, "data": ""}
    with pytest.raises(AuthError):
        platform.admin.call("AppendLogs", node="node-0", appends=[entry])
    assert not platform.served(run, theirs).exists() and not platform.served(run, mine).exists()
    # A node that was never part of the run.
    outsider = ApiClient(platform.admin.address, platform.admin.call("AddNode", name="n9")["token"])
    try:
        with pytest.raises(ForbiddenError, match="may not ship logs of run"):
            outsider.call("AppendLogs", node="n9", appends=[{**entry, "rank": 0}])
    finally:
        outsider.close()


def test_the_server_keeps_at_most_its_limit_of_a_log(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    platform = Platform(tmp_path, free_port(), rank_log_bytes=4096)
    try:
        _fill_past_the_limit(platform)
    finally:
        platform.close()


def _fill_past_the_limit(platform: Platform) -> None:
    run = platform.two_node_run()
    mine = run["nodes"].index("node-0")
    assert platform.ship("node-0", run, mine, 0, b"a" * 4000)["sizes"] == [4000]
    # Past the limit the rest is taken (the agent goes on) but not kept.
    assert platform.ship("node-0", run, mine, 4000, b"b" * 200)["sizes"] == [4200]
    assert platform.ship("node-0", run, mine, 4200, b"c" * 300)["sizes"] == [4500]
    assert platform.served(run, mine).read_bytes() == (
        b"a" * 4000 + b"b" * 96 + b"\n[hai: this log is cut at 4096 bytes; the rest is on node "
        b"node-0]\n"
    )


def test_an_agent_in_the_servers_folder_ships_nothing(platform: Platform) -> None:
    run = platform.two_node_run()
    mine = run["nodes"].index("node-0")
    served = platform.served(run, mine)
    served.parent.mkdir(parents=True)
    served.write_bytes(b"written by the rank\n")  # the very file the agent would ship
    folder = json.loads((platform.state / FOLDER_FILE).read_text())["folder"]
    reply = platform.ship("node-0", run, mine, 20, b"more\n", folder=folder)
    assert reply == {"shared": True, "sizes": [20]}
    # An agent that could not tell: what it ships the file has already, so nothing doubles.
    assert platform.ship("node-0", run, mine, 0, b"written by the rank\n")["sizes"] == [20]
    assert served.read_bytes() == b"written by the rank\n"


def test_a_run_is_reported_finished_only_once_its_last_line_reached_the_server(
    platform: Platform, tmp_path: Path
) -> None:
    """The agent has a folder of its own, as on another host; its rank prints a long log
    (more than one call carries) and exits at once."""
    client = platform.nodes["node-0"]
    folder = private_dir(tmp_path / "agent")  # as `hai agent` makes it
    # Shipping only when woken (a run starts, or its exit waits for its logs): reported
    # at its exit alone, the run's logs would not be on the server yet.
    config = platform.config.agent.model_copy(update={"log_ship_interval_s": 3600})
    agent = Agent("node-0", client, LocalExecutor(), folder, config, gpus=1)
    lines = 40_000  # ~1.3 MiB: two calls
    script = f"for i in range({lines}): print(f'line {{i:07d}} of the log')\nprint('last')"
    spec = {
        "name": "talk",
        "entrypoint": sys.executable,
        "arguments": ["-c", script],
        "nodes": 1,
        "gpus_per_node": 1,
    }
    try:
        job = platform.admin.call("Submit", spec=spec)["id"]

        def done() -> bool:
            agent.step()
            return platform.admin.call("Describe", job_id=job)["job"]["state"] == "succeeded"

        wait_for("the job to succeed", done)
        text, offset = "", 0
        while chunk := platform.admin.call("Logs", job_id=job, rank=0, offset=offset)["text"]:
            text, offset = text + chunk, offset + len(chunk.encode())
        assert text.endswith("last\n") and text.count("\n") == lines + 1
        assert agent.shipper.shared is False
    finally:
        agent.shipper.close()
        agent.executor.shutdown()
