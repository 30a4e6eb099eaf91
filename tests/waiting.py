"""Waiting in tests: poll until something holds, or fail saying what (never a guessed sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(
    what: str, check: Callable[[], object], timeout: float = 60.0, interval: float = 0.1
) -> object:
    """Polls ``check`` every ``interval`` seconds until it returns something true and returns
    that (generous: CI runs on 2 busy cores); raises AssertionError naming ``what`` after
    ``timeout`` seconds. A shorter ``interval`` suits a check that must see a brief state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
