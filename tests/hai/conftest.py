"""Fixtures for the platform tests: state stores on every backend, a real PostgreSQL server."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from hai.doctor import find_postgres_bindir
from hai.store import SqlStore, StateStore, sqlite_url


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


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, state_dir: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(state_dir)
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(store_url: str) -> Iterator[StateStore]:
    """Every StateStore implementation, in turn (the conformance suite runs on each)."""
    s = SqlStore(store_url)
    yield s
    s.close()
