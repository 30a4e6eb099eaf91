"""What a training job needs from its surroundings: a metrics file, and when to suspend.

`MetricsLog` appends the JSON-lines events that `deepseek.train`'s module docstring
describes. `JobHooks` tells the training loop when to stop early: when the hai platform
asks the job to suspend (through its job-side client, imported only when this process was
started by hai) or when the process gets SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class MetricsLog:
    """Appends one JSON object per line to `path`, flushed each time; None writes nothing.

    Safe to call from the checkpoint thread too (its "checkpoint" events).
    """

    def __init__(self, path: str | None) -> None:
        self._file = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115
        self._lock = threading.Lock()

    def write(self, event: str, **values: Any) -> None:
        line = json.dumps({"event": event, **values})
        with self._lock:
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


@dataclass
class JobHooks:
    """The `should_suspend` / `acknowledge_suspend` pair `deepseek.train.run` takes.

    `install()` builds it for the current process: SIGTERM always requests a suspend (the
    platform sends it to jobs that ignore the suspend file, and a finished step plus a
    checkpoint beats losing the work); with HAI_CONTROL_DIR set, so does the platform's
    suspend file, and the checkpoint is acknowledged through it.
    """

    acknowledge_suspend: Callable[[], None] | None = None
    platform_suspend: Callable[[], bool] | None = None
    terminated: threading.Event = field(default_factory=threading.Event)
    _previous_handler: Any = None

    def should_suspend(self) -> bool:
        if self.terminated.is_set():
            return True
        return self.platform_suspend is not None and self.platform_suspend()

    @classmethod
    def install(cls) -> JobHooks:
        """Hooks for this process; installs a SIGTERM handler (call from the main thread)."""
        hooks = cls()
        if os.environ.get("HAI_CONTROL_DIR"):
            # The job-side client API is the sanctioned interface between hai and the jobs
            # it runs (ARCHITECTURE.md); imported here, only under hai, so deepseek keeps no
            # dependency on the platform layer above it.
            from hai import client

            hooks.platform_suspend = client.receive_suspend_command
            hooks.acknowledge_suspend = client.go_suspend
        hooks._previous_handler = signal.signal(signal.SIGTERM, hooks._on_sigterm)
        return hooks

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        # Only set a flag: the training loop notices it after the step (and logs it there).
        self.terminated.set()

    def uninstall(self) -> None:
        """Puts back the SIGTERM handler `install` replaced."""
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
