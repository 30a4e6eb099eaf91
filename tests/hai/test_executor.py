"""The Executor conformance suite (run on every implementation) and the job-side client."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hai import client
from hai.errors import ConfigError, StateError
from hai.executor import Executor, Launch, LocalExecutor, RankLaunch

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


def test_client_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAI_CONTROL_DIR", raising=False)
    with pytest.raises(ConfigError, match="not started by hai"):
        client.receive_suspend_command()
    monkeypatch.setenv("HAI_CONTROL_DIR", str(tmp_path))
    monkeypatch.setenv("HAI_CHAIN_DIR", str(tmp_path / "chain"))
    monkeypatch.setenv("HAI_RESTART_COUNT", "2")
    assert client.restart_count() == 2
    assert client.get_whole_life_state() == {}
    client.set_whole_life_state({"step": 7})
    assert client.get_whole_life_state() == {"step": 7}
    assert not client.receive_suspend_command()
    (tmp_path / "suspend").touch()
    assert client.receive_suspend_command()
    client.go_suspend()
    assert (tmp_path / "suspend_ack").exists()
