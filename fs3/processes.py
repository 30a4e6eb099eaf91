"""Finding and stopping a local cluster's processes by what they run, not by a pid file.

A pid file goes stale: a process restarted by hand is not in it, and a pid in it may
belong to something else by now. ``hai fs3 down`` and ``hai down`` therefore look for the
processes whose command line names their cluster's folder (with psutil), and stop those:
SIGTERM, then SIGKILL to what is left, naming what they could not stop. Zombies count as
gone, because PID 1 in a container may never reap them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil

Found = tuple[str, psutil.Process]
"""A process of a cluster, with the name it has there (``server``, ``storage-2``)."""
Wrap = Callable[[list[str]], list[str]]
Placement = Callable[[str], tuple[str, Wrap]]
"""Where a cluster's process runs when its hosts are several: its name -> the address it
listens on and announces, and what makes its command run on that host (e.g.
``testhosts.Hosts.command``)."""


def program_args(cmdline: list[str], program: str) -> list[str]:
    """What follows ``program`` in ``[python [-m]] program ARGS``; empty for any other
    command line."""
    for i, arg in enumerate(cmdline[:4]):
        if Path(arg).name == program:
            return cmdline[i + 1 :]
    return []


def option(args: list[str], flag: str) -> str | None:
    """The value of ``flag`` in ``args`` (``--flag V`` or ``--flag=V``), None without it."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(f"{flag}="):
            return arg.split("=", 1)[1]
    return None


def path_of(proc: psutil.Process, value: str) -> Path:
    """``value``, a path on ``proc``'s command line, made absolute as ``proc`` sees it
    (relative to its working folder). Raises psutil.Error when that is hidden or gone."""
    path = Path(value).expanduser()
    return (path if path.is_absolute() else Path(proc.cwd()) / path).resolve()


def label(name: str, proc: psutil.Process) -> str:
    return f"{name} (pid {proc.pid})"


def stop(found: list[Found], timeout_s: float) -> tuple[list[str], list[str]]:
    """SIGTERM to each of ``found`` in order, SIGKILL to what is left after ``timeout_s``;
    returns what stopped and, one line each, what could not be (another account's, or one
    that outlived SIGKILL)."""
    stopped: list[str] = []
    refused: list[str] = []
    signalled = []
    for name, proc in found:
        try:
            proc.terminate()
            signalled.append((name, proc))
        except psutil.NoSuchProcess:
            stopped.append(label(name, proc))
        except psutil.AccessDenied:
            refused.append(
                f"could not stop {label(name, proc)}: it runs as {_owner(proc)}, "
                "and this account may not signal it"
            )
    left = _wait_gone(signalled, timeout_s)
    for _, proc in left:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass  # went between the wait and the kill
    left = _wait_gone(left, 5.0)
    stopped += [label(name, proc) for name, proc in signalled if (name, proc) not in left]
    refused += [f"could not stop {label(name, proc)}: it outlived SIGKILL" for name, proc in left]
    return stopped, refused


def _wait_gone(procs: list[Found], timeout_s: float) -> list[Found]:
    """Those of ``procs`` still running after up to ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    left = [item for item in procs if not gone(item[1])]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [item for item in left if not gone(item[1])]
    return left


def gone(proc: psutil.Process) -> bool:
    """Exited: reaped when it is our child, else a zombie (init here may never reap it)."""
    try:
        proc.wait(timeout=0)
        return True
    except psutil.TimeoutExpired:
        pass
    except psutil.NoSuchProcess:
        return True
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _owner(proc: psutil.Process) -> str:
    try:
        return proc.username()
    except (KeyError, psutil.Error):
        return "another account"
