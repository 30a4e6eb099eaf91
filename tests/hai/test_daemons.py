"""hai.daemons: the server process as ``hai server`` runs it, on a real port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from hai.errors import HaiError
from hai.rpc import ApiClient

from ..waiting import wait_for

HAI = Path(sys.executable).with_name("hai")


def test_the_server_admits_the_charts_admin_token_and_stops_on_sigterm(
    tmp_path: Path, free_port: Callable[[], int]
) -> None:
    port = free_port()
    env = {**os.environ, "HAI_ADMIN_TOKEN": "chart-secret"}
    argv = [str(HAI), "server", "--state-dir", str(tmp_path), "--port", str(port)]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    client = ApiClient(f"127.0.0.1:{port}", "chart-secret", 5.0)

    def whoami() -> dict | None:
        try:
            return client.call("WhoAmI")  # type: ignore[no-any-return]
        except HaiError:
            return None  # not listening yet

    try:
        me = wait_for("the server to answer", whoami)
        assert me["role"] == "admin", me
        # The chart's admin came first, so the server made no admin of its own.
        assert (tmp_path / "server.json").exists() and not (tmp_path / "token").exists()
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
