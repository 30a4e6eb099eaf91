"""Starts one node's ranks inside a job pod and exits with the worst rank's code.

Usage (the pod's command): python3 launch.py, with the ranks in ``HAI_LAUNCH``: a JSON
list of ``{"rank", "argv", "env", "log"}``. Each rank runs with the container's
environment plus its own variables; its output goes to its log file (a host folder the
node's agent reads, so ``hai logs`` works as on a local cluster) and, prefixed with its
rank, to the container's output (``kubectl logs``).

SIGTERM (what the kubelet sends when the pod is deleted) is passed on to every rank; the
kubelet's SIGKILL after the grace period ends them all. A rank killed by signal N counts
as exit code 128 + N, as a shell reports it, and the executor reads that back as -N.

Only the standard library is used: the executor copies this file next to the run's
control files, so a job image needs a Python but not this package.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

MASTER_WAIT_S = float(os.environ.get("HAI_MASTER_WAIT_S", "300"))
"""How long to wait for MASTER_ADDR to resolve: node rank 0's pod gets its DNS name only
once it has an address, and the other nodes' pods may start first; 0 does not wait."""


def _wait_for_master(name: str) -> None:
    deadline = time.monotonic() + MASTER_WAIT_S
    while True:
        try:
            socket.getaddrinfo(name, None)
            return
        except OSError as err:
            if time.monotonic() > deadline:
                sys.stderr.write(f"hai: MASTER_ADDR {name} does not resolve: {err}; starting\n")
                return
            time.sleep(1.0)


def _pump(proc: subprocess.Popen, log_path: str, rank: int) -> None:
    prefix = f"[rank {rank}] ".encode()
    with open(log_path, "ab", buffering=0) as log:
        for line in iter(proc.stdout.readline, b""):  # type: ignore[union-attr]
            log.write(line)
            sys.stdout.buffer.write(prefix + line)
            sys.stdout.buffer.flush()


def _start(rank: dict, base: dict[str, str]) -> tuple[subprocess.Popen | None, threading.Thread]:
    os.makedirs(os.path.dirname(rank["log"]) or ".", exist_ok=True)
    try:
        proc = subprocess.Popen(
            rank["argv"],
            env={**base, **rank["env"]},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    except OSError as err:
        with open(rank["log"], "ab") as log:
            log.write(f"hai: cannot start {rank['argv'][0]!r}: {err}\n".encode())
        return None, threading.Thread()
    pump = threading.Thread(target=_pump, args=(proc, rank["log"], rank["rank"]), daemon=True)
    pump.start()
    return proc, pump


def main() -> int:
    ranks = json.loads(os.environ["HAI_LAUNCH"])
    base = {k: v for k, v in os.environ.items() if k != "HAI_LAUNCH"}
    master = base.get("MASTER_ADDR") or (ranks[0]["env"].get("MASTER_ADDR") if ranks else None)
    if master and MASTER_WAIT_S > 0:
        _wait_for_master(master)
    procs: list[subprocess.Popen | None] = []
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        for p in procs:
            if p is not None and p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    pumps = []
    for rank in ranks:
        if stopping:  # told to stop while starting: the ranks not yet started never run
            procs.append(None)
            continue
        proc, pump = _start(rank, base)
        procs.append(proc)
        pumps.append(pump)
    codes = [(-stopping[0] if stopping else 127) if p is None else p.wait() for p in procs]
    for pump in pumps:
        if pump.is_alive():
            pump.join(timeout=5)
    worst = next((c for c in codes if c != 0), 0)
    return 128 - worst if worst < 0 else worst


if __name__ == "__main__":
    sys.exit(main())
