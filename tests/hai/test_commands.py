"""The platform commands only forward: check that options reach the server call intact."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hai.cli import main


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    seen: list[tuple[str, dict[str, Any]]] = []

    def fake(method: str, **body: Any) -> Any:
        seen.append((method, body))
        return {"id": 7, "name": body.get("spec", {}).get("name", ""), "state": "queued"}

    for module in ("hai.commands.jobs", "hai.commands.cluster"):
        monkeypatch.setattr(f"{module}.call", fake)
    return seen


def test_run_builds_the_spec(calls: list) -> None:
    result = CliRunner().invoke(
        main,
        [
            "run",
            "-n",
            "2",
            "-g",
            "4",
            "-p",
            "40",
            "-e",
            "A=1",
            "--",
            "python",
            "train.py",
            "--lr",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    method, body = calls[0]
    spec = body["spec"]
    assert method == "Submit" and spec["name"] == "train"
    assert (spec["entrypoint"], spec["arguments"]) == ("python", ["train.py", "--lr", "3"])
    assert (spec["nodes"], spec["gpus_per_node"], spec["priority"]) == (2, 4, 40)
    assert spec["environment"] == {"A": "1"}


def test_run_keeps_a_command_word_with_spaces_or_quotes_whole(calls: list) -> None:
    result = CliRunner().invoke(main, ["run", "--name", "r", "--", "/opt/my tools/run's", "-x"])
    assert result.exit_code == 0, result.output
    spec = calls[0][1]["spec"]
    assert shlex.split(spec["entrypoint"]) == ["/opt/my tools/run's"]
    assert spec["arguments"] == ["-x"]


def test_submit_reports_every_bad_field(calls: list, tmp_path: Path) -> None:
    bad = tmp_path / "job.yaml"
    bad.write_text("name: x\nnodes: 0\npriority: 7\n")
    result = CliRunner().invoke(main, ["submit", str(bad)])
    assert result.exit_code == 1 and calls == []
    for field in ("entrypoint", "nodes", "priority"):
        assert field in result.output


@pytest.mark.parametrize(
    ("argv", "method", "body"),
    [
        (["stop", "3"], "Stop", {"job_id": 3}),
        (["suspend", "3"], "Suspend", {"job_id": 3}),
        (["resume", "3"], "Resume", {"job_id": 3}),
        (["drain", "node-1"], "Drain", {"node": "node-1", "drained": True}),
        (
            ["quota", "ann", "50", "4"],
            "SetQuota",
            {"user": "ann", "priority": 50, "nodes": 4, "group": "default"},
        ),
    ],
)
def test_actions_forward(calls: list, argv: list[str], method: str, body: dict) -> None:
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    assert calls == [(method, body)]


def test_ls_json(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"id": 1, "name": "a", "state": "running"}]
    monkeypatch.setattr("hai.commands.jobs.call", lambda method, **body: rows)
    result = CliRunner().invoke(main, ["ls", "--json"])
    assert '"state": "running"' in result.output


def test_server_forwards_its_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr("hai.daemons.run_server", lambda config, state_dir: seen.update(locals()))
    argv = ["server", "--state-dir", str(tmp_path), "--port", "7801", "--metrics-port", "9100"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    assert seen["state_dir"] == tmp_path
    assert (seen["config"].server.port, seen["config"].server.metrics_port) == (7801, 9100)


def test_agent_forwards_its_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from hai.daemons import AgentOptions

    seen: dict[str, Any] = {}
    monkeypatch.setattr("hai.daemons.run_agent", lambda config, options: seen.update(locals()))
    argv = ["agent", "--name", "gpu-3", "--server", "h:7700", "--state-dir", str(tmp_path)]
    argv += ["--gpus", "4", "--group", "a100", "--metrics-port", "9200", "--kubernetes"]
    result = CliRunner().invoke(main, [*argv, "--address", "10.0.0.5"])
    assert result.exit_code == 0, result.output
    assert seen["options"] == AgentOptions(
        "gpu-3", "h:7700", tmp_path, 4, "a100", kubernetes=True, address="10.0.0.5"
    )
    assert seen["config"].agent.metrics_port == 9200


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["run", "--nodes", "-1", "--", "true"], "'-n' / '--nodes': -1 is not in the range"),
        (["run", "-g", "5000", "--", "true"], "'-g' / '--gpus': 5000 is not in the range"),
        (["up", "--port", "99999"], "'--port': 99999 is not in the range 1<=x<=65535"),
        (["server", "--port", "99999"], "'--port': 99999 is not in the range 0<=x<=65535"),
        (["agent", "--name", "n", "--server", "s:1", "--metrics-port", "70000"], "70000"),
        (["quota", "ann", "45", "4"], "'PRIORITY': must be one of 50, 40, 30, 20, 10"),
        (["quota", "ann", "AUTO", "4"], "got 'AUTO'"),
        (["logs", str(10**30)], "'JOB_ID': 1000000000000000000000000000000 is not in the range"),
        (["logs", "1", "-r", "-1"], "'-r' / '--rank': -1 is not in the range"),
    ],
)
def test_numbers_out_of_range_are_refused_before_any_call(
    calls: list, argv: list[str], problem: str
) -> None:
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2 and calls == []
    [error] = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert problem in error
