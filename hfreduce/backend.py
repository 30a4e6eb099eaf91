"""The ``"hfreduce"`` backend of torch.distributed.

``dist.init_process_group("hfreduce")`` builds a process group whose all-reduce (and the
barrier and reduce-scatter built on it) runs through hfreduce. The collectives that are
not ours (broadcast, all-gather, all-to-all, send/recv, ...) are delegated to a gloo group
created alongside on the same store. Works are backed by torch futures, so DDP
communication hooks and ``async_op=True`` callers can chain on them.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import _create_work_from_future
from torch.distributed import PrefixStore, Store

from hfreduce.communicator import Communicator
from hfreduce.config import load_config
from hfreduce.errors import UnsupportedError
from hfreduce.kernels import ReduceOp

BACKEND_NAME = "hfreduce"

_OPS = {
    dist.ReduceOp.SUM: ReduceOp.SUM,
    dist.ReduceOp.AVG: ReduceOp.AVG,
    dist.ReduceOp.MAX: ReduceOp.MAX,
    dist.ReduceOp.MIN: ReduceOp.MIN,
}


def _our_op(op: dist.ReduceOp) -> ReduceOp:
    for theirs, ours in _OPS.items():
        if op == theirs:
            return ours
    kind = getattr(op, "op", op)  # a ReduceOp instance wraps its RedOpType
    name = getattr(kind, "name", str(kind))
    raise UnsupportedError(
        f"hfreduce backend: reduce op {name} is not supported (SUM, AVG, MAX, MIN)"
    )


def _chain(futures: list[torch.futures.Future], result: object) -> dist.Work:
    """One Work finishing when all ``futures`` do (raising the first error)."""
    combined: torch.futures.Future = torch.futures.Future()

    def finish(_: torch.futures.Future) -> None:
        try:
            for f in futures:
                f.wait()
        except Exception as exc:
            combined.set_exception(exc)
        else:
            combined.set_result(result)

    torch.futures.collect_all(futures).add_done_callback(finish)
    return _create_work_from_future(combined)


def _delegate(gloo_method: str):
    """A process-group method that forwards its arguments to the gloo group's ``gloo_method``
    (options are left out when the caller gave none, so gloo uses its defaults)."""

    def forward(self: ProcessGroupHfreduce, *args):
        if args and args[-1] is None:
            args = args[:-1]
        return getattr(self._gloo, gloo_method)(*args)

    forward.__name__ = gloo_method
    return forward


def _gloo_group(
    store: Store, rank: int, size: int, timeout: timedelta, address: str | None
) -> dist.ProcessGroupGloo:
    """The gloo group for the collectives that are not ours, on the address hfreduce's
    links use unless ``GLOO_SOCKET_IFNAME`` chooses gloo's own. Left alone, gloo announces
    what the host name resolves to: on a machine with several networks that may be another
    one than ``HFREDUCE_SOCKET_IFNAME`` picked, or one the other nodes do not reach."""
    if address is None or os.environ.get("GLOO_SOCKET_IFNAME"):
        return dist.ProcessGroupGloo(store, rank, size, timeout)
    options = dist.ProcessGroupGloo._Options()
    options._timeout = timeout
    options._devices = [dist.ProcessGroupGloo.create_device(hostname=address)]
    return dist.ProcessGroupGloo(store, rank, size, options)


class ProcessGroupHfreduce(dist.ProcessGroup):
    """A process group over one hfreduce communicator plus a gloo group for the rest."""

    def __init__(self, store: Store, rank: int, size: int, timeout: timedelta) -> None:
        super().__init__(rank, size)
        config = load_config(timeout_s=timeout.total_seconds())
        self.communicator = Communicator(PrefixStore("hfreduce", store), rank, size, config=config)
        gloo_store = PrefixStore("gloo", store)
        self._gloo = _gloo_group(gloo_store, rank, size, timeout, self.communicator.link_address)

    def getBackendName(self) -> str:  # noqa: N802 (torch's name)
        return BACKEND_NAME

    # -- ours -----------------------------------------------------------------------

    def allreduce(self, tensors: list[torch.Tensor], opts=None) -> dist.Work:
        op = _our_op(opts.reduceOp if opts is not None else dist.ReduceOp.SUM)
        # torch.distributed does not say whether the caller waits at once: taken as running
        # beside its work, as DDP's buckets do (see the communicator on spinning).
        works = [self.communicator.all_reduce(t, op, async_op=True) for t in tensors]
        return _chain([w.get_future() for w in works], tensors)

    def allreduce_coalesced(self, tensors: list[torch.Tensor], opts=None) -> dist.Work:
        return self.allreduce(tensors, opts)

    def barrier(self, opts=None) -> dist.Work:
        # An all-reduce needs every rank and runs after all our earlier calls.
        return self.allreduce([torch.zeros(1)])

    def reduce_scatter_single(self, output: torch.Tensor, input: torch.Tensor, opts=None):
        """Reduce ``input`` (world x output) everywhere, keep our block."""
        op = _our_op(opts.reduceOp if opts is not None else dist.ReduceOp.SUM)
        reduced = input.clone()
        work = self.communicator.all_reduce(reduced, op, async_op=True)
        ours = reduced.view(self.size(), -1)[self.rank()]
        future = work.get_future().then(lambda _: [output.copy_(ours.view_as(output))])
        return _create_work_from_future(future)

    def reduce_scatter(
        self, outputs: list[torch.Tensor], inputs: list[list[torch.Tensor]], opts=None
    ):
        if len(outputs) != 1:
            raise UnsupportedError("hfreduce backend: reduce_scatter takes one output tensor")
        stacked = torch.stack([t.reshape(outputs[0].shape) for t in inputs[0]])
        return self.reduce_scatter_single(outputs[0], stacked, opts)

    # -- delegated to gloo (same arguments, gloo's method name) -----------------------

    broadcast = _delegate("broadcast")
    allgather = _delegate("allgather")
    all_gather_single = _delegate("_allgather_base")
    allgather_coalesced = _delegate("allgather_coalesced")
    gather = _delegate("gather")
    scatter = _delegate("scatter")
    reduce = _delegate("reduce")
    alltoall = _delegate("alltoall")
    all_to_all_single = _delegate("alltoall_base")
    send = _delegate("send")
    recv = _delegate("recv")
    recv_anysource = _delegate("recv_anysource")

    def shutdown(self) -> None:
        self.communicator.close()


def _create(store: Store, rank: int, size: int, timeout: timedelta) -> ProcessGroupHfreduce:
    return ProcessGroupHfreduce(store, rank, size, timeout)


dist.Backend.register_backend(BACKEND_NAME, _create, devices=["cpu", "cuda"])
