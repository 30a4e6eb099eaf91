"""Whole process trees: stopping a rank ends every process it forked, however it ends.

Each test runs a real rank that forks a child which ignores SIGTERM and sleeps (the way a
data loader worker or a shell pipeline outlives a careless stop), then ends the run one
way (stop, the grace-period kill, the rank exiting, the agent's shutdown, the agent killed
by SIGKILL, `hai stop` on a real cluster) and checks by pid that no process of it is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from hai.executor import Launch, LocalExecutor, RankLaunch, cgroups

from ..waiting import wait_for

# argv[1]: "stop" (the rank takes SIGTERM), "stubborn" (it ignores it too), "exit"
# (it exits 0 once the file argv[2] exists, leaving its child behind), "escape" (its
# child leaves the rank's process group and session with setsid; the rank ignores
# SIGTERM) or "escape-soft" (the same, but the child takes SIGTERM). The child ignores
# SIGTERM in every other mode. The rank prints its pid and its child's once the child is
# set up, which the child says through a pipe.
TREE = """
import os, signal, sys, time
r, w = os.pipe()
child = os.fork()
if child == 0:
    if sys.argv[1] != "escape-soft":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.argv[1].startswith("escape"):
        os.setsid()
    os.write(w, b"x")
    time.sleep(600)
    os._exit(0)
