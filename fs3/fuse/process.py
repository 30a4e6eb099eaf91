"""Mounts as processes: start one in the background, wait until it answers, stop it.

Used by ``hai fs3 mount --background`` and by :func:`fs3.mount`. Nothing here imports
pyfuse3: a training script that calls ``fs3.mount`` needs only the mount process to have it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fs3.errors import Fs3Error, Fs3TimeoutError
from fs3.fuse.options import MountOptions

FSTYPE = "fuse.fs3"
"""What /proc/self/mountinfo and ``mount`` show as the type of an fs3 mount."""
_STOP_TIMEOUT_S = 30.0  # commit of buffered writes (bounded by timeouts.retry_s) plus unmount
_OCTAL = re.compile(r"\\([0-7]{3})")


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, fstype, major:minor) of every mount this process sees."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
            out.append((point, fields[sep + 1], fields[2]))
    return out


def _fs3_mount(
    mountpoint: str | os.PathLike[str], resolved: bool = False
) -> tuple[str, str, str] | None:
    # realpath stats the path, which a mount not yet serving would never answer
    target = str(mountpoint) if resolved else os.path.realpath(mountpoint)
    found = [m for m in _mounts() if m[0] == target]
    return found[-1] if found and found[-1][1] == FSTYPE else None  # the topmost mount counts


def is_mounted(mountpoint: str | os.PathLike[str]) -> bool:
    """Whether an fs3 FUSE mount is the topmost mount at ``mountpoint``."""
    return _fs3_mount(mountpoint) is not None


def mount_device(mountpoint: str | os.PathLike[str]) -> str | None:
    """``major:minor`` of the fs3 mount at ``mountpoint`` (names its sysfs bdi), or None.
    ``mountpoint`` must be a resolved path: this is asked before the mount serves."""
    found = _fs3_mount(mountpoint, resolved=True)
    return found[2] if found else None


def unmount(mountpoint: str | os.PathLike[str], lazy: bool = False) -> None:
    """Unmounts the fs3 mount at ``mountpoint``; its process then commits and exits.

    Raises:
        Fs3Error: nothing of ours is mounted there, or the mount is busy (files open,
            a shell inside it) and ``lazy`` is off; the message says what to do.
    """
    if not is_mounted(mountpoint):
        raise Fs3Error(f"{mountpoint} is not an fs3 mount", str(mountpoint))
    tool = shutil.which("fusermount3")
    if tool:
        command = [tool, "-u"] + (["-z"] if lazy else [])
    else:  # root without the fuse3 package: plain umount does it
        command = ["umount"] + (["-l"] if lazy else [])
    done = subprocess.run(command + [str(mountpoint)], capture_output=True, text=True, timeout=60)
    if done.returncode:
        hint = "" if lazy else "; close files under it, or unmount lazily (hai fs3 umount --lazy)"
        raise Fs3Error(f"cannot unmount {mountpoint}: {done.stderr.strip()}{hint}", str(mountpoint))


def mount_command(
    mountpoint: str | os.PathLike[str],
    cluster: str | None = None,
    config_path: str | None = None,
    chunk_size: int | None = None,
    options: MountOptions | None = None,
    parent_pid: int | None = None,
) -> list[str]:
    """The ``python -m fs3 mount ...`` command line that mounts in the foreground."""
    command = [sys.executable, "-m", "fs3", "mount", str(mountpoint)]
    if cluster:
        command += ["--address", cluster]
    if config_path:
        command += ["--config", str(config_path)]
    if chunk_size:
        command += ["--chunk-size", str(chunk_size)]
    defaults = MountOptions()
    for field in dataclasses.fields(MountOptions):
        value = getattr(options or defaults, field.name)
        if value == getattr(defaults, field.name):
            continue
        flag = "--" + field.name.replace("_", "-")
        command += [flag] if value is True else [flag, str(value)]
    if parent_pid:
        command += ["--parent-pid", str(parent_pid)]
    return command


def start_mount(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Starts a mount process in a session of its own (so a Ctrl-C meant for the caller does
    not unmount under it), its output going to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_mounted(
    mountpoint: str | os.PathLike[str],
    proc: subprocess.Popen[bytes],
    log_path: Path,
    timeout: float,
) -> None:
    """Returns once the mount answers (listed as fs3 in mountinfo and its root stats).

    Raises:
        Fs3Error: the mount process exited first; the message ends with its log.
        Fs3TimeoutError: not mounted within ``timeout`` seconds (the process is stopped).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Fs3Error(
                f"fs3 mount at {mountpoint} failed (exit {proc.returncode}); "
                f"log {log_path}:\n{_tail(log_path)}"
            )
        if is_mounted(mountpoint):
            os.stat(mountpoint)  # answered by the mount process itself
            return
        time.sleep(0.05)
    stop_mount(proc, mountpoint)
    raise Fs3TimeoutError(
        f"fs3 mount at {mountpoint} not up within {timeout:g}s; log {log_path}:\n{_tail(log_path)}"
    )


def stop_mount(
    proc: subprocess.Popen[bytes],
    mountpoint: str | os.PathLike[str],
    timeout: float = _STOP_TIMEOUT_S,
) -> None:
    """Asks the mount process to unmount and exit; kills it past ``timeout`` and then
    detaches whatever mount it left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if is_mounted(mountpoint):
        unmount(mountpoint, lazy=True)


@contextmanager
def mount(
    mountpoint: str | os.PathLike[str],
    cluster: str | None = None,
    *,
    config_path: str | None = None,
    chunk_size: int | None = None,
    options: MountOptions | None = None,
    timeout: float = 60.0,
) -> Iterator[Path]:
    """Mounts fs3 at ``mountpoint`` for the ``with`` block, in a background process.

    ``cluster`` is the mgmtd ``HOST:PORT`` (default: ``$FS3_CLUSTER`` or the fs3 config).
    Returns once the mount answers; unmounts when the block ends, also when it raises.
    The mount process watches this process and unmounts as soon as it is gone, so a
    SIGKILLed script leaves no mount behind. A missing mount point is created.

    Raises:
        Fs3Error: the mount failed (bad address, cluster down, pyfuse3 missing); the
            message ends with the mount process's log.
        Fs3TimeoutError: the mount did not answer within ``timeout`` seconds.
    """
    command = mount_command(mountpoint, cluster, config_path, chunk_size, options, os.getpid())
    with serving(command, mountpoint, timeout) as mounted:
        yield mounted


@contextmanager
def serving(
    command: list[str], mountpoint: str | os.PathLike[str], timeout: float
) -> Iterator[Path]:
    """Runs the mount process ``command`` (which mounts at ``mountpoint``) for the ``with``
    block: returns once it answers, stops it when the block ends, as :func:`mount` says."""
    Path(mountpoint).mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="fs3-mount-", suffix=".log")
    os.close(fd)
    log_path = Path(name)
    proc = start_mount(command, log_path)
    mounted = False
    try:
        wait_mounted(mountpoint, proc, log_path, timeout)
        mounted = True
        yield Path(mountpoint)
    finally:
        stop_mount(proc, mountpoint)
        if mounted:  # kept when mounting failed: the error names it
            log_path.unlink(missing_ok=True)
