"""`hai fs3 meta` with FS3_ADMIN_TOKEN (the Helm chart's Secret) makes that token the
admin's before it serves: a real meta process on a real SQLite store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fs3.errors import NotPermitted
from fs3.meta import users
from fs3.meta.backends import open_meta_store

from ..waiting import wait_for


def _serves(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _run_meta(db: Path, token: str, free_port: Callable[[], int]) -> None:
    """Runs meta with ``token`` until it serves, then stops it."""
    port = free_port()
    env = {
        **os.environ,
        "FS3_ADMIN_TOKEN": token,
        "FS3_SECURITY__CAPABILITIES": "false",  # no mgmtd, no cluster secret: meta alone
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "fs3", "meta", "--host", "127.0.0.1", "--port", str(port)]
        + ["--db", str(db), "--mgmtd", f"127.0.0.1:{free_port()}"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for("meta to serve", lambda: _serves(port) or proc.poll() is not None)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_meta_makes_fs3_admin_token_the_admins_and_a_new_one_replaces_it(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    db = tmp_path / "meta.db"
    _run_meta(db, "chart-token-1", free_port)
    _run_meta(db, "chart-token-2", free_port)  # the Secret rotated, meta restarted
    store = open_meta_store(db)
    try:
        admin = users.authenticate(store, "chart-token-2")
        assert (admin.name, admin.admin) == (users.ADMIN, True)
        with pytest.raises(NotPermitted):
            users.authenticate(store, "chart-token-1")
        assert [u.name for u in store.run(lambda txn: txn.users())] == [users.ADMIN]
    finally:
        store.close()