os.read(r, 1)
if sys.argv[1] in ("stubborn", "escape", "escape-soft"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("tree", os.getpid(), child, flush=True)
if sys.argv[1] == "exit":
    while not os.path.exists(sys.argv[2]):
        time.sleep(0.05)
    sys.exit(0)
time.sleep(600)
"""

HAI = Path(sys.executable).with_name("hai")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def executor() -> Iterator[LocalExecutor]:
    ex = LocalExecutor()
    yield ex
    ex.shutdown()


def _tree_launch(tmp_path: Path, run_id: int, mode: str, *args: str) -> Launch:
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    log = tmp_path / f"rank-{run_id}.log"
    return Launch(
        run_id,
        tmp_path / f"c{run_id}",
        [RankLaunch(0, [sys.executable, str(script), mode, *args], {}, log)],
    )


def _tree(log: Path) -> list[psutil.Process]:
    """The rank and its child, once the rank printed their pids (both alive then)."""

    def line() -> str | None:
        text = log.read_text() if log.exists() else ""
        return next((s for s in text.splitlines() if s.startswith("tree ")), None)

    found = wait_for(f"the rank to print its tree in {log}", line)
    procs = [psutil.Process(int(pid)) for pid in str(found).split()[1:]]
    assert all(p.is_running() for p in procs)
    return procs


def _gone(p: psutil.Process) -> bool:
    """Whether ``p`` has ended (a zombie waiting for its parent's wait counts as ended;
    is_running compares start times, so a reused pid does not count as ``p``)."""
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _all_gone(procs: list[psutil.Process]) -> None:
    wait_for(
        f"processes {[p.pid for p in procs]} to end",
        lambda: all(_gone(p) for p in procs),
    )


def _exit_code(executor: LocalExecutor, run_id: int) -> int:
    code = wait_for(
        f"run {run_id} to exit",
        lambda: (c := executor.exit_code(run_id)) is not None and (c,),
    )
    return code[0]  # type: ignore[index]


def test_stop_ends_the_child_that_ignores_sigterm(executor: LocalExecutor, tmp_path: Path) -> None:
    launch = _tree_launch(tmp_path, 1, "stop")
    executor.start(launch)
    procs = _tree(launch.ranks[0].log_path)
    executor.stop(1, grace_s=600.0)  # the rank takes SIGTERM; no SIGKILL comes from grace
    assert _exit_code(executor, 1) == -signal.SIGTERM
    _all_gone(procs)


def test_grace_period_kill_ends_the_whole_tree(executor: LocalExecutor, tmp_path: Path) -> None:
    launch = _tree_launch(tmp_path, 2, "stubborn")
    executor.start(launch)
    procs = _tree(launch.ranks[0].log_path)
    executor.stop(2, grace_s=0.5)
    assert _exit_code(executor, 2) == -signal.SIGKILL
    _all_gone(procs)


def test_a_rank_that_exits_leaves_no_child_behind(executor: LocalExecutor, tmp_path: Path) -> None:
    go = tmp_path / "go"
    launch = _tree_launch(tmp_path, 3, "exit", str(go))
    executor.start(launch)
    procs = _tree(launch.ranks[0].log_path)
    go.touch()
    assert _exit_code(executor, 3) == 0
    _all_gone(procs)


def test_a_child_that_leaves_the_group_is_ended_by_the_cgroup(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    if executor.cgroup_root is None:
        pytest.skip("this machine lets the agent make no cgroup v2 (process groups only)")
    launch = _tree_launch(tmp_path, 5, "escape")
    executor.start(launch)
    procs = _tree(launch.ranks[0].log_path)
    assert os.getpgid(procs[1].pid) != os.getpgid(procs[0].pid)  # it left the group
    executor.stop(5, grace_s=0.5)
    assert _exit_code(executor, 5) == -signal.SIGKILL
    _all_gone(procs)
    cgroup = executor._runs[5].cgroups[0]
    assert cgroup is not None
    executor.forget(5)
    wait_for(f"{cgroup} to be removed", lambda: (executor.forget(5), not cgroup.exists())[1])


def test_without_cgroups_the_process_group_still_ends_the_tree(tmp_path: Path) -> None:
    ex = LocalExecutor(use_cgroups=False)  # HAI_AGENT__CGROUPS=false
    assert ex.cgroup_root is None
    try:
        launch = _tree_launch(tmp_path, 6, "stubborn")
        ex.start(launch)
        procs = _tree(launch.ranks[0].log_path)
        ex.stop(6, grace_s=0.5)
        assert _exit_code(ex, 6) == -signal.SIGKILL
        _all_gone(procs)
    finally:
        ex.shutdown()


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid 65534 with setpriv needs root")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_a_rank_of_another_account_is_ended_whole(executor: LocalExecutor) -> None:
    """The rank runs as uid 65534 (setpriv clears its death signal as it changes uid); its
    supervisor, the agent's account, still ends its tree."""
    folder = Path(tempfile.mkdtemp())  # pytest's tmp_path is the agent's alone (0700)
    try:
        folder.chmod(0o755)
        script = folder / "tree.py"
        script.write_text(TREE)
        script.chmod(0o644)
        argv = [*NOBODY, sys.executable, str(script), "stubborn"]
        log = folder / "rank.log"
        executor.start(Launch(8, folder / "c8", [RankLaunch(0, argv, {}, log)]))
        procs = _tree(log)
        assert {p.uids().real for p in procs} == {65534}
        executor.stop(8, grace_s=0.5)
        assert _exit_code(executor, 8) == -signal.SIGKILL
        _all_gone(procs)
    finally:
        shutil.rmtree(folder)


def test_shutdown_ends_the_whole_tree(tmp_path: Path) -> None:
    ex = LocalExecutor()
    launch = _tree_launch(tmp_path, 4, "stubborn")
    ex.start(launch)
    procs = _tree(launch.ranks[0].log_path)
    ex.shutdown()
    _all_gone(procs)


# argv: the tree script, the control folder, the log, the mode ("stubborn" if not given),
# "no-cgroups" to run without them.
AGENT = """
import sys, time
from pathlib import Path
from hai.executor import Launch, LocalExecutor, RankLaunch
ex = LocalExecutor(use_cgroups=sys.argv[5:] != ["no-cgroups"])
argv = [sys.executable, sys.argv[1], sys.argv[4] if len(sys.argv) > 4 else "stubborn"]
env = {"HAI_CONTROL_DIR": sys.argv[2]}  # as the agent's rank_environment sets it
ex.start(Launch(1, Path(sys.argv[2]), [RankLaunch(0, argv, env, Path(sys.argv[3]))]))
print(ex._runs[1].procs[0].pid, flush=True)
time.sleep(600)
"""


def test_the_tree_dies_with_its_agent(tmp_path: Path) -> None:
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    log = tmp_path / "r.log"
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(script), str(tmp_path / "c"), str(log)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        supervisor = psutil.Process(int(agent.stdout.readline()))  # type: ignore[union-attr]
        procs = [supervisor, *_tree(log)]
        assert procs[1].ppid() == supervisor.pid
        assert {os.getpgid(p.pid) for p in procs} == {supervisor.pid}  # a group of its own
        agent.kill()
        agent.wait()
        _all_gone(procs)
    finally:
        agent.kill()
        agent.wait()


def _cluster_tree(cluster, tmp_path: Path) -> tuple[int, list[psutil.Process]]:  # type: ignore[no-untyped-def]
    """Submits a one-node job whose rank and child both ignore SIGTERM: (job id, tree)."""
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    spec = {
        "name": "tree",
        "entrypoint": sys.executable,
        "arguments": [str(script), "stubborn"],
        "nodes": 1,
        "gpus_per_node": 1,
    }
    job = cluster.client.call("Submit", spec=spec)["id"]
    return job, _tree(cluster.state_dir / "logs" / f"job-{job}" / "run-0" / "rank-0.log")


def _node_of(cluster, job: int) -> str:  # type: ignore[no-untyped-def]
    return next(r for r in cluster.describe(job)["runs"] if r["state"] != "done")["nodes"][0]


def test_stop_sends_sigterm_to_a_child_that_left_the_group(
    executor: LocalExecutor, tmp_path: Path
) -> None:
    if executor.cgroup_root is None:
        pytest.skip("this machine lets the agent make no cgroup v2 (process groups only)")
    launch = _tree_launch(tmp_path, 7, "escape-soft")
    executor.start(launch)
    rank, child = _tree(launch.ranks[0].log_path)
    executor.stop(7, grace_s=600.0)  # SIGTERM only, for as long as the test runs
    _all_gone([child])
    assert rank.is_running() and executor.exit_code(7) is None  # it ignores SIGTERM


def test_a_new_agent_ends_what_a_dead_agent_and_supervisor_left(tmp_path: Path) -> None:
    """The agent and the rank's supervisor die together (both SIGKILLed, as a machine's OOM
    killer may do), so no one kills the rank's group; the next agent's executor does."""
    if cgroups.own_cgroup() is None:
        pytest.skip("this machine lets the agent make no cgroup v2 (process groups only)")
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    log = tmp_path / "r.log"
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(script), str(tmp_path / "c"), str(log), "escape"],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = None
    try:
        supervisor = psutil.Process(int(agent.stdout.readline()))  # type: ignore[union-attr]
        rank, child = _tree(log)
        supervisor.kill()  # first, so that its death signal does not fire
        agent.kill()
        agent.wait()
        _all_gone([supervisor, rank])  # the rank's own death signal ends it
        assert child.is_running()  # it left the group: only the cgroup still holds it
        LocalExecutor().shutdown()
        _all_gone([child])
    finally:
        agent.kill()
        agent.wait()
        if child is not None and child.is_running():
            child.kill()


