"""The Executor conformance suite (run on every implementation) and the job-side client."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import psutil
import pytest

from hai import client
from hai.agent import rank_environment
from hai.errors import ConfigError, StateError
from hai.executor import Executor, Launch, LocalExecutor, RankLaunch
from hai.protocol import Assignment

from ..waiting import wait_for

JOB = """
import os, sys, time
from hai import client
print("rank", os.environ["RANK"], flush=True)
if sys.argv[1] == "suspend":
    while not client.receive_suspend_command():
        time.sleep(0.05)
    client.go_suspend()
    time.sleep(60)
sys.exit(int(sys.argv[2]))
"""


@pytest.fixture(params=["local"])
def executor(request: pytest.FixtureRequest) -> Iterator[Executor]:
    ex = LocalExecutor()
    yield ex
    ex.shutdown()


def launch(tmp_path: Path, run_id: int, mode: str, codes: list[int]) -> Launch:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    control = tmp_path / f"control-{run_id}"
    ranks = [
        RankLaunch(
            r,
            [sys.executable, str(script), mode, str(code)],
            {"RANK": str(r), "HAI_CONTROL_DIR": str(control), "PATH": "/usr/bin:/bin"},
            tmp_path / f"run-{run_id}" / f"rank-{r}.log",
        )
        for r, code in enumerate(codes)
    ]
    return Launch(run_id, control, ranks)


def wait_exit(executor: Executor, run_id: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while (code := executor.exit_code(run_id)) is None:
        assert time.monotonic() < deadline, "ranks did not exit"
        time.sleep(0.05)
    return code


def test_worst_rank_code_and_logs(executor: Executor, tmp_path: Path) -> None:
    executor.start(launch(tmp_path, 1, "exit", [0, 3]))
    assert wait_exit(executor, 1) == 3
    assert (tmp_path / "run-1" / "rank-1.log").read_text().strip() == "rank 1"
    with pytest.raises(StateError):
        executor.start(launch(tmp_path, 1, "exit", [0]))
    executor.forget(1)
    assert executor.run_ids() == []


def test_suspend_seen_by_every_rank_then_ack_then_stop(executor: Executor, tmp_path: Path) -> None:
    executor.start(launch(tmp_path, 2, "suspend", [0, 0]))
    assert not executor.acked(2)
    executor.request_suspend(2)
    deadline = time.monotonic() + 30
    while not executor.acked(2):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    executor.stop(2, grace_s=5.0)
    assert wait_exit(executor, 2) == -15  # SIGTERM was enough


def test_sigkill_after_grace(executor: Executor, tmp_path: Path) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\ntime.sleep(60)\n"
    )
    log = tmp_path / "s.log"
    executor.start(
        Launch(3, tmp_path / "c3", [RankLaunch(0, [sys.executable, str(script)], {}, log)])
    )
    while "ready" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.05)
    executor.stop(3, grace_s=0.5)
    assert wait_exit(executor, 3) == -9


def test_a_missing_command_fails_its_rank_with_a_line_in_the_log(
    executor: Executor, tmp_path: Path
) -> None:
    log = tmp_path / "r.log"
    executor.start(Launch(4, tmp_path / "c4", [RankLaunch(0, ["no-such-cmd"], {}, log)]))
    assert wait_exit(executor, 4) == 127
    assert "hai: cannot start 'no-such-cmd'" in log.read_text()


AGENT = """
import sys, time
from pathlib import Path
from hai.executor import Launch, LocalExecutor, RankLaunch
ex = LocalExecutor()
ex.start(Launch(1, Path(sys.argv[1]), [RankLaunch(0, ["sleep", "60"], {}, Path(sys.argv[2]))]))
print(ex._runs[1].procs[0].pid, flush=True)
time.sleep(60)
"""


def test_ranks_die_with_their_agent(tmp_path: Path) -> None:
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(tmp_path / "c"), str(tmp_path / "r.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    supervisor = psutil.Process(int(agent.stdout.readline()))  # type: ignore[union-attr]
    # The supervisor forks the rank, which execs `sleep` once its death signal is armed.
    rank = wait_for(
        "the rank to exec sleep",
        lambda: next((c for c in supervisor.children() if c.name() == "sleep"), None),
    )
    agent.kill()
    agent.wait()
    wait_for(
        "the rank and its supervisor to die with their agent",
        lambda: all(_ended(p) for p in (supervisor, rank)),  # type: ignore[arg-type]
    )


def _ended(p: psutil.Process) -> bool:
    """Whether ``p`` has exited (a zombie that its new parent has yet to reap has)."""
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_ranks_start_while_grpc_is_busy(executor: Executor, tmp_path: Path) -> None:
    """Regression: starting ranks from a process whose gRPC channel is in use once made
    some of them abort before exec (grpc/grpc#43055; see executor/die_with_parent.py)."""
    server = grpc.server(futures.ThreadPoolExecutor(2))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    busy = threading.Event()

    def call_forever() -> None:
        stub = channel.unary_unary("/no.Such/Method")
        while not busy.is_set():
            with contextlib.suppress(grpc.RpcError):
                stub(b"", timeout=1)

    caller = threading.Thread(target=call_forever, daemon=True)
    caller.start()
    try:
        for run_id in range(100, 160):
            executor.start(
                Launch(run_id, tmp_path / "c", [RankLaunch(0, ["true"], {}, tmp_path / "l")])
            )
        codes = [wait_exit(executor, run_id) for run_id in range(100, 160)]
    finally:
        busy.set()
        caller.join()
        channel.close()
        server.stop(None)
    assert codes == [0] * 60, (tmp_path / "l").read_text()


def test_client_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAI_CONTROL_DIR", raising=False)
    with pytest.raises(ConfigError, match="not started by hai"):
        client.receive_suspend_command()
    monkeypatch.setenv("HAI_CONTROL_DIR", str(tmp_path))
    monkeypatch.setenv("HAI_RESTART_COUNT", "2")
    assert client.restart_count() == 2
    monkeypatch.delenv("HAI_SERVER", raising=False)
    with pytest.raises(ConfigError, match="HAI_SERVER is not set"):
        client.get_whole_life_state()
    with pytest.raises(ConfigError, match="JSON"):  # refused before any server is asked
        client.set_whole_life_state({"when": object()})
    assert not client.receive_suspend_command()
    (tmp_path / "suspend").touch()
    assert client.receive_suspend_command()
    client.go_suspend()
    assert (tmp_path / "suspend_ack").exists()


def test_rank_environment_carries_the_run_token_not_the_agents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAI_TOKEN", "the-agent's-admin-token")
    a = Assignment(
        7,
        3,
        1,
        "run",
        ["python"],
        {"LR": "0.1"},
        1,
        2,
        4,
        "10.0.0.1",
        29500,
        5.0,
        "7.ab",
        None,
        4,
        "logs/job-3/run-1",
    )
    env = rank_environment(a, 2, "node-1", tmp_path, "10.0.0.9:7700")
    assert "HAI_TOKEN" not in env
    assert env["HAI_RUN_TOKEN"] == "7.ab" and env["HAI_SERVER"] == "10.0.0.9:7700"
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("6", "8", "2")
    assert env["HAI_RESTART_COUNT"] == "1" and env["LR"] == "0.1"
