"""Rank cgroups (cgroup v2), where the machine lets the agent make them.

A rank's process group holds what it forks, but a process can leave its group on purpose
(setsid, setpgid, a daemon's double fork); it cannot leave its cgroup. So where the agent
may make cgroups under its own, each rank's supervisor joins one of its own before it
forks the rank, and ``cgroup.kill`` ends everything in it. Where it may not (no cgroup v2
mount, a cgroup the agent does not own), ranks run with their process groups only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from pathlib import Path


def own_cgroup() -> Path | None:
    """The folder of this process's cgroup v2, if it exists and this process may make
    cgroups in it; None otherwise."""
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    # mountinfo: ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS... - FSTYPE SOURCE SUPER_OPTIONS
    mount = next((m.split()[4] for m in mounts if " - cgroup2 " in m), None)
    own = next((line[3:] for line in lines if line.startswith("0::")), None)
    if mount is None or own is None:
        return None
    path = Path(mount) / own.lstrip("/")
    return path if path.is_dir() and os.access(path, os.W_OK) else None


def agent_cgroup(own: Path) -> Path | None:
    """Makes this executor's cgroup under ``own`` (``hai-PID.RANDOM``: one process may hold
    several executors, as tests do), after ending what agents that
    died left in theirs: the processes of a rank whose supervisor was killed with its agent
    (a machine's OOM killer, say) die here, when an agent next starts on the machine.
    None if refused."""
    for stale in own.glob("hai-*"):
        pid = stale.name.removeprefix("hai-").split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            remove_tree(stale)
    return make(own, f"hai-{os.getpid()}.{secrets.token_hex(4)}")


def remove_tree(path: Path) -> bool:
    """Kills every process in the cgroup ``path`` and those under it, and removes the
    folders that are empty; False while some are not (a later call removes them)."""
    done = True
    for child in [c for c in path.iterdir() if c.is_dir()] if path.is_dir() else []:
        done = remove_tree(child) and done
    kill(path)
    return remove(path) and done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True


def make(parent: Path, name: str) -> Path | None:
    """Makes the cgroup ``parent/name`` (or takes a leftover one); None if refused."""
    path = parent / name
    try:
        path.mkdir(exist_ok=True)
    except OSError:
        return None
    return path


def kill(path: Path) -> None:
    """SIGKILLs every process in the cgroup (returns at once; they die shortly after)."""
    try:
        (path / "cgroup.kill").write_text("1")
        return
    except FileNotFoundError:
        if not path.exists():
            return
    except OSError:
        pass
    # No cgroup.kill (Linux before 5.14): kill what is listed, which a fork may outrun.
    with contextlib.suppress(OSError):
        for pid in (path / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def signal_strays(path: Path, sig: int, pgid: int) -> None:
    """Sends ``sig`` to the processes of the cgroup outside the process group ``pgid``: the
    ones that left it (those in it got ``sig`` from killpg, and must not get it twice)."""
    try:
        pids = (path / "cgroup.procs").read_text().split()
    except OSError:
        return
    for pid in map(int, pids):
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(pid) != pgid:
                os.kill(pid, sig)


def remove(path: Path) -> bool:
    """Removes the cgroup once it is empty; False while processes are still in it."""
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True