def test_a_new_agent_ends_what_a_dead_agent_left_without_cgroups(tmp_path: Path) -> None:
    """As above, on a machine without cgroups: the child stays in the rank's group, which
    no one is left to kill; the next agent finds it by its HAI_CONTROL_DIR."""
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    log = tmp_path / "r.log"
    control = tmp_path / "runs" / "1" / "node-0"
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(script), str(control), str(log), "stubborn"]
        + ["no-cgroups"],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = None
    try:
        supervisor = psutil.Process(int(agent.stdout.readline()))  # type: ignore[union-attr]
        rank, child = _tree(log)
        supervisor.kill()
        agent.kill()
        agent.wait()
        _all_gone([supervisor, rank])
        assert child.is_running()
        ex = LocalExecutor(use_cgroups=False)
        assert ex.end_leftovers(tmp_path / "runs", "node-1") == 0  # another node's
        assert ex.end_leftovers(tmp_path / "runs", "node-0") == 1
        _all_gone([child])
    finally:
        agent.kill()
        agent.wait()
        if child is not None and child.is_running():
            child.kill()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["crash", "stop"])
def test_the_tree_ends_with_its_agent_on_a_cluster(cluster, tmp_path: Path, sig: int) -> None:  # type: ignore[no-untyped-def]
    """SIGKILL: the agent crashes; SIGTERM: it stops, as `hai down` asks."""
    job, procs = _cluster_tree(cluster, tmp_path)
    agent = psutil.Process(cluster.info.pids[_node_of(cluster, job)])
    agent.send_signal(sig)
    _all_gone([agent, *procs])


@pytest.mark.slow
def test_hai_stop_on_a_cluster_ends_the_whole_tree(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job, procs = _cluster_tree(cluster, tmp_path)
    env = {**os.environ, "HAI_STATE_DIR": str(cluster.state_dir)}
    env.pop("HAI_SERVER", None)
    stop = subprocess.run(
        [str(HAI), "stop", str(job)], capture_output=True, text=True, timeout=60, env=env
    )
    assert stop.returncode == 0, stop.stderr
    _all_gone(procs)  # both ignore SIGTERM: the agent's grace-period SIGKILL ends them
    cluster.wait_for(
        f"job {job} to be stopped",
        lambda: cluster.describe(job)["job"]["state"] == "stopped",
    )
