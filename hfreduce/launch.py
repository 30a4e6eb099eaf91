"""Start a job's ranks as processes on this machine, grouped into virtual nodes.

Each rank gets the environment torchrun or the platform would give it (RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) plus a distinct
HFREDUCE_NODE_ID per virtual node, so the inter-node path runs over loopback. Every run
has a deadline and kills what is left after it.

This is the benchmarks' launcher, not test scaffolding: ``python -m hfreduce.bench``,
``hfreduce.model.calibrate`` and ``haiscale.bench`` start their ranks with it on a machine
with no cluster, and the multi-process tests reuse it rather than keep a second one.
"""

from __future__ import annotations

import faulthandler
import gc
import multiprocessing as mp
import os
import pickle
import shutil
import signal
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any


@dataclass
class RankOutcome:
    rank: int
    value: Any = None
    error: str | None = None
    """The rank's exception (type, message and traceback), or why it produced nothing."""
    exitcode: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class RanksFailed(RuntimeError):
    def __init__(self, outcomes: list[RankOutcome]) -> None:
        self.outcomes = outcomes
        failed = "\n".join(f"rank {o.rank}: {o.error}" for o in outcomes if not o.ok)
        super().__init__(f"ranks failed:\n{failed}")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def rank_environment(
    rank: int, nodes: int, ranks_per_node: int, port: int, master_addr: str = "127.0.0.1"
) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(nodes * ranks_per_node),
        "LOCAL_RANK": str(rank % ranks_per_node),
        "LOCAL_WORLD_SIZE": str(ranks_per_node),
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": str(port),
        "HFREDUCE_NODE_ID": f"node{rank // ranks_per_node}",
    }


def _child(
    fn: Callable[..., Any],
    env: dict[str, str],
    args: tuple,
    threads: int,
    conn: Connection,
    stacks: str,
) -> None:
    os.environ.update(env)
    # On SIGUSR1 (sent before a stuck rank is killed) write every thread's stack to a
    # file the parent reads, so a hang is reported with where it hung.
    faulthandler.register(signal.SIGUSR1, file=open(stacks, "w"), all_threads=True)  # noqa: SIM115
    import torch

    # Ranks share the machine's cores; one intra-op thread each keeps them from fighting.
    torch.set_num_threads(threads)
    # Plain pickle: multiprocessing's own would share tensors through file descriptors
    # that vanish when this process exits.
    try:
        conn.send_bytes(pickle.dumps((fn(*args), None)))
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        conn.send_bytes(pickle.dumps((None, error)))
    finally:
        conn.close()
        # A process group that a reference cycle keeps alive (DDP's hooks hold the model)
        # would otherwise be destroyed while the interpreter shuts down, where Gloo's
        # threads abort the process (SIGABRT, "terminate called without an active
        # exception") after the rank had reported its result: 1 exit in 40 under load.
        gc.collect()


def run_ranks(
    fn: Callable[..., Any],
    *,
    nodes: int = 1,
    ranks_per_node: int = 2,
    args: tuple = (),
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
    threads: int = 1,
    check: bool = True,
    start_method: str = "fork",
    master_addr: str = "127.0.0.1",
) -> list[RankOutcome]:
    """Run ``fn(*args)`` on every rank and return each rank's outcome, in rank order.

    Ranks that use CUDA need ``start_method="spawn"`` (CUDA does not survive a fork),
    and then ``fn`` must be importable by its module name. With ``check`` a failed or
    timed-out rank raises RanksFailed listing all of them. ``master_addr`` is the loopback
    address rank 0's store listens on (``"::1"`` runs the job over IPv6).
    """
    ctx = mp.get_context(start_method)
    port = free_port(master_addr)
    world = nodes * ranks_per_node
    procs, pipes = [], {}
    stacks = tempfile.mkdtemp(prefix="hfreduce-ranks-")
    for rank in range(world):
        receive, send = ctx.Pipe(duplex=False)
        rank_env = {
            **(env or {}),
            **rank_environment(rank, nodes, ranks_per_node, port, master_addr),
        }
        dump = os.path.join(stacks, str(rank))
        proc = ctx.Process(
            target=_child, args=(fn, rank_env, args, threads, send, dump), daemon=True
        )
        proc.start()
        send.close()
        procs.append(proc)
        pipes[receive] = rank
    outcomes = [RankOutcome(rank) for rank in range(world)]
    deadline = time.monotonic() + timeout
    pending = dict(pipes)
    while pending and (left := deadline - time.monotonic()) > 0:
        for conn in wait(list(pending), timeout=left):
            rank = pending.pop(conn)
            try:
                outcomes[rank].value, outcomes[rank].error = pickle.loads(conn.recv_bytes())
            except EOFError:
                outcomes[rank].error = "exited without a result"
    for rank in pending.values():
        outcomes[rank].error = f"no result within {timeout:.0f}s (killed); its threads:\n"
        outcomes[rank].error += _stacks_of(procs[rank], os.path.join(stacks, str(rank)))
    for proc, outcome in zip(procs, outcomes, strict=True):
        proc.join(timeout=max(0.0, deadline - time.monotonic()) if outcome.ok else 1.0)
        if proc.is_alive():
            proc.kill()
            proc.join()
        outcome.exitcode = proc.exitcode
        if outcome.ok and proc.exitcode not in (0, None):
            outcome.error = f"exited with code {proc.exitcode}"
    shutil.rmtree(stacks, ignore_errors=True)
    if check and not all(o.ok for o in outcomes):
        raise RanksFailed(outcomes)
    return outcomes


def _stacks_of(proc: mp.process.BaseProcess, dump: str) -> str:
    if proc.is_alive() and proc.pid is not None:
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(0.5)
    try:
        with open(dump) as f:
            return f.read() or "(no stack dump)"
    except OSError:
        return "(no stack dump)"
