"""The demo's services: a local fs3 cluster and a local platform, under one folder.

``DemoStack`` starts both and stops both, whatever happens in between (an error, Ctrl-C,
SIGTERM): nothing it started outlives it unless the caller asks to keep it running.
One folder holds one demo at a time; a lock (held by the process, so a crash frees it)
turns a second ``hai demo`` on the same folder into a clear error.

Layout::

    STATE_DIR/demo.json     marks the folder as a demo's (so a rerun may clear it)
    STATE_DIR/demo.lock     held while a demo runs
    STATE_DIR/fs3/          the fs3 cluster (``hai fs3 status STATE_DIR/fs3``)
    STATE_DIR/hai/          the platform (``HAI_STATE_DIR=STATE_DIR/hai hai ls``)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fs3.cluster import LocalCluster, stop_cluster
from hai.cluster import CLUSTER_FILE, ClusterInfo, down, up
from hai.errors import HaiError

MARKER = "demo.json"
LOCK = "demo.lock"
_OURS = (MARKER, LOCK, "fs3", "hai", "demo")
"""What a demo creates in its folder; a rerun removes these and nothing else."""

PLATFORM_SETTINGS = {
    # A lively demo: scheduling passes and heartbeats twice a second instead of every
    # 1-2 s, and no minimum run slice, so the urgent job preempts at once.
    "HAI_SCHEDULER__PASS_INTERVAL_S": "0.5",
    "HAI_AGENT__HEARTBEAT_S": "0.5",
    "HAI_POLICY__MIN_RUN_S": "0",
    # The health probes (memory bandwidth, a GEMM) have their own tests; on 2 cores they
    # would slow the training the demo is about.
    "HAI_AGENT__HEALTH_INTERVAL_S": "3600",
    # The demo's ranks run the demo's own Python (often in its user's home) and write their
    # metrics into its folder: one user's machine, so they run as the demo's own account.
    "HAI_AGENT__RUN_AS": "agent",
}


class DemoError(HaiError):
    """The demo cannot start here (folder, lock, port); the message says what to change."""


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DemoStack:
    root: Path
    nodes: int = 2
    gpus_per_node: int = 2
    port: int | None = None
    """The platform server's port; None picks a free one."""
    keep: bool = False
    """Leave both clusters running on exit (the caller stops them with :func:`stop`)."""
    fs3: LocalCluster | None = None
    platform: ClusterInfo | None = None
    _lock: IO[str] | None = field(default=None, repr=False)

    @property
    def fs3_dir(self) -> Path:
        return self.root / "fs3"

    @property
    def hai_dir(self) -> Path:
        return self.root / "hai"

    @property
    def work_dir(self) -> Path:
        """Files of the demo itself: job configs, metrics, the summary and the picture."""
        return self.root / "demo"

    def __enter__(self) -> DemoStack:
        self.root = self.root.expanduser().resolve()
        self._take_folder()
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _take_folder(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._refuse_foreign_folder()
            lock = open(self.root / LOCK, "a+")  # noqa: SIM115 - held until close()
        except OSError as err:
            raise DemoError(f"cannot use {self.root} for the demo: {err.strerror}") from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            owner = lock.read().strip() or "another process"
            lock.close()
            raise DemoError(
                f"another hai demo (pid {owner}) is running in {self.root}; wait for it or "
                "pass another folder"
            ) from None
        self._lock = lock
        if (self.hai_dir / CLUSTER_FILE).exists() or (self.fs3_dir / "pids.json").exists():
            self._release_lock()
            raise DemoError(
                f"a demo kept its clusters running in {self.root}; stop them first with "
                f"`hai demo --down {self.root}`"
            )
        for name in ("fs3", "hai", "demo"):  # an earlier demo's, now finished
            shutil.rmtree(self.root / name, ignore_errors=True)
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        (self.root / MARKER).write_text(json.dumps({"pid": os.getpid()}))
        self.work_dir.mkdir()

    def _refuse_foreign_folder(self) -> None:
        """A folder with files but no demo marker is someone's: touch nothing in it."""
        others = [p.name for p in self.root.iterdir() if p.name not in _OURS]
        if others and not (self.root / MARKER).exists():
            shown = ", ".join(sorted(others)[:3]) + (", ..." if len(others) > 3 else "")
            raise DemoError(
                f"{self.root} is not empty and holds no earlier demo ({shown}); pass an empty "
                "or new folder"
            )

    def _start(self) -> None:
        if self.port is not None and _port_in_use(self.port):
            raise DemoError(
                f"port {self.port} is in use; pass another --port, or none to pick a free one"
            )
        self.fs3 = LocalCluster(self.fs3_dir, targets=3, replicas=3)
        self.fs3.start()
        env = {**PLATFORM_SETTINGS, "FS3_CLUSTER": self.fs3.address}
        self.platform = up(
            self.hai_dir,
            self.nodes,
            self.gpus_per_node,
            self.port if self.port is not None else free_port(),
            env=env,
        )

    def close(self) -> None:
        """Stops what was started (unless ``keep``) and frees the folder."""
        if not self.keep:
            stop(self.root, self.fs3)
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock.close()
            self._lock = None


def stop(root: Path, fs3: LocalCluster | None = None) -> list[str]:
    """Stops the platform, then the fs3 cluster its jobs used, of the demo in ``root``;
    returns what was running. ``fs3``: the cluster object, when this process started it
    (its children are then reaped, not just signalled)."""
    root = root.expanduser().resolve()
    stopped = [f"platform {name}" for name in down(root / "hai")]
    if fs3 is not None and fs3.procs:
        stopped.append(f"{len(fs3.procs)} fs3 services")
        fs3.stop()
    elif services := stop_cluster(root / "fs3"):
        stopped.append(f"{len(services)} fs3 services")
    return stopped
