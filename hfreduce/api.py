"""The module-level API: ``hfreduce.init()`` then ``hfreduce.all_reduce(tensor)``.

Like torch.distributed's default group, the communicator made by ``init`` is kept as the
process's default; everything else in hfreduce takes its communicator explicitly.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed import PrefixStore, Store, TCPStore
from torch.distributed.distributed_c10d import _get_default_store

from hfreduce.communicator import Communicator, Work
from hfreduce.config import HfreduceConfig, load_config
from hfreduce.errors import NotInitializedError
from hfreduce.kernels import ReduceOp
from hfreduce.topology import env_int


class _Default:
    communicator: Communicator | None = None
    generation = 0  # keeps successive communicators' keys apart in a shared store


def init(
    rank: int | None = None,
    world_size: int | None = None,
    *,
    store: Store | None = None,
    node_id: str | None = None,
    config: HfreduceConfig | None = None,
) -> Communicator:
    """Join the job's hfreduce group and make it this process's default.

    Rank and world size default to RANK and WORLD_SIZE. Without ``store``, the store of
    torch.distributed's default group is used when it is initialised, else rank 0 hosts
    a TCPStore at MASTER_ADDR:MASTER_PORT. The node id defaults to HFREDUCE_NODE_ID,
    else the host name.
    """
    config = config or load_config()
    rank = env_int("RANK") if rank is None else rank
    world_size = env_int("WORLD_SIZE") if world_size is None else world_size
    if store is None and dist.is_initialized():
        _Default.generation += 1
        store = PrefixStore(f"hfreduce-{_Default.generation}", _get_default_store())
    if store is None:
        store = TCPStore(
            os.environ.get("MASTER_ADDR", "127.0.0.1"),
            env_int("MASTER_PORT"),
            world_size,
            is_master=rank == 0,
            timeout=timedelta(seconds=config.timeout_s),
        )
    destroy()
    _Default.communicator = Communicator(store, rank, world_size, node_id=node_id, config=config)
    return _Default.communicator


def all_reduce(
    tensor: torch.Tensor, op: ReduceOp = ReduceOp.SUM, async_op: bool = False
) -> Work | None:
    """All-reduce ``tensor`` in place over the default group (see Communicator.all_reduce)."""
    if _Default.communicator is None:
        raise NotInitializedError("hfreduce.all_reduce called before hfreduce.init()")
    return _Default.communicator.all_reduce(tensor, op, async_op)


def destroy() -> None:
    """Close the default group, if any."""
    if _Default.communicator is not None:
        _Default.communicator.close()
        _Default.communicator = None
