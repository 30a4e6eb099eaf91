"""A communicator: one rank's handle on an hfreduce group, and the order its calls run in.

Calls run one at a time in the order they were made. A synchronous call with nothing
queued runs on the caller's thread (no hand-off latency for small tensors); asynchronous
calls, and synchronous ones behind them, run on a worker thread.

Waits on peers spin briefly before they sleep only while the caller is blocked on the
call: an asynchronous call runs beside the caller's own work (DDP's backward), so every
rank then has two busy threads, and a spinning worker would take the core that work or a
peer needs even where ranks do not outnumber cores.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from datetime import timedelta

import torch
from torch.distributed import Store

from hfreduce.addresses import advertised_address
from hfreduce.arena import open_arena
from hfreduce.config import HfreduceConfig, for_layout, load_config
from hfreduce.errors import HfreduceError, MismatchError, PeerLostError
from hfreduce.kernels import ReduceOp, check_supported
from hfreduce.network import TreeWorker
from hfreduce.pipeline import ChunkPipeline
from hfreduce.topology import Topology, default_node_id, discover
from hfreduce.transport import FAILURE_NOTICE_S, connect_trees, fail_links
from hfreduce.tree import double_tree

_Task = tuple[torch.Tensor, ReduceOp, torch.futures.Future, bool]
"""tensor, op, the future to resolve, and whether the caller waits for it"""
_FAILURE_KEY = "hfreduce/failure"


class Work:
    """Handle of an asynchronous call: ``wait()`` blocks until it finished (and raises its
    error), ``get_future()`` gives a ``torch.futures.Future`` resolving to ``[tensor]``."""

    def __init__(self, future: torch.futures.Future) -> None:
        self._future = future

    def wait(self) -> bool:
        self._future.wait()
        return True

    def is_completed(self) -> bool:
        return self._future.done()

    def get_future(self) -> torch.futures.Future:
        return self._future


class Communicator:
    """All ranks of a job, grouped into nodes, ready to all-reduce.

    Every rank must construct it with the same store, world size and config. Raises
    HfreduceError when set-up fails (a rank missing, /dev/shm full, uneven nodes).
    """

    def __init__(
        self,
        store: Store,
        rank: int,
        world_size: int,
        *,
        node_id: str | None = None,
        master_addr: str | None = None,
        config: HfreduceConfig | None = None,
    ) -> None:
        self.config = config or load_config()
        # Keep the store alive: on rank 0 it may be the server everyone else talks to.
        self._store = store
        timeout = self.config.timeout_s
        self.topology: Topology = discover(
            store, rank, world_size, node_id or default_node_id(), timeout
        )
        self.config = for_layout(self.config, self.topology.num_nodes)
        host = None
        if self.topology.num_nodes > 1:  # before the arena: a bad setting leaves nothing
            host = advertised_address(
                master_addr or os.environ.get("MASTER_ADDR", "127.0.0.1"),
                self.config.socket_ifname,
                self.config.socket_address,
            )
        self.link_address = host
        """The address this rank's links to other nodes use; None on one node."""
        self.arena = open_arena(
            store, self.topology, self.config.pipeline_depth, self.config.chunk_bytes, timeout
        )
        self._error: BaseException | None = None
        self._failure_lock = threading.Lock()
        self._failure_told = threading.Event()
        self._trees: list[TreeWorker] | None = None
        self._links = []
        if host is not None:
            links = double_tree(self.topology.num_nodes, self.topology.node_index)
            connections = connect_trees(store, self.topology, links, host, timeout)
            self._links = [
                link for c in connections for link in ([c.parent] if c.parent else []) + c.children
            ]
            self._trees = [
                TreeWorker(tree, connections[tree], self.arena, rank, self._fail) for tree in (0, 1)
            ]
        self._pipeline = ChunkPipeline(self.arena, self.topology, self.config, self._trees)
        # Measured on 2 ranks on 2 cores, DDP over a 50M-parameter MLP: spinning during
        # asynchronous calls cost 10-30 ms of CPU per rank and step, 4-9% of the step.
        self._spin_s = self.arena.spin_s
        self._cond = threading.Condition()
        self._queue: deque[_Task] = deque()
        self._busy = False
        self._closed = False
        self._worker: threading.Thread | None = None
        # Nobody may start a call before every rank has its arena and links.
        store.set(f"hfreduce/ready/{rank}", "1")
        store.wait([f"hfreduce/ready/{r}" for r in range(world_size)])
        store.set(f"hfreduce/started/{rank}", "1")  # this rank's last store call; see close

    @property
    def rank(self) -> int:
        return self.topology.rank

    @property
    def world_size(self) -> int:
        return self.topology.world_size

    def all_reduce(
        self, tensor: torch.Tensor, op: ReduceOp = ReduceOp.SUM, async_op: bool = False
    ) -> Work | None:
        """Reduce ``tensor`` in place across all ranks.

        Returns a Work when ``async_op``, else None once the result is in ``tensor``.
        Raises UnsupportedError (dtype, device, op), MismatchError (ranks disagree on
        size, dtype or op; the communicator stays usable), PeerLostError or
        CollectiveTimeoutError (a rank died or hung; the communicator is unusable).
        """
        check_supported(tensor, op)
        self._check_usable()
        future: torch.futures.Future = torch.futures.Future()
        with self._cond:
            inline = not async_op and not self._queue and not self._busy
            if inline:
                self._busy = True
            else:
                self._queue.append((tensor, op, future, not async_op))
                self._start_worker()
                self._cond.notify_all()
        if async_op:
            return Work(future)
        if not inline:
            future.wait()
            return None
        try:
            self._execute(tensor, op, caller_waits=True)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
        return None

    def _start_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._serve, name="hfreduce", daemon=True)
            self._worker.start()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (self._busy or not self._queue):
                    self._cond.wait()
                if not self._queue:
                    return
                tensor, op, future, caller_waits = self._queue.popleft()
                self._busy = True
            try:
                self._execute(tensor, op, caller_waits)
                future.set_result([tensor])
            except BaseException as exc:
                future.set_exception(exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _execute(self, tensor: torch.Tensor, op: ReduceOp, caller_waits: bool) -> None:
        self._check_usable()
        self.arena.spin_s = self._spin_s if caller_waits else 0.0
        if self.world_size == 1:
            return
        flat = tensor.view(-1) if tensor.is_contiguous() else tensor.contiguous().view(-1)
        try:
            self._pipeline.run(flat, op)
        except MismatchError:
            raise
        except BaseException as exc:
            self._fail(exc)
            raise self._error from None
        if flat.data_ptr() != tensor.data_ptr() or not tensor.is_contiguous():
            tensor.copy_(flat.view(tensor.shape))

    def _check_usable(self) -> None:
        if self._closed:
            raise HfreduceError("hfreduce: this communicator was closed")
        if self._error is not None:
            raise PeerLostError(
                f"hfreduce: this communicator failed earlier ({self._error}); "
                "create a new one (re-initialise the process group)"
            )

    def _fail(self, exc: BaseException) -> None:
        """Record the first failure, tell the node and the job, and cut our links so every
        rank blocked on us (here or on other nodes) fails too instead of waiting forever.

        A rank that only saw a connection drop names the job's first failure (posted in
        the store before that connection was cut), so every rank names the rank at fault.
        """
        # Before the store is consulted: our node's ranks, whose waits on us may run out
        # meanwhile, must wait for what we post instead of blaming us (a host cut off).
        self.arena.announce_failure(self._posting_bound_s())
        cause = self._share_failure(str(exc))
        if isinstance(exc, PeerLostError) and cause and cause not in str(exc):
            exc = PeerLostError(f"{exc}; the first failure was: {cause}")
        with self._failure_lock:
            first = self._error is None
            if first:
                self._error = exc
        if not first:
            # Whoever failed first is still telling the partners: a rank that exits now
            # would reset its links and lose that notice.
            self._failure_told.wait(timeout=10)
            return
        # Partners first, then the node: the node's ranks may exit as soon as they see it.
        fail_links(self._links, str(exc), self.rank)
        self.arena.post_failure(str(exc))
        self._failure_told.set()

    def _posting_bound_s(self) -> float:
        """How long _fail may take to post on the node: half a timeout consulting the
        store, FAILURE_NOTICE_S telling the partners, and half a timeout of slack for a
        loaded machine's scheduling."""
        return self.config.timeout_s + FAILURE_NOTICE_S

    def _share_failure(self, message: str) -> str | None:
        """The job's first failure from the store, else None after posting ``message`` as it.

        Bounded by half the timeout: a TCPStore whose host is cut off answers no request
        and its client waits forever (torch 2.13), while this rank must still fail its links
        and tell its node before the node's other ranks give up on it (pipeline._patience).
        """
        found: list[str | None] = []

        def consult() -> None:
            cause = self._reported_failure()
            if cause is None:
                self._report_failure(message)
            found.append(cause)

        # A daemon thread: one stuck in the store must not keep the process from exiting.
        thread = threading.Thread(target=consult, name="hfreduce-failure", daemon=True)
        thread.start()
        thread.join(self.config.timeout_s / 2)
        return found[0] if found else None

    def _reported_failure(self) -> str | None:
        try:
            if self._store.check([_FAILURE_KEY]):
                return self._store.get(_FAILURE_KEY).decode()
        except Exception:  # the store's host may be the rank that died
            pass
        return None

    def _report_failure(self, message: str) -> None:
        with contextlib.suppress(Exception):
            self._store.compare_set(_FAILURE_KEY, "", message)

    def close(self) -> None:
        """Finish queued calls, stop the worker and tree threads, and close the links."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join()
        if self._trees is not None:
            for tree in self._trees:
                tree.stop()
        for link in self._links:
            link.close()
        self._let_others_finish_starting()

    def _let_others_finish_starting(self) -> None:
        """Rank 0 may host the store (the TCPStore hfreduce.init makes), which goes with
        this communicator: a rank 0 that closes at once would reset the connection of a rank
        still in the ready wait of __init__. So it waits (bounded) until every rank has
        made its last store call; a rank or store already gone leaves nothing to wait for."""
        if self.topology.rank != 0 or self._error is not None:
            return
        keys = [f"hfreduce/started/{r}" for r in range(self.topology.world_size)]
        with contextlib.suppress(RuntimeError):  # torch's store errors (DistError, timeout)
            self._store.wait(keys, timedelta(seconds=self.config.timeout_s))
