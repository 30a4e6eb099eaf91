"""Secrets out of reach: the state folder, database, tokens and logs are owner-only.

A real local cluster runs a job; then a second, unprivileged account (uid 65534, through
setpriv) tries to read the admin token, the database and the job's log, and to list the
state folder. Each must fail with a permission error, and nothing under the state folder
may carry a group or other permission bit.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hai.errors import ConfigError
from hai.files import STATE_ENTRIES, private_dir, replace_text
from hai.store import SqlStore, sqlite_url

from .conftest import LocalCluster

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*NOBODY, *argv], capture_output=True, text=True, timeout=30)


def _loose(root: Path) -> list[str]:
    """Every folder and file under ``root`` (itself included) with a group or other bit."""
    found = []
    for folder, dirs, files in os.walk(root):
        for path in [Path(folder)] + [Path(folder) / n for n in dirs + files]:
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                continue  # a file being replaced (write beside, rename over) as we walk
            if mode & 0o077:
                found.append(f"{path} {stat.S_IMODE(mode):o}")
    return sorted(set(found))


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A folder every account may enter (pytest's own tmp folders are 0700, which would hide
    a loose state folder from the second account and prove nothing)."""
    path = Path(tempfile.mkdtemp(prefix="hai-secrets-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid 65534 with setpriv needs root")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) not installed")
def test_second_account_reads_no_secret(open_parent: Path, free_port: Callable[[], int]) -> None:
    state = open_parent / "state"
    state.mkdir(mode=0o755)  # a looser folder from before: `hai up` must tighten it
    state.chmod(0o755)
    cluster = LocalCluster(state, free_port(), nodes=1)
    try:
        client = cluster.client
        me = client.call("WhoAmI")["name"]
        client.call("SetQuota", user=me, priority=50, nodes=1)
        spec = {
            "name": "tiny",
            "entrypoint": sys.executable,
            "arguments": ["-c", "print('the job output')"],
            "nodes": 1,
            "gpus_per_node": 1,
            "priority": 10,
        }
        job = client.call("Submit", spec=spec)["id"]
        cluster.wait_for(
            f"job {job} to succeed",
            lambda: cluster.describe(job)["job"]["state"] == "succeeded",
            timeout=60,
        )
        logs = sorted((state / "logs" / f"job-{job}").glob("run-*/rank-0.log"))
        assert logs, f"no rank log of job {job} under {state / 'logs'}"
        assert "the job output" in logs[0].read_text()
        # The second account can enter the parent, so only the state folder's modes stop it.
        assert _as_nobody("ls", str(open_parent)).returncode == 0
        for argv in (
            ["cat", str(state / "token")],
            ["cat", str(state / "hai.db")],
            ["cat", str(logs[0])],
            ["ls", str(state)],
        ):
            done = _as_nobody(*argv)
            assert done.returncode != 0, f"uid 65534 ran {argv}: {done.stdout!r}"
            assert "Permission denied" in done.stderr, done.stderr
        assert {p.name for p in state.glob("hai.db*")} >= {"hai.db", "hai.db-wal", "hai.db-shm"}
        assert _loose(state) == []
    finally:
        cluster.close()
    assert _loose(state) == []


def test_private_dir_creates_and_tightens(tmp_path: Path) -> None:
    made = private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE(made.stat().st_mode) == 0o700
    made.chmod(0o755)
    private_dir(made)
    assert stat.S_IMODE(made.stat().st_mode) == 0o700


def test_private_dir_refuses_a_file_and_a_shared_folder(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        private_dir(tmp_path / "f")
    with pytest.raises(
        ConfigError, match="^" + re.escape(f"{tmp_path / 'f'} is a file, not a folder")
    ):
        private_dir(tmp_path / "f" / "below")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: never ours to close
    with pytest.raises(ConfigError, match="open to other accounts"):
        private_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777


def test_loose_folder_of_other_files_is_left_to_its_owner(tmp_path: Path) -> None:
    """``hai up ~`` or ``hai up /etc`` must not close a folder hai did not make."""
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    (home / "notes.txt").write_text("")
    with pytest.raises(ConfigError, match="holds 'notes.txt', which hai did not put there"):
        private_dir(home, STATE_ENTRIES)
    assert stat.S_IMODE(home.stat().st_mode) == 0o755
    old_state = tmp_path / "old"
    old_state.mkdir()
    old_state.chmod(0o755)
    for name in ("token", "hai.db", "cluster.json"):
        (old_state / name).touch(mode=0o644)
    old_log = old_state / "logs" / "job-1" / "run-0" / "rank-0.log"
    old_log.parent.mkdir(parents=True)
    old_log.touch(mode=0o644)
    private_dir(old_state, STATE_ENTRIES)  # a state folder from before: tightened, all of it
    assert stat.S_IMODE(old_state.stat().st_mode) == 0o700
    assert _loose(old_state) == []
    assert stat.S_IMODE(old_log.stat().st_mode) == 0o600


def test_files_and_database_are_private_whatever_the_umask(tmp_path: Path) -> None:
    tmp_path.chmod(0o700)
    old = os.umask(0)
    try:
        replace_text(tmp_path / "token", "t\n")
        store = SqlStore(sqlite_url(tmp_path))
        try:
            store.list_users()  # a connection in WAL mode: -wal and -shm exist while it is open
            names = {p.name for p in tmp_path.iterdir()}
            assert {"token", "hai.db", "hai.db-wal", "hai.db-shm"} <= names
            assert _loose(tmp_path) == []
        finally:
            store.close()
    finally:
        os.umask(old)


def test_store_tightens_an_existing_database(tmp_path: Path) -> None:
    SqlStore(sqlite_url(tmp_path)).close()
    (tmp_path / "hai.db").chmod(0o644)
    store = SqlStore(sqlite_url(tmp_path))
    store.close()
    assert stat.S_IMODE((tmp_path / "hai.db").stat().st_mode) == 0o600
