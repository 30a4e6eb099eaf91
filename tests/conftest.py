"""Shared fixtures and marker handling for the whole suite.

Markers name what a test needs from the machine; a test whose need is not met is skipped
with the reason, so a 2-core CI machine with no GPU runs everything it can.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from hai.doctor import find_postgres_bindir
from testhosts import Hosts, hosts_missing
from tests.kube.control_plane import kube_missing


def _cuda_missing() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "no CUDA device on this machine"


def _postgres_missing() -> str | None:
    if find_postgres_bindir() is None:
        return "PostgreSQL server binaries not installed (Debian: apt-get install postgresql)"
    return None


def _fuse_missing() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is absent"
    if shutil.which("fusermount3") is None:
        return "fusermount3 not installed (Debian: apt-get install fuse3)"
    if importlib.util.find_spec("pyfuse3") is None:
        return "pyfuse3 not installed (apt-get install libfuse3-dev, then ./run setup)"
    return None


# marker name -> probe returning the reason to skip, or None when the need is met
_NEEDS: dict[str, Callable[[], str | None]] = {
    "gpu": _cuda_missing,
    "postgres": _postgres_missing,
    "fuse": _fuse_missing,
    "hosts": hosts_missing,
    "kube": kube_missing,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons: dict[str, str | None] = {}
    for item in items:
        for name, probe in _NEEDS.items():
            if item.get_closest_marker(name) is None:
                continue
            if name not in reasons:
                reasons[name] = probe()
            if reasons[name] is not None:
                item.add_marker(pytest.mark.skip(reason=f"needs {name}: {reasons[name]}"))


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Returns a function handing out loopback TCP ports that were free a moment ago.

    Each call gives a different port, so one test can start several servers.
    """
    handed_out: set[int] = set()

    def pick() -> int:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in handed_out:
                handed_out.add(port)
                return port

    return pick


@pytest.fixture
def make_hosts() -> Iterator[Callable[..., Hosts]]:
    """Returns ``make(n, **options)``: n test hosts (docs/hosts.md), removed when the test ends,
    also when it failed. Mark the test ``hosts``."""
    made: list[Hosts] = []

    def make(count: int, **options: Any) -> Hosts:
        made.append(Hosts.up(count, **options))
        return made[-1]

    yield make
    for hosts in made:
        hosts.down()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """An empty folder for one test's service state (databases, chunks, logs)."""
    path = tmp_path / "state"
    path.mkdir()
    return path


def _drop_root() -> Callable[[], None] | None:
    # initdb and postgres refuse to run as root; CI and this machine run tests as root.
    if os.geteuid() != 0:
        return None
    nobody = pwd.getpwnam("nobody")

    def demote() -> None:
        os.setgid(nobody.pw_gid)
        os.setuid(nobody.pw_uid)

    return demote


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server of its own on a free loopback port; yields its base URL."""
    bindir = find_postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (Debian: apt-get install postgresql)")
    data = Path(tempfile.mkdtemp(prefix="hai-pg-"))
    demote = _drop_root()
    if demote is not None:
        nobody = pwd.getpwnam("nobody")
        os.chown(data, nobody.pw_uid, nobody.pw_gid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = dict(preexec_fn=demote, check=True, capture_output=True, timeout=120)
    subprocess.run(
        [f"{bindir}/initdb", "-D", str(data / "db"), "-U", "hai", "--auth=trust", "-E", "UTF8"],
        **run,
    )
    options = f"-p {port} -h 127.0.0.1 -k {data} -c fsync=off"
    subprocess.run(
        [
            f"{bindir}/pg_ctl",
            "-D",
            str(data / "db"),
            "-o",
            options,
            "-l",
            str(data / "log"),
            "-w",
            "-t",
            "60",
            "start",
        ],
        **run,
    )
    try:
        yield f"postgresql://hai@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [f"{bindir}/pg_ctl", "-D", str(data / "db"), "-m", "immediate", "-w", "stop"],
            preexec_fn=demote,
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database on the session's server."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    admin = sa.create_engine(
        postgres_server.replace("postgresql://", "postgresql+psycopg://") + "/postgres",
        isolation_level="AUTOCOMMIT",
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    yield f"{postgres_server}/{name}"


class PauseRecorder:
    """A ``sleep`` for the retry policies (``fs3.retry``) that records each pause and takes
    it: retries in tests run on budgets of a fraction of a second."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self.on_pause: Callable[[int], None] = lambda count: None
        """Called with the number of pauses so far, before each is taken."""

    def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.on_pause(len(self.pauses))
        time.sleep(seconds)


@pytest.fixture
def pauses() -> PauseRecorder:
    """Pass as ``sleep=`` to a retry loop; ``.pauses`` holds what it slept."""
    return PauseRecorder()


@pytest.fixture(scope="session")
def fs3_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a local fs3 cluster shared by the tests outside tests/fs3 that read or
    write fs3:// URLs (started on first use)."""
    from fs3.cluster import LocalCluster

    # The same quick settings as tests/fs3/conftest.py: no fsync keeps a 2-core CI fast.
    cluster = LocalCluster(tmp_path_factory.mktemp("fs3"), settings={"storage": {"fsync": False}})
    try:
        cluster.start()
        yield cluster.address
    finally:
        cluster.stop()
