"""The job-side API: ``from hai import client``.

Training code polls :func:`receive_suspend_command` (every rank sees it), saves a
checkpoint, calls :func:`go_suspend`, and on its next run reloads the checkpoint. State
that must survive across a chain's runs (a step counter, a checkpoint path) goes through
:func:`set_whole_life_state`, which the server keeps in its store, so it follows the chain
to whichever nodes its next run lands on. The agent passes everything this module needs
(control folder, server address, run token) in the environment.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hai.errors import ConfigError, HaiTimeoutError, Unavailable

SUSPEND_FILE = "suspend"
ACK_FILE = "suspend_ack"
SERVER_WAIT_S = 60.0
"""How long a whole-life state call keeps retrying while the server is away (a restart)."""


def _variable(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise ConfigError(f"{name} is not set: this process was not started by hai")
    return value


def receive_suspend_command() -> bool:
    """True once the platform has asked this run to suspend; seen by every rank."""
    return (Path(_variable("HAI_CONTROL_DIR")) / SUSPEND_FILE).exists()


def go_suspend() -> None:
    """Says the checkpoint is done: the platform may stop this run now."""
    (Path(_variable("HAI_CONTROL_DIR")) / ACK_FILE).touch()


def restart_count() -> int:
    """How many runs of this job's chain came before this one (0 on the first)."""
    return int(os.environ.get("HAI_RESTART_COUNT", "0"))


def _call_server(
    method: str, body: dict[str, Any], sleep: Callable[[float], None] = time.sleep
) -> Any:
    """``method`` on the server with ``body``; while the server is away (a restart),
    retried for :data:`SERVER_WAIT_S`, then its last error is raised."""
    # grpc (and fs3) only in processes that use whole-life state
    from fs3.retry import Backoff, retry
    from hai.rpc import ApiClient

    api = ApiClient(_variable("HAI_SERVER"), _variable("HAI_RUN_TOKEN"))
    try:
        return retry(
            lambda _: api.call(method, **body),
            budget_s=SERVER_WAIT_S,
            # A restarting server is back within a second or a few; the jitter keeps a
            # job's ranks, which call together, from knocking together.
            backoff=Backoff(first_s=0.1, max_s=1.0),
            retryable=lambda err: isinstance(err, Unavailable | HaiTimeoutError),
            sleep=sleep,
        )
    finally:
        api.close()  # no channel (and its threads) left behind for a later fork


def set_whole_life_state(state: dict[str, Any]) -> None:
    """Keeps a small JSON mapping (up to 64 KiB) for this chain's later runs.

    Raises:
        ConfigError: ``state`` is not a JSON-able dict, or is too big.
        StateError: this run is already over.
    """
    if not isinstance(state, dict):
        raise ConfigError(f"whole-life state must be a dict, not {type(state).__name__}")
    try:
        json.dumps(state)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"whole-life state must be JSON: {err}") from None
    _call_server("SetWholeLifeState", {"state": state})


def get_whole_life_state() -> dict[str, Any]:
    """What :func:`set_whole_life_state` last stored in this chain, or an empty dict."""
    return _call_server("GetWholeLifeState", {})
