"""The mount process: mounts fs3 with pyfuse3, serves it until told to stop, unmounts.

It stops on SIGINT/SIGTERM/SIGHUP, when the mount is unmounted from outside
(``hai fs3 umount``, ``fusermount3 -u``), and, when started by :func:`fs3.mount`, as soon as
the process that started it is gone, even if that one was SIGKILLed. Before unmounting it
commits whatever open files still buffer.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

from fs3.client import FS3FileSystem
from fs3.errors import Fs3Error
from fs3.fuse.options import MountOptions
from fs3.fuse.process import FSTYPE, is_mounted, mount_device
from fs3.heap import keep_freed_memory

log = logging.getLogger("fs3.fuse")

_PARENT_POLL_S = 0.25  # how soon an orphaned mount notices its starter is gone


def _import_pyfuse3():  # type: ignore[no-untyped-def]
    try:
        import pyfuse3
        import trio
    except ImportError as err:
        raise Fs3Error(
            f"the fs3 FUSE mount needs pyfuse3 and trio ({err}): pip install 'pyfuse3>=3.3' "
            "(it builds against libfuse 3: apt-get install fuse3 libfuse3-dev pkg-config)"
        ) from None
    return pyfuse3, trio


def run_mount(
    mountpoint: str | os.PathLike[str],
    address: str | None = None,
    config_path: str | None = None,
    chunk_size: int | None = None,
    options: MountOptions | None = None,
    parent_pid: int | None = None,
) -> None:
    """Mounts the cluster at ``mountpoint`` and serves it until stopped (see module doc).

    Raises:
        Fs3Error: pyfuse3 missing, the mount point unusable or already an fs3 mount, the
            cluster unreachable (checked before mounting, so a dead cluster mounts nothing).
    """
    pyfuse3, trio = _import_pyfuse3()
    from fs3.fuse.ops import Fs3Operations

    keep_freed_memory()  # every chunk read ahead is a fresh chunk-sized buffer

    options = options or MountOptions()
    target = Path(os.path.realpath(mountpoint))
    if not target.is_dir():
        raise Fs3Error(f"mount point {target} is not a directory; create it first", str(target))
    if is_mounted(target):
        raise Fs3Error(f"{target} is already an fs3 mount; `hai fs3 umount {target}` first")
    fs = FS3FileSystem(address, config_path, chunk_size, skip_instance_cache=True)
    ops = Fs3Operations(fs, options)  # reads the root: fails here when the cluster is down
    fuse_options = set(pyfuse3.default_options) | {"fsname=fs3", f"subtype={FSTYPE[5:]}"}
    if options.allow_other:
        fuse_options.add("allow_other")
    if options.debug:
        fuse_options.add("debug")
    pyfuse3.init(ops, str(target), fuse_options)
    log.info("fs3 cluster %s mounted at %s", fs.config.client.address, target)
    try:
        trio.run(serve_until_stopped, pyfuse3, trio, ops, target, parent_pid)
    finally:
        ops.shutdown()
        pyfuse3.close(unmount=True)
        fs.pool.close()
        log.info("fs3 unmounted from %s", target)


async def serve_until_stopped(pyfuse3, trio, ops, target: Path, parent_pid: int | None) -> None:  # type: ignore[no-untyped-def]
    """Runs pyfuse3's loop until a signal, an unmount from outside or, with ``parent_pid``,
    that process's end; raises the kernel read-ahead once INIT is answered. ``ops`` has an
    ``initialised`` trio event its ``init`` sets and ``options`` (a MountOptions)."""

    async def stop_on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("signal %d: unmounting", signum)
                pyfuse3.terminate()
                return

    async def stop_when_orphaned(pid: int) -> None:
        while os.getppid() == pid:
            await trio.sleep(_PARENT_POLL_S)
        log.info("process %d that started the mount is gone: unmounting", pid)
        pyfuse3.terminate()

    async def tune_when_initialised() -> None:
        # The kernel sets the read-ahead from the INIT reply: raise it only after that.
        await ops.initialised.wait()
        await trio.to_thread.run_sync(_tune_kernel, target, ops.options)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_on_signal)
        nursery.start_soon(tune_when_initialised)
        if parent_pid:
            nursery.start_soon(stop_when_orphaned, parent_pid)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def _tune_kernel(mountpoint: Path, options: MountOptions) -> None:
    """Raises the new mount's kernel read-ahead and background request limit (the kernel
    takes both from the INIT reply, which pyfuse3 does not let us fill in), through sysfs.
    Where /sys is read-only or fusectl is missing the kernel defaults stay, logged."""
    device = mount_device(mountpoint)
    if device is None:
        return
    if options.readahead_kib:
        _write_knob(Path(f"/sys/class/bdi/{device}/read_ahead_kb"), options.readahead_kib)
    major, minor = device.split(":")
    if major != "0":
        return
    connections = Path("/sys/fs/fuse/connections")
    mounted_here = False
    if not (connections / minor).exists() and os.geteuid() == 0:
        # systemd mounts fusectl at boot; containers often lack it. Mount it for the two
        # writes only, so the machine is left as it was.
        done = subprocess.run(
            ["mount", "-t", "fusectl", "fusectl", str(connections)], capture_output=True, text=True
        )
        mounted_here = done.returncode == 0
    try:
        knobs = connections / minor
        _write_knob(knobs / "max_background", options.max_background)
        _write_knob(knobs / "congestion_threshold", options.max_background * 3 // 4)
    finally:
        if mounted_here:
            subprocess.run(["umount", str(connections)], capture_output=True)


def _write_knob(knob: Path, value: int) -> None:
    try:
        knob.write_text(str(value))
    except OSError as err:
        log.info("kernel setting %s left at its default: %s", knob, err)
