"""The local executor: each rank is a child process of the agent on this machine.

Each rank runs in a process group of its own, led by a small supervisor
(``die_with_parent.py``) whose pid is the group's id: stop, the grace-period kill and
shutdown signal the whole group, and what is left of it when the rank exits is killed
before the supervisor is reaped, so nothing a rank forked outlives its run. Where the
machine lets the agent make cgroups (``cgroups.py``), each rank also has one, which holds
the processes that leave the group on purpose (setsid, setpgid); it is killed with it.
A rank with an account (:attr:`Launch.account`, a root agent's) takes it just before it
execs its command; its supervisor stays the agent's, and so does its log, which the agent
opens and the rank inherits as its output.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from hai.accounts import Account
from hai.errors import StateError
from hai.executor import cgroups
from hai.executor.base import Executor, Launch, worst_exit

# Ranks must not outlive their agent: a killed agent's jobs are requeued elsewhere, and
# survivors would run the same chain twice. The script arms the kernel's death signal and
# kills the rank's whole group when it fires.
_GUARD = str(Path(__file__).with_name("die_with_parent.py"))


@dataclass
class _Run:
    launch: Launch
    procs: list[subprocess.Popen]
    cgroups: list[Path | None]
    """Each rank's cgroup, None where it has none."""
    kill_at: float | None = None


class LocalExecutor(Executor):
    switches_accounts = True

    def __init__(self, *, use_cgroups: bool = True) -> None:
        """``use_cgroups``: give each rank a cgroup where this process may make them."""
        self._runs: dict[int, _Run] = {}
        own = cgroups.own_cgroup() if use_cgroups else None
        self.cgroup_root = None if own is None else cgroups.agent_cgroup(own)
        """Where ranks' cgroups are made; None: ranks have process groups only."""
        self._to_remove: list[Path] = []
        """Cgroups killed but not yet empty (removed at a later call)."""

    def start(self, launch: Launch) -> None:
        if launch.run_id in self._runs:
            raise StateError(f"run {launch.run_id} already started on this node")
        launch.control_dir.mkdir(parents=True, exist_ok=True)
        procs, groups = [], []
        for rank in launch.ranks:
            rank.log_path.parent.mkdir(parents=True, exist_ok=True)
            cgroup = self._cgroup(launch.run_id, rank.rank)
            groups.append(cgroup)
            with rank.log_path.open("ab") as log:
                try:
                    procs.append(
                        subprocess.Popen(
                            [
                                sys.executable,
                                "-S",
                                _GUARD,
                                str(os.getpid()),
                                str(cgroup or "-"),
                                _account_argument(launch.account),
                                *rank.argv,
                            ],
                            env=rank.env,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL,
                        )
                    )
                except OSError as err:
                    log.write(f"hai: cannot start {rank.argv[0]!r}: {err}\n".encode())
                    procs.append(subprocess.Popen(["false"]))
        self._runs[launch.run_id] = _Run(launch, procs, groups)

    def _cgroup(self, run_id: int, rank: int) -> Path | None:
        if self.cgroup_root is None:
            return None
        return cgroups.make(self.cgroup_root, f"run-{run_id}-rank-{rank}")

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
        codes = [_reap(p, cg) for p, cg in zip(run.procs, run.cgroups, strict=True)]
        self._remove_cgroups()
        if any(c is None for c in codes):
            return None
        return worst_exit([c for c in codes if c is not None])

    def run_ids(self) -> list[int]:
        return list(self._runs)

    def forget(self, run_id: int) -> None:
        run = self._runs.pop(run_id, None)
        if run is not None:
            self._to_remove += [cg for cg in run.cgroups if cg is not None]
        self._remove_cgroups()

    def _remove_cgroups(self) -> None:
        self._to_remove = [cg for cg in self._to_remove if not cgroups.remove(cg)]

    def end_leftovers(self, control_root: Path, node: str) -> int:
        """Finds them by the HAI_CONTROL_DIR of their environment, which every process a
        rank starts inherits: this ends what a rank left when its supervisor died with its
        agent, even where there are no cgroups (those are swept when the executor starts)."""
        ended = 0
        for proc in psutil.process_iter():
            try:
                if proc.pid == os.getpid():
                    continue
                control = proc.environ().get("HAI_CONTROL_DIR")
                if control and _is_control_of(Path(control), control_root, node):
                    proc.send_signal(signal.SIGKILL)
                    ended += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # gone, or another account's process that no rank of ours runs as
        return ended

    def shutdown(self) -> None:
        for run in self._runs.values():
            self._signal(run, signal.SIGKILL)
            for p in run.procs:
                p.wait(timeout=10)
        if self.cgroup_root is not None:
            # The killed processes leave their cgroups within moments; same bound as above.
            deadline = time.monotonic() + 10
            while not cgroups.remove_tree(self.cgroup_root) and time.monotonic() < deadline:
                time.sleep(0.05)

    @staticmethod
    def _signal(run: _Run, sig: int) -> None:
        # Unreaped (returncode None) is enough: while its supervisor is not reaped, the
        # group's id cannot belong to anyone else, even if the supervisor has exited.
        for p, cg in zip(run.procs, run.cgroups, strict=True):
            if p.returncode is None:
                _signal_group(p.pid, sig)
            if cg is not None and sig == signal.SIGKILL:
                cgroups.kill(cg)
            elif cg is not None:
                cgroups.signal_strays(cg, sig, p.pid)


def _account_argument(account: Account | None) -> str:
    """The supervisor's ACCOUNT argument: ``UID:GID:GROUPS`` or ``-`` (the agent's own)."""
    if account is None:
        return "-"
    return f"{account.uid}:{account.gid}:{','.join(map(str, account.groups))}"


def _is_control_of(control: Path, control_root: Path, node: str) -> bool:
    # Resolved: the agent that started the rank may have spelled its state folder otherwise.
    return control.name == node and control.parent.parent.resolve() == control_root.resolve()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the group is gone (or, for a rank that never started, never was)


def _reap(p: subprocess.Popen, cgroup: Path | None) -> int | None:
    """The exit code of a rank's supervisor, or None while it runs; once it has exited,
    SIGKILLs what is left of its group, then reaps it (not before: see _signal)."""
    if p.returncode is not None:
        return p.returncode
    try:
        exited = os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped behind our back; poll() says how it ended
        exited = True
    if exited is None:
        return None
    _signal_group(p.pid, signal.SIGKILL)
    if cgroup is not None:
        cgroups.kill(cgroup)
    return p.wait()
