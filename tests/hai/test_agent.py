"""The agent against a real server (in this process), stepped by hand so that the order of
its heartbeats and the scheduler's passes is the test's to choose."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hai.agent import CANNOT_START, NEVER_STARTED, Agent, route_address
from hai.config import load_config
from hai.errors import ConfigError
from hai.executor import LocalExecutor
from hai.protocol import DESIRED_RUN, Assignment, run_log_dir
from hai.rpc import ApiClient
from hai.server import Server

from ..waiting import wait_for


@pytest.fixture
def platform(tmp_path: Path, free_port: Callable[[], int]) -> Iterator[tuple[ApiClient, Agent]]:
    port = free_port()
    config = load_config(
        env={},
        overrides={
            "server": {"port": port},
            "scheduler": {"pass_interval_s": 0.1, "node_lease_s": 60},
            "agent": {"health_interval_s": 3600},
            "policy": {"min_run_s": 0},
        },
    )
    state = tmp_path / "hai"
    server = Server(config, state)
    server.start()
    token = (state / "token").read_text().strip()
    client = ApiClient(f"127.0.0.1:{port}", token)
    # The agent calls with its node's credential, as every agent must.
    agent_client = ApiClient(client.address, client.call("AddNode", name="node-0")["token"])
    executor = LocalExecutor()
    agent = Agent("node-0", agent_client, executor, state, config.agent, gpus=1)
    try:
        yield client, agent
    finally:
        agent.shipper.close()
        executor.shutdown()
        agent_client.close()
        client.close()
        server.stop()


def test_a_run_stopped_before_its_agent_started_it_ends(
    platform: tuple[ApiClient, Agent], tmp_path: Path
) -> None:
    client, agent = platform
    agent.step()  # registers the node
    spec = {
        "name": "never",
        "entrypoint": f"touch {tmp_path / 'ran'}",
        "nodes": 1,
        "gpus_per_node": 1,
    }
    job_id = client.call("Submit", spec=spec)["id"]
    describe = lambda: client.call("Describe", job_id=job_id)  # noqa: E731
    wait_for("the run to be placed", lambda: describe()["job"]["state"] == "running")
    # Stopped between the scheduler's pass and the agent's next heartbeat.
    client.call("Stop", job_id=job_id)
    agent.step()  # told to stop a run it never started: it starts nothing
    assert agent.executor.run_ids() == []
    agent.step()  # and reports it as ended
    detail = describe()
    assert detail["job"]["state"] == "stopped"
    assert detail["runs"][0]["exit_code"] == NEVER_STARTED
    agent.step()
    assert not (tmp_path / "ran").exists()


def test_a_run_that_cannot_start_fails_with_the_reason_and_the_node_takes_the_next(
    platform: tuple[ApiClient, Agent],
) -> None:
    """A launch failure (here: the run's log folder cannot be made, as a file has its name)
    fails that run with why, and the heartbeats go on: the node is not the problem."""
    client, agent = platform
    agent.step()  # registers the node
    spec = {"name": "blocked", "entrypoint": "true", "nodes": 1, "gpus_per_node": 1}
    job_id = client.call("Submit", spec=spec)["id"]
    describe = lambda job: client.call("Describe", job_id=job)  # noqa: E731
    wait_for("the run to be placed", lambda: describe(job_id)["job"]["state"] == "running")
    blocker = agent.state_dir / run_log_dir(job_id, 0)
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    agent.step()  # the launch fails: no exception, nothing started
    assert agent.executor.run_ids() == []
    agent.step()  # reports the run as failed, with the reason
    detail = describe(job_id)
    assert (detail["job"]["state"], detail["job"]["exit_code"]) == ("failed", CANNOT_START)
    reason = f"cannot start run {detail['runs'][0]['id']} of job {job_id} on node-0: "
    assert detail["runs"][0]["reason"].startswith(reason)
    assert detail["job"]["message"].startswith(reason)
    assert any(reason in e["message"] for e in detail["events"])
    agent.step()
    assert agent._cannot_start == {}  # the scheduler took the report
    following = client.call("Submit", spec={**spec, "name": "next"})["id"]

    def succeeded() -> bool:
        agent.step()
        return describe(following)["job"]["state"] == "succeeded"

    wait_for("the next job to succeed on the same node", succeeded)
    assert [n["state"] for n in client.call("Nodes")] == ["ready"]


def test_a_launch_takes_image_gpus_and_log_folder_from_the_assignment(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    """Starting a run asks the server nothing: the client points at a port where no server
    listens, and the launch still gets everything the assignment carries."""
    config = load_config(env={})
    client = ApiClient(f"127.0.0.1:{free_port()}", "t")
    executor = LocalExecutor()
    agent = Agent("node-1", client, executor, tmp_path, config.agent, gpus=2)
    a = Assignment(
        run_id=9,
        job_id=4,
        attempt=2,
        desired=DESIRED_RUN,
        argv=["true"],
        environment={},
        node_rank=1,
        nodes=2,
        ranks_per_node=2,
        master_addr="127.0.0.1",
        master_port=29500,
        kill_grace_s=1.0,
        run_token="9.x",
        image="train:1",
        gpus_per_node=2,
        log_dir=run_log_dir(4, 2),
    )
    try:
        agent.reconcile([a], [])
        launch = executor.launch_of(9)
        assert (launch.image, launch.gpus, launch.node_rank) == ("train:1", 2, 1)
        assert [r.log_path for r in launch.ranks] == [
            tmp_path / "logs" / "job-4" / "run-2" / f"rank-{rank}.log" for rank in (2, 3)
        ]
    finally:
        executor.shutdown()
        client.close()


def test_an_agent_finds_its_address_on_the_route_to_the_server() -> None:
    """What `hai agent` advertises (MASTER_ADDR of its runs' node rank 0) without --address;
    across hosts, tests/hai/test_hosts.py checks it is the host's own."""
    assert route_address("127.0.0.1:7700") == "127.0.0.1"
    assert route_address("[::1]:7700") == "::1"
    with pytest.raises(ConfigError, match="give it with --address"):
        route_address("no-such-host.invalid:7700")
