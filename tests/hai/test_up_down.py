"""`hai up` and `hai down` with real processes on real ports: a start that fails says why in
one line and leaves nothing behind, a second `up` on a running cluster is refused, and `down`
stops what runs on the state folder (also a server started again by hand), saying what it
may not stop."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from hai.cli import main
from hai.cluster import CLUSTER_FILE

from ..second_account import invoke_as_nobody
from .conftest import FAST
from .test_bad_input import one_error_line

pytestmark = pytest.mark.slow


def hai(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Runs ``hai ARGS`` as a user would (the cluster's processes outlive it)."""
    env = {**os.environ, **FAST}
    return subprocess.run(
        [sys.executable, "-m", "hai", *args],
        capture_output=True,
        text=True,
        timeout=150,
        env=env,
        cwd=cwd,
    )


def up(state: Path, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return hai(
        "up", "--nodes", "1", "--gpus-per-node", "1", "--port", str(port), *extra, str(state)
    )


def left_running(state: Path) -> list[str]:
    """Command lines of live processes that name ``state`` (zombies have exited: this
    machine's init may never reap them)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        line = " ".join(proc.info["cmdline"] or [])
        if str(state) in line and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(line)
    return found


@pytest.fixture
def state(state_dir: Path) -> Path:
    """The state folder, private already (so `up` prints no warning of tightening it)."""
    state_dir.chmod(0o700)
    return state_dir


@pytest.fixture
def busy_port(free_port: Callable[[], int]) -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port()))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize("busy", ["server port", "agent metrics port"])
def test_up_on_a_busy_port_says_so_and_leaves_nothing(
    busy: str, busy_port: int, state: Path, free_port: Callable[[], int]
) -> None:
    # A cluster.json whose processes are gone (a crash, a reboot) must not block `up`.
    (state / CLUSTER_FILE).write_text(json.dumps({"pids": {"server": 2**22 + 1}}))
    if busy == "server port":
        done = up(state, busy_port)
        why = f"server exited at start (code 1): cannot listen on 127.0.0.1:{busy_port}"
    else:  # node-0 serves its metrics one port above the server's
        done = up(state, free_port(), "--metrics-port", str(busy_port - 1))
        why = f"node-0 exited at start (code 1): cannot serve metrics on 127.0.0.1:{busy_port}"
    assert why in one_error_line(done)
    assert not (state / CLUSTER_FILE).exists()
    assert left_running(state) == []
    done = up(state, free_port())
    assert done.returncode == 0, done.stderr
    assert "hai cluster up" in done.stdout
    stopped = hai("down", str(state))
    assert stopped.returncode == 0, stopped.stderr
    assert left_running(state) == []


def test_down_stops_a_server_restarted_by_hand(state: Path, free_port: Callable[[], int]) -> None:
    port = free_port()
    done = up(state, port)
    assert done.returncode == 0, done.stderr
    again = one_error_line(up(state, free_port()))
    assert f"a cluster already runs in {state}" in again
    assert f"`hai down {state}` stops it" in again
    pids = json.loads((state / CLUSTER_FILE).read_text())["pids"]
    first = psutil.Process(pids["server"])
    first.kill()
    # As docs/services.md starts a server: here from the parent, with a relative folder.
    log = (state.parent / "by-hand.log").open("wb")
    by_hand = subprocess.Popen(
        [sys.executable, "-m", "hai", "server", "--state-dir", state.name, "--port", str(port)],
        cwd=state.parent,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        stopped = hai("down", str(state))
        assert stopped.returncode == 0, stopped.stderr
        assert f"server (pid {by_hand.pid})" in stopped.stdout
        assert f"node-0 (pid {pids['node-0']})" in stopped.stdout
        assert f"pid {first.pid}" not in stopped.stdout  # it was gone already
        by_hand.wait(timeout=30)
        assert left_running(state) == []
        assert not (state / CLUSTER_FILE).exists()
        nothing = hai("down", str(state))
        assert (nothing.returncode, nothing.stdout.strip()) == (
            0,
            f"no cluster running in {state}",
        )
    finally:
        if by_hand.poll() is None:
            by_hand.kill()
            by_hand.wait()
        log.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid 65534 needs root")
def test_down_says_what_it_may_not_stop(free_port: Callable[[], int]) -> None:
    parent = Path(tempfile.mkdtemp(prefix="hai-down-"))
    parent.chmod(0o755)  # the second account may reach the folder, not what runs on it
    state = parent / "state"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hai",
            "server",
            "--state-dir",
            str(state),
            "--port",
            str(free_port()),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        code, out, err = invoke_as_nobody(main, ["down", str(state)])
        assert code == 1
        assert out == ""
        assert err.splitlines() == [
            f"Error: could not stop server (pid {server.pid}): it runs as root, "
            "and this account may not signal it"
        ]
        assert server.poll() is None
        stopped = hai("down", str(state))
        assert stopped.stdout.strip() == f"stopped server (pid {server.pid})", stopped.stderr
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        shutil.rmtree(parent, ignore_errors=True)
