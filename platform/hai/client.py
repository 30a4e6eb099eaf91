"""The job-side API: ``from hai import client``.

Training code polls :func:`receive_suspend_command` (every rank sees it), saves a
checkpoint, calls :func:`go_suspend`, and on its next run reloads the checkpoint. State
that must survive across a chain's runs (a step counter, a checkpoint path) goes through
:func:`set_whole_life_state`. The agent passes the folders in the environment, so this
module needs no server address and works in any process the platform started.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hai.errors import ConfigError

SUSPEND_FILE = "suspend"
ACK_FILE = "suspend_ack"
_STATE_FILE = "whole_life_state.json"


def _folder(variable: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        raise ConfigError(f"{variable} is not set: this process was not started by hai")
    return Path(value)


def receive_suspend_command() -> bool:
    """True once the platform has asked this run to suspend; seen by every rank."""
    return (_folder("HAI_CONTROL_DIR") / SUSPEND_FILE).exists()


def go_suspend() -> None:
    """Says the checkpoint is done: the platform may stop this run now."""
    (_folder("HAI_CONTROL_DIR") / ACK_FILE).touch()


def restart_count() -> int:
    """How many runs of this job's chain came before this one (0 on the first)."""
    return int(os.environ.get("HAI_RESTART_COUNT", "0"))


def set_whole_life_state(state: dict[str, Any]) -> None:
    """Keeps a small JSON-able mapping for this chain's later runs (atomic replace)."""
    folder = _folder("HAI_CHAIN_DIR")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{_STATE_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, folder / _STATE_FILE)


def get_whole_life_state() -> dict[str, Any]:
    """What :func:`set_whole_life_state` last stored in this chain, or an empty dict."""
    path = _folder("HAI_CHAIN_DIR") / _STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {}
