"""The local executor: each rank is a child process of the agent on this machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hai.errors import StateError
from hai.executor.base import Executor, Launch, worst_exit

# Ranks must not outlive their agent: a killed agent's jobs are requeued elsewhere, and
# survivors would run the same chain twice. The script arms the kernel's death signal.
_GUARD = str(Path(__file__).with_name("die_with_parent.py"))


@dataclass
class _Run:
    launch: Launch
    procs: list[subprocess.Popen]
    kill_at: float | None = None


class LocalExecutor(Executor):
    def __init__(self) -> None:
        self._runs: dict[int, _Run] = {}

    def start(self, launch: Launch) -> None:
        if launch.run_id in self._runs:
            raise StateError(f"run {launch.run_id} already started on this node")
        launch.control_dir.mkdir(parents=True, exist_ok=True)
        procs = []
        for rank in launch.ranks:
            rank.log_path.parent.mkdir(parents=True, exist_ok=True)
            with rank.log_path.open("ab") as log:
                try:
                    procs.append(
                        subprocess.Popen(
                            [sys.executable, "-S", _GUARD, str(os.getpid()), *rank.argv],
                            env=rank.env,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL,
                        )
                    )
                except OSError as err:
                    log.write(f"hai: cannot start {rank.argv[0]!r}: {err}\n".encode())
                    procs.append(subprocess.Popen(["false"]))
        self._runs[launch.run_id] = _Run(launch, procs)

    def launch_of(self, run_id: int) -> Launch:
        return self._runs[run_id].launch

    def stop(self, run_id: int, grace_s: float) -> None:
        run = self._runs[run_id]
        if run.kill_at is None:
            run.kill_at = time.monotonic() + grace_s
            self._signal(run, signal.SIGTERM)

    def exit_code(self, run_id: int) -> int | None:
        run = self._runs[run_id]
        if run.kill_at is not None and time.monotonic() >= run.kill_at:
            self._signal(run, signal.SIGKILL)
        codes = [p.poll() for p in run.procs]
        if any(c is None for c in codes):
            return None
        return worst_exit([c for c in codes if c is not None])

    def run_ids(self) -> list[int]:
        return list(self._runs)

    def forget(self, run_id: int) -> None:
        self._runs.pop(run_id, None)

    def shutdown(self) -> None:
        for run in self._runs.values():
            self._signal(run, signal.SIGKILL)
            for p in run.procs:
                p.wait(timeout=10)

    @staticmethod
    def _signal(run: _Run, sig: int) -> None:
        for p in run.procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass
