"""Ranks run as an unprivileged account, never as a root agent's own.

The account rules (:class:`hai.accounts.RankAccounts`) are checked for a root agent and for
one that is not root. Then, as root as CI runs: a rank of the local executor takes its
account and still dies whole, and a real local cluster runs jobs whose ranks report their
uid, try to read the admin token, the database and another job's log (each refused), and
acknowledge a suspend through their control folder. Ranks here are shell commands: the
test's Python may live where other accounts cannot run it (root's home).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from hai.accounts import Account, RankAccounts, lookup
from hai.config import load_config
from hai.errors import ConfigError
from hai.executor import Launch, LocalExecutor, RankLaunch
from hai.rpc import ApiClient

from ..waiting import wait_for
from .conftest import LocalCluster


def _accounts_exist(*names: str) -> bool:
    try:
        return all(pwd.getpwnam(n).pw_uid != 0 for n in names)
    except KeyError:
        return False


NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching accounts needs root")
pytestmark = pytest.mark.skipif(
    not _accounts_exist("daemon", "nobody"), reason="needs the daemon and nobody accounts"
)


def test_submitter_runs_as_own_account_else_fallback() -> None:
    accounts = RankAccounts("submitter", "nobody", agent_uid=0, min_uid=1)
    assert accounts.switches
    daemon = pwd.getpwnam("daemon")
    own = accounts.for_user("daemon")
    assert own is not None
    assert (own.uid, own.gid, own.home) == (daemon.pw_uid, daemon.pw_gid, daemon.pw_dir)
    # root's own account, an unknown name, no name and a number all take the fallback
    for user in ("root", "no-such-user-hai", "", "1"):
        account = accounts.for_user(user)
        assert account is not None and account.uid == NOBODY, user


def test_a_system_account_is_no_submitters_own() -> None:
    """A hai user named like a system account (uid below run_as_min_uid) gets the
    fallback: an admin naming a user 'daemon' or 'postgres' must not hand out its files."""
    assert RankAccounts("submitter", "nobody", agent_uid=0).for_user("daemon") == lookup("nobody")
    assert load_config(env={}).agent.run_as_min_uid == 1000


def test_fixed_account_by_name_or_uid() -> None:
    assert RankAccounts("daemon", "nobody", agent_uid=0).for_user("ann") == lookup("daemon")
    # A uid with no password entry (a container's) is its own group, with no home.
    assert RankAccounts("4242", "nobody", agent_uid=0).for_user("ann") == Account(
        4242, 4242, (), "4242", ""
    )


@pytest.mark.parametrize(
    ("run_as", "fallback", "message"),
    [
        ("no-such-user-hai", "nobody", "run_as 'no-such-user-hai' names no local account"),
        ("submitter", "no-such-user-hai", "run_as_fallback 'no-such-user-hai' names no local"),
        ("submitter", "root", r"run_as_fallback 'root' is root \(uid 0\)"),
    ],
)
def test_unusable_fixed_account_stops_a_root_agent(
    run_as: str, fallback: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        RankAccounts(run_as, fallback, agent_uid=0)


def test_agent_that_is_not_root_runs_ranks_as_itself(caplog: pytest.LogCaptureFixture) -> None:
    accounts = RankAccounts("submitter", "nobody", agent_uid=4242)
    assert not accounts.switches and accounts.for_user("daemon") is None
    assert "ranks share its account" in caplog.text
    assert RankAccounts("4242", "nobody", agent_uid=4242).for_user("ann") is None
    with pytest.raises(ConfigError, match="cannot switch ranks to another account"):
        RankAccounts("daemon", "nobody", agent_uid=4242)


def test_run_as_agent_keeps_a_root_agents_account(caplog: pytest.LogCaptureFixture) -> None:
    accounts = RankAccounts("agent", "nobody", agent_uid=0)
    assert not accounts.switches and accounts.for_user("daemon") is None
    assert "single-user machines only" in caplog.text


@pytest.mark.parametrize("value", ["root", "0"])
def test_config_refuses_root(value: str) -> None:
    with pytest.raises(ConfigError, match=f"agent.run_as: '{value}' is root"):
        load_config(env={"HAI_AGENT__RUN_AS": value})
    with pytest.raises(ConfigError, match="agent.run_as_fallback: 'submitter' is a run_as mode"):
        load_config(env={"HAI_AGENT__RUN_AS_FALLBACK": "submitter"})


# The rank and a child both ignore SIGTERM; the rank prints both pids, then sleeps.
STUBBORN = 'trap "" TERM; sleep 600 & echo tree $$ $!; wait'


@as_root
def test_rank_takes_its_account_and_still_dies_whole(tmp_path: Path) -> None:
    ex = LocalExecutor()
    nobody = lookup("nobody")
    log = tmp_path / "rank.log"
    launches = [
        Launch(run, tmp_path / f"c{run}", [RankLaunch(0, ["sh", "-c", STUBBORN], {}, log)])
        for run in (1, 2)
    ]
    try:
        trees = []
        for launch in launches:
            launch.account = nobody
            log.write_text("")
            ex.start(launch)
            line = wait_for("the rank's pids", lambda: log.read_text().strip())
            trees.append([psutil.Process(int(pid)) for pid in line.split()[1:]])
        for proc in trees[0] + trees[1]:
            assert proc.uids().real == proc.uids().effective == NOBODY
            assert proc.gids().real == NOBODY
        supervisor = trees[0][0].parent()
        assert supervisor is not None and supervisor.uids().real == 0
        ex.stop(1, grace_s=0.2)  # the grace-period kill ends rank and child
        wait_for("run 1 to end", lambda: ex.exit_code(1) == -signal.SIGKILL)
        # The death signal the rank re-armed after its switch: it dies with its supervisor.
        supervisor = trees[1][0].parent()
        assert supervisor is not None
        supervisor.kill()
        wait_for("run 2's rank to die with its supervisor", lambda: not _alive(trees[1][0]))
        assert ex.exit_code(2) is not None
        wait_for("every process to end", lambda: not any(map(_alive, trees[0] + trees[1])))
    finally:
        ex.shutdown()


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def open_cluster(free_port: Callable[[], int]) -> Iterator[LocalCluster]:
    """One node, under a folder every account may enter (pytest's own are 0700, which would
    refuse ranks before the state folder's own modes do), with the default ``run_as``."""
    parent = Path(tempfile.mkdtemp(prefix="hai-run-as-"))
    parent.chmod(0o755)
    cluster = LocalCluster(
        parent / "state",
        free_port(),
        nodes=1,
        # daemon (a system account) stands for a user's own account in the test below.
        env={"HAI_AGENT__RUN_AS": "submitter", "HAI_AGENT__RUN_AS_MIN_UID": "1"},
    )
    try:
        yield cluster
    finally:
        cluster.close()
        shutil.rmtree(parent, ignore_errors=True)


def _sh(script: str, **kw: object) -> dict:
    return {"name": "sh", "entrypoint": "sh", "arguments": ["-c", script], "gpus_per_node": 1, **kw}


def _run(cluster: LocalCluster, client: ApiClient, script: str, state: str, **kw: object) -> str:
    job = client.call("Submit", spec=_sh(script, **kw))["id"]
    cluster.wait_for(
        f"job {job} to be {state}",
        lambda: cluster.describe(job)["job"]["state"] == state,
        timeout=60,
    )
    return "\n".join(cluster.log_lines(job, 0))


@as_root
@pytest.mark.slow
def test_ranks_read_no_secret_and_still_work(open_cluster: LocalCluster) -> None:
    cluster, state = open_cluster, open_cluster.state_dir
    other = _run(cluster, cluster.client, "echo other job output", "succeeded")
    other_log = state / "logs" / "job-1" / "run-0" / "rank-0.log"
    assert "other job output" in other and other_log.exists()
    secrets = [state / "token", state / "hai.db", other_log]
    probe = (
        'echo "uid $(id -u) home $HOME user $USER control $HAI_CONTROL_DIR"; '
        + "".join(f"cat {path} >/dev/null; " for path in secrets)
        + 'until [ -e "$HAI_CONTROL_DIR/suspend" ]; do sleep 0.1; done; '
        + 'touch "$HAI_CONTROL_DIR/suspend_ack"; echo acked; sleep 600'
    )
    job = cluster.client.call("Submit", spec=_sh(probe, suspend_grace_period=600))["id"]
    cluster.wait_for("the probe to try every secret", lambda: len(cluster.log_lines(job, 0)) > 3)
    cluster.client.call("Suspend", job_id=job)
    # Suspended long before its 600 s grace period: the rank's acknowledgement counted.
    cluster.wait_for(
        f"job {job} to be suspended",
        lambda: cluster.describe(job)["job"]["state"] == "suspended",
        timeout=60,
    )
    lines = cluster.log_lines(job, 0)
    uid, home, user, control = lines[0].split()[1::2]
    assert (uid, user) == (str(NOBODY), "nobody")
    assert home == control and not control.startswith(str(state))  # nobody has no home
    for path in secrets:
        assert f"cat: {path}: Permission denied" in lines
    assert "acked" in lines
    assert not Path(control).exists()  # removed with the run


@as_root
@pytest.mark.slow
def test_a_submitter_with_a_local_account_runs_as_it(open_cluster: LocalCluster) -> None:
    cluster = open_cluster
    daemon = ApiClient(cluster.info.address, cluster.client.call("AddUser", name="daemon"))
    try:
        out = _run(cluster, daemon, 'echo "$(id -u) $(id -g) $HOME $USER"', "succeeded")
    finally:
        daemon.close()
    entry = pwd.getpwnam("daemon")
    assert out == f"{entry.pw_uid} {entry.pw_gid} {entry.pw_dir} daemon"
