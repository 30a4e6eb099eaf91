"""hfreduce: allreduce that sums gradients on the CPU.

Chunks are copied off the device into shared host buffers, summed with vectorised CPU
ops, exchanged between nodes over a double binary tree, and copied back, with every
stage pipelined across chunks. Importing it registers the ``"hfreduce"`` backend of
``torch.distributed``.
"""

from hfreduce.api import all_reduce, destroy, init
from hfreduce.backend import ProcessGroupHfreduce
from hfreduce.communicator import Communicator, Work
from hfreduce.config import HfreduceConfig, load_config
from hfreduce.errors import (
    CollectiveTimeoutError,
    ConfigError,
    HfreduceError,
    MismatchError,
    NotInitializedError,
    PeerLostError,
    UnsupportedError,
)
from hfreduce.kernels import ReduceOp

__all__ = [
    "CollectiveTimeoutError",
    "Communicator",
    "ConfigError",
    "HfreduceConfig",
    "HfreduceError",
    "MismatchError",
    "NotInitializedError",
    "PeerLostError",
    "ProcessGroupHfreduce",
    "ReduceOp",
    "UnsupportedError",
    "Work",
    "all_reduce",
    "destroy",
    "init",
    "load_config",
]
