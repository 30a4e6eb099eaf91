"""Bad input on a real local cluster: each case is one error line and a non-zero exit, with no
traceback, and leaves nothing running; what only a node can find out (a command that is not
there) fails that run with the reason, never the node."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hai.errors import ConfigError, NotFoundError, SpecError
from hai.records import NODE_READY

HAI = Path(sys.executable).with_name("hai")
LIVE = ("queued", "running", "suspending", "stopping")


def hai(state_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """Runs the hai command against the cluster in ``state_dir``, as a user would."""
    env = {**os.environ, "HAI_STATE_DIR": str(state_dir)}
    env.pop("HAI_SERVER", None)
    return subprocess.run([str(HAI), *args], capture_output=True, text=True, timeout=120, env=env)


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The one ``Error:`` line of a refused command (click's usage hint may precede it)."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    others = [
        line
        for line in result.stderr.splitlines()
        if line and not line.startswith(("Error:", "Usage:", "Try "))
    ]
    assert others == [], result.stderr  # nothing beyond the one line (and click's usage)
    return errors[0]


def test_every_bad_input_is_one_line_and_leaves_nothing_running(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    state = cluster.state_dir
    done = cluster.client.call(
        "Submit", spec={"name": "ok", "entrypoint": "true", "gpus_per_node": 1}
    )["id"]
    cluster.wait_for("the good job", lambda: cluster.describe(done)["job"]["state"] == "succeeded")
    # A group with no nodes keeps its job queued for good.
    queued = cluster.client.call(
        "Submit", spec={"name": "wait", "entrypoint": "true", "gpus_per_node": 1, "group": "none"}
    )["id"]
    jobs_before = len(cluster.client.call("List", all=True))
    spec = "name: a\nentrypoint: {}\n"
    cases = [
        (
            ["submit", write(tmp_path / "quote.yaml", spec.format("python -c 'print(1)").encode())],
            "entrypoint: cannot be split like a shell command (no closing quotation)",
        ),
        (
            ["submit", write(tmp_path / "latin1.yaml", spec.format("caf\xe9").encode("latin-1"))],
            "not UTF-8 text (byte 23); save the spec file as UTF-8",
        ),
        (
            [
                "submit",
                write(
                    tmp_path / "huge.yaml",
                    (spec.format("/bin/true") + "nodes: 1" + "0" * 30).encode(),
                ),
            ],
            "nodes: input should be less than or equal to 100000",
        ),
        (["run", "--nodes", "-1", "--", "true"], "-1 is not in the range 1<=x<=100000"),
        (["run", "--nodes", str(10**30), "--", "true"], "is not in the range 1<=x<=100000"),
        (
            ["run", "-g", "2", "--", "true"],
            "gpus_per_node: 2 is more than the largest node of group 'default' has (1)",
        ),
        (["up", "--port", "99999", str(tmp_path / "up")], "99999 is not in the range 1<=x<=65535"),
        (
            ["fs3", "meta", "--port", "70000", "--db", "x", "--mgmtd", "127.0.0.1:1"],
            "70000 is not in the range 0<=x<=65535",
        ),
        (["quota", "bob", "45", "1"], "must be one of 50, 40, 30, 20, 10"),
        (["quota", "bob", "HIGH", str(2**64)], "is not in the range 0<=x<=100000"),
        (["logs", str(done), "--rank", "5"], f"job {done} has no rank 5: its ranks are 0-0"),
        (["logs", str(queued)], f"job {queued} has not started yet"),
        (["logs", "424242"], "424242"),
        (["logs", str(10**30)], "is not in the range"),
    ]
    for argv, problem in cases:
        line = one_error_line(hai(state, *argv))
        assert problem in line, (argv, line)
    # Nothing was submitted, started or left behind by the refused commands.
    jobs = cluster.client.call("List", all=True)
    assert len(jobs) == jobs_before
    assert [j["id"] for j in jobs if j["state"] in LIVE] == [queued]
    assert not (tmp_path / "up").exists()
    assert {n["state"] for n in cluster.client.call("Nodes")} == {NODE_READY}
    cluster.client.call("Stop", job_id=queued)
    line = one_error_line(hai(state, "logs", str(queued)))
    assert f"job {queued} never ran, so it has no log" in line
    # The same checks hold for a client that calls the API without the CLI.
    with pytest.raises(NotFoundError, match=f"no job {10**30}"):
        cluster.client.call("Describe", job_id=10**30)
    with pytest.raises(ConfigError, match="a log offset must be 0 or more"):
        cluster.client.call("Logs", job_id=done, rank=0, offset=10**30)
    for body, problem in [
        ({"priority": "45", "nodes": 1}, "must be one of 50, 40, 30, 20, 10 or AUTO, got 45"),
        ({"priority": "AUTO", "nodes": 1}, "a quota's priority must be one of 50, 40, 30"),
        ({"priority": 50, "nodes": 10**30}, "a quota's nodes must be 0-100000, got 1000000"),
    ]:
        with pytest.raises(ConfigError) as info:
            cluster.client.call("SetQuota", user="bob", **body)
        assert problem in str(info.value) and "\n" not in str(info.value)


def test_a_missing_command_fails_its_run_and_the_node_takes_the_next_job(cluster) -> None:  # type: ignore[no-untyped-def]
    call = cluster.client.call
    spec = {"name": "missing", "entrypoint": "no-such-command-hai --x", "gpus_per_node": 1}
    job = call("Submit", spec={**spec, "nodes": 2})["id"]
    cluster.wait_for("the job to fail", lambda: cluster.describe(job)["job"]["state"] == "failed")
    detail = cluster.describe(job)
    assert detail["job"]["exit_code"] == 127
    [run] = detail["runs"]
    assert (
        "(its command was not found or could not be started; see the rank's log)" in (run["reason"])
    )
    assert "hai: cannot start 'no-such-command-hai'" in "\n".join(cluster.log_lines(job, 0))
    # Both nodes are alive and run the next job.
    assert {n["state"] for n in call("Nodes")} == {NODE_READY}
    spec = {"name": "after", "entrypoint": "true", "gpus_per_node": 1, "nodes": 2}
    after = call("Submit", spec=spec)["id"]
    cluster.wait_for("the next job", lambda: cluster.describe(after)["job"]["state"] == "succeeded")
    assert {n["state"] for n in call("Nodes")} == {NODE_READY}


def test_an_entrypoint_a_shell_cannot_split_never_reaches_a_node(cluster) -> None:  # type: ignore[no-untyped-def]
    for entrypoint in ("python -c 'print(1)", "python x\\"):
        with pytest.raises(SpecError, match="entrypoint: cannot be split like a shell command"):
            cluster.client.call("Submit", spec={"name": "bad", "entrypoint": entrypoint})
    assert cluster.client.call("List", all=True) == []


@pytest.mark.parametrize(
    ("setting", "argv", "problem"),
    [
        ("HAI_AGENT__RUN_AS=root", ["agent", "--name", "n", "--server", "127.0.0.1:1"], "root"),
        ("HAI_SERVER__PORT=abc", ["server"], "server.port: Input should be a valid integer"),
        ("HAI_SERVER__PORT=abc", ["ls"], "server.port: Input should be a valid integer"),
    ],
)
def test_a_bad_setting_is_one_line_before_anything_starts(
    tmp_path: Path, setting: str, argv: list[str], problem: str
) -> None:
    name, _, value = setting.partition("=")
    env = {**os.environ, "HAI_STATE_DIR": str(tmp_path / "state"), name: value}
    result = subprocess.run([str(HAI), *argv], capture_output=True, text=True, timeout=60, env=env)
    assert problem in one_error_line(result)
    assert not (tmp_path / "state").exists()
