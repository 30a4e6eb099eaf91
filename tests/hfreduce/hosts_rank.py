"""One rank of tests/hfreduce/test_hosts.py, started on a test host with
``python -m tests.hfreduce.hosts_rank MODE OUT_DIR`` from the repository root.

The environment gives RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT, HFREDUCE_NODE_ID
and the interfaces, as the platform would. Modes:

- ``compare``: the same inputs all-reduced by gloo and by hfreduce, saved to
  ``OUT_DIR/RANK.pt`` as ``{"gloo": {...}, "hfreduce": {...}}``;
- ``loop``: all-reduces until hfreduce fails, after touching ``OUT_DIR/ready-RANK`` once
  the first call went through; the failure is printed as ``Type: message`` on stderr and
  the exit code is ``FAILED``.
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed import TCPStore

import hfreduce

FAILED = 3
START_S = 60  # start-up on a loaded machine; only bounds the wait
SIZES = [1, 1000, (1 << 20) + 3]
DTYPES = [torch.int64, torch.float32]


def inputs(rank: int) -> dict[tuple[str, int], torch.Tensor]:
    """The rank's deterministic inputs, keyed by (dtype name, numel)."""
    out = {}
    for dtype in DTYPES:
        for n in SIZES:
            g = torch.Generator().manual_seed(n * 10 + rank)
            if dtype.is_floating_point:
                x = torch.randn(n, generator=g, dtype=dtype)
            else:
                x = torch.randint(-1000, 1000, (n,), generator=g, dtype=dtype)
            out[(str(dtype), n)] = x
    return out


def compare(rank: int, out_dir: Path) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    results: dict[str, dict] = {"gloo": {}, "hfreduce": {}}
    for key, x in inputs(rank).items():
        dist.all_reduce(x)
        results["gloo"][key] = x
    comm = hfreduce.init()  # on the process group's store
    for key, x in inputs(rank).items():
        comm.all_reduce(x)
        results["hfreduce"][key] = x
    hfreduce.destroy()
    dist.destroy_process_group()
    torch.save(results, out_dir / f"{rank}.pt")


def _store(rank: int) -> TCPStore:
    """The store hfreduce.init would make, but waiting START_S for the job's ranks: on a
    loaded machine they start seconds apart, more than the short HFREDUCE_TIMEOUT the
    test gives hfreduce.init's own store."""
    return TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        int(os.environ["WORLD_SIZE"]),
        is_master=rank == 0,
        timeout=timedelta(seconds=START_S),
    )


def loop(rank: int, out_dir: Path) -> None:
    comm = hfreduce.init(store=_store(rank))
    x = torch.ones(1 << 20)  # 4 MiB: each call is many chunks across the link
    comm.all_reduce(x)
    (out_dir / f"ready-{rank}").touch()
    try:
        while True:
            comm.all_reduce(x)
    except hfreduce.HfreduceError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    finally:
        hfreduce.destroy()
    sys.exit(FAILED)


def main() -> None:
    mode, out_dir = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)  # four ranks share this machine's cores
    # A rank the test finds hung gets SIGUSR1 first: its threads' stacks go to stderr.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    {"compare": compare, "loop": loop}[mode](int(os.environ["RANK"]), out_dir)


if __name__ == "__main__":
    main()
