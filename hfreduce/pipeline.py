"""The chunk pipeline that one all-reduce call runs on each rank.

For chunk i (slot i mod depth), every rank:
  1. stages its chunk into its input slot (device-to-host for CUDA tensors);
  2. once all local ranks staged it, sums its own slice across their input slots into
     the output slot (so every local core adds, each on cache-hot data);
  3. on several nodes, hands that slice to the tree workers, which reduce it with the
     partner ranks of the other nodes and write the result back into the output slot;
  4. copies the finished chunk from the output slot back into its tensor.
Stage 4 lags behind stages 1-2 so the next chunks are being added (or are on the wire)
while a rank waits for the slowest slice of an earlier one.

The first chunk of each call also checks that all ranks agree on size, dtype and op; if
not, every rank raises MismatchError for this call and the communicator stays usable.
"""

from __future__ import annotations

from collections import deque

import torch

from hfreduce.arena import (
    CONSUMED,
    DONE0,
    DONE1,
    HDR_CALL,
    HDR_DTYPE,
    HDR_NUMEL,
    HDR_OP,
    REDUCED,
    STAGED,
    Arena,
)
from hfreduce.config import HfreduceConfig
from hfreduce.errors import MismatchError
from hfreduce.kernels import CODE_DTYPES, ReduceOp, copy_into, reduce_into
from hfreduce.network import TreeWorker
from hfreduce.plan import CallPlan, split
from hfreduce.topology import Topology
from hfreduce.transport import LINK_PATIENCE


class _DeviceCopies:
    """One call's asynchronous device<->host copies, on a side stream of the device."""

    def __init__(self, stream: torch.cuda.Stream) -> None:
        self.stream = stream
        # The tensor was produced on the caller's stream: copy only after that work.
        stream.wait_stream(torch.cuda.current_stream(stream.device))
        self.pending_in: dict[int, torch.cuda.Event] = {}
        self.pending_out: deque[tuple[int, torch.cuda.Event]] = deque()

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> torch.cuda.Event:
        with torch.cuda.stream(self.stream):
            dst.copy_(src, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        return event

    def finish(self) -> None:
        # Also on failure: no copy may still be writing a slot the next call will use.
        self.stream.synchronize()


class _SlotViews:
    """Typed views of the arena's slots for one dtype, made once: slicing tensors costs
    microseconds of Python per call, which adds up over thousands of chunks."""

    def __init__(self, arena: Arena, dtype: torch.dtype, depth: int) -> None:
        self.elems = arena.chunk_bytes // dtype.itemsize
        self.me = arena.me
        ranks = range(arena.local_size)
        self.inputs = [[arena.input_slot(r, s).view(dtype) for s in range(depth)] for r in ranks]
        self.outputs = [arena.output_slot(s).view(dtype) for s in range(depth)]
        lo, hi = split(self.elems, arena.local_size, arena.me)
        self._full = (lo, hi)
        self._theirs_of_mine = [
            ([self.inputs[r][s][lo:hi] for r in ranks if r != self.me], self.outputs[s][lo:hi])
            for s in range(depth)
        ]

    def input(self, slot: int, n: int) -> torch.Tensor:
        view = self.inputs[self.me][slot]
        return view if n == self.elems else view[:n]

    def output(self, slot: int, n: int) -> torch.Tensor:
        view = self.outputs[slot]
        return view if n == self.elems else view[:n]

    def for_my_slice(self, slot: int, n: int, lo: int, hi: int):
        """(the other ranks' inputs, the output) restricted to our slice of a chunk."""
        if n == self.elems:
            return self._theirs_of_mine[slot]
        others = [r[slot][lo:hi] for q, r in enumerate(self.inputs) if q != self.me]
        return others, self.outputs[slot][lo:hi]


def _outside(t: torch.Tensor, lo: int, hi: int) -> list[torch.Tensor]:
    """The parts of a chunk-shaped tensor before and after our slice ``[lo, hi)``."""
    return [part for part in (t[:lo], t[hi:]) if part.numel()]


def _patience(word: int, config: HfreduceConfig) -> float:
    """How long to wait on a progress word before blaming its rank.

    The rank nearest a hung peer must be the one to time out, so that its message (which
    names the peer, and reaches everyone through the failure it posts) wins the race:
    local stages wait ``timeout_s``, tree links twice that (transport.LINK_PATIENCE, for a
    whole frame), and the words a tree worker writes, which only wait on those links, two
    more: the worker's link wait may have begun after ours (its rank was behind). Once the
    link gives up, the rank announces its failure (Arena.announce_failure), which holds
    our wait until the failure is posted, after the store consult and the partners' notice.
    """
    if word in (DONE0, DONE1):
        return config.timeout_s * (LINK_PATIENCE + 2)
    return config.timeout_s


class ChunkPipeline:
    """Runs all-reduce calls over one node's arena (and the tree workers, across nodes)."""

    def __init__(
        self,
        arena: Arena,
        topology: Topology,
        config: HfreduceConfig,
        trees: list[TreeWorker] | None,
    ) -> None:
        self.arena = arena
        self.topology = topology
        self.config = config
        self.trees = trees
        self.next_chunk = 0
        self.calls = 0
        self._wide = torch.empty(config.chunk_bytes // 2, dtype=torch.float32)
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._views: dict[torch.dtype, _SlotViews] = {}

    @property
    def _done_words(self) -> tuple[int, ...]:
        return (DONE0, DONE1) if self.trees else (REDUCED,)

    def run(self, flat: torch.Tensor, op: ReduceOp) -> None:
        """All-reduce the contiguous 1-D tensor ``flat`` in place."""
        plan = CallPlan(
            call=self.calls,
            base=self.next_chunk,
            numel=flat.numel(),
            dtype=flat.dtype,
            op=op,
            chunk_elems=self.config.chunk_bytes // flat.dtype.itemsize,
            local_rank=self.topology.local_rank,
            local_size=self.topology.local_size,
            world_size=self.topology.world_size,
            multi_node=self.trees is not None,
        )
        self.calls += 1
        for word, value in zip(
            (HDR_CALL, HDR_NUMEL, HDR_DTYPE, HDR_OP), plan.header(), strict=True
        ):
            self.arena.set(word, value)
        if flat.dtype not in self._views:
            self._views[flat.dtype] = _SlotViews(self.arena, flat.dtype, self.config.pipeline_depth)
        pieces = tuple(flat[lo:hi] for lo, hi in map(plan.chunk, range(plan.nchunks)))
        device = self._device_copies(flat.device) if flat.is_cuda else None
        try:
            self._run_chunks(plan, pieces, device)
        finally:
            if device is not None:
                device.finish()

    def _device_copies(self, device: torch.device) -> _DeviceCopies:
        if not self._streams:
            self.arena.pin_for_cuda()
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device)
        return _DeviceCopies(self._streams[device])

    def _run_chunks(
        self, plan: CallPlan, pieces: tuple[torch.Tensor, ...], device: _DeviceCopies | None
    ):
        lag = 1 if self.trees is None else self.config.pipeline_depth - 1
        waiting_out: deque[int] = deque()
        if device is not None:
            self._issue_stage_in(plan, pieces, 0, device)
        for i in range(plan.nchunks):
            self._stage_in(plan, pieces, i, device)
            failed_check = self._check_headers(plan) if i == 0 else None
            self._reduce(plan, pieces, i, failed_check, device)
            if i == 0 and (failed_check is not None or self.trees is not None):
                self._settle_first_chunk(plan, failed_check)
            waiting_out.append(i)
            while waiting_out and i - waiting_out[0] >= lag:
                self._stage_out(plan, pieces, waiting_out.popleft(), device)
        while waiting_out:
            self._stage_out(plan, pieces, waiting_out.popleft(), device)
        if device is not None:
            self._flush_stage_out(device, plan.base + plan.nchunks)
        self.next_chunk = plan.base + plan.nchunks

    # -- stage 1: in ------------------------------------------------------------------

    def _wait(self, word: int, target: int, what: str, device: _DeviceCopies | None = None):
        poll = None if device is None else (lambda: self._publish_finished_copies(device))
        self.arena.wait_all(word, target, _patience(word, self.config), what, poll)

    def _slot(self, plan: CallPlan, i: int) -> int:
        return (plan.base + i) % self.config.pipeline_depth

    def _issue_stage_in(self, plan: CallPlan, pieces, i: int, device: _DeviceCopies):
        g = plan.base + i
        # The slot is free once every rank has read it for chunk g - depth.
        self._wait(REDUCED, g - self.config.pipeline_depth + 1, "reduce an earlier chunk", device)
        src = pieces[i]
        dst = self._views[plan.dtype].input(self._slot(plan, i), src.numel())
        device.pending_in[i] = device.copy(dst, src)

    def _stage_in(self, plan: CallPlan, pieces, i: int, device: _DeviceCopies | None):
        g = plan.base + i
        if device is None:
            # Only the parts other ranks add up: our own slice is read from the tensor.
            self._wait(REDUCED, g - self.config.pipeline_depth + 1, "reduce an earlier chunk")
            src = pieces[i]
            dst = self._views[plan.dtype].input(self._slot(plan, i), src.numel())
            lo, hi = plan.my_slice(i)
            for part_src, part_dst in zip(
                _outside(src, lo, hi), _outside(dst, lo, hi), strict=True
            ):
                copy_into(part_dst, part_src)
        else:
            device.pending_in.pop(i).synchronize()
            if i + 1 < plan.nchunks:  # overlap the next chunk's copy with this one's adds
                self._issue_stage_in(plan, pieces, i + 1, device)
        self.arena.set(STAGED, g + 1)
        self._wait(STAGED, g + 1, "stage its chunk", device)

    def _check_headers(self, plan: CallPlan) -> str | None:
        """Compare every local rank's call header; describe the first disagreement."""
        words = (HDR_CALL, HDR_NUMEL, HDR_DTYPE, HDR_OP)
        headers = [tuple(self.arena.get(r, w) for w in words) for r in range(plan.local_size)]
        if len(set(headers)) == 1:
            return None
        ranks = self.topology.local_ranks
        first = headers[0]
        other = next(r for r, h in enumerate(headers) if h != first)

        def describe(rank: int) -> str:
            call, numel, dtype, op = headers[rank]
            return (
                f"rank {ranks[rank]} has call {call} numel={numel} "
                f"dtype={CODE_DTYPES.get(dtype)} op={ReduceOp(op).name}"
            )

        return (
            f"hfreduce.all_reduce: ranks disagree: {describe(0)}, {describe(other)}; every "
            "rank must pass the same size, dtype and op"
        )

    # -- stage 2 and 3: reduce, then across nodes -------------------------------------

    def _reduce(
        self,
        plan: CallPlan,
        pieces,
        i: int,
        failed_check: str | None,
        device: _DeviceCopies | None,
    ) -> None:
        g = plan.base + i
        # The output slot is free once every rank has copied chunk g - depth out of it,
        # ourselves included: finish our own copies first.
        free_at = g - self.config.pipeline_depth + 1
        if device is not None:
            self._flush_stage_out(device, free_at)
        self._wait(CONSUMED, free_at, "copy out an earlier chunk", device)
        if failed_check is None:
            self._reduce_my_slice(plan, pieces, i, device)
        self.arena.set(REDUCED, g + 1)
        if self.trees is not None:
            slot = g % self.config.pipeline_depth
            for tree in self.trees:
                tree.submit(plan, i, slot, failed_check)

    def _reduce_my_slice(self, plan: CallPlan, pieces, i: int, device: _DeviceCopies | None):
        """Sum our slice over all local ranks into the output slot.

        CPU tensors on one node skip a copy: our slice is summed in place in our own
        tensor (it is the final result) and only then copied to the output slot for the
        others. Across nodes the slot must hold it, since the trees keep adding to it.
        """
        piece = pieces[i]
        lo, hi = plan.my_slice(i)
        slot = self._slot(plan, i)
        views = self._views[plan.dtype]
        others, out = views.for_my_slice(slot, piece.numel(), lo, hi)
        if device is not None:
            mine = views.input(slot, piece.numel())[lo:hi]
        else:
            mine = piece[lo:hi]
        in_place = device is None and self.trees is None
        target = mine if in_place else out
        reduce_into(target, [mine, *others], plan.op, self._wide, divisor=plan.local_divisor)
        if in_place:
            copy_into(out, mine)

    def _settle_first_chunk(self, plan: CallPlan, failed_check: str | None) -> None:
        """Wait for the verdict on the call's checks before staging any further chunk."""
        g = plan.base
        if self.trees is not None:
            for word in (DONE0, DONE1):
                self._wait(word, g + 1, "finish the first chunk")
        reason = plan.abort or failed_check
        if reason is not None:
            self.arena.set(CONSUMED, g + 1)
            self.next_chunk = g + 1
            raise MismatchError(reason)

    # -- stage 4: out -----------------------------------------------------------------

    def _stage_out(self, plan: CallPlan, pieces, i: int, device: _DeviceCopies | None):
        g = plan.base + i
        for word in self._done_words:
            self._wait(word, g + 1, "finish its slice", device)
        dst = pieces[i]
        src = self._views[plan.dtype].output(self._slot(plan, i), dst.numel())
        if device is None:
            if self.trees is None:  # our slice is already in place (see _reduce_my_slice)
                lo, hi = plan.my_slice(i)
                for part_dst, part_src in zip(
                    _outside(dst, lo, hi), _outside(src, lo, hi), strict=True
                ):
                    copy_into(part_dst, part_src)
            else:
                copy_into(dst, src)
            self.arena.set(CONSUMED, g + 1)
        else:
            device.pending_out.append((g, device.copy(dst, src)))

    def _publish_finished_copies(self, device: _DeviceCopies) -> None:
        while device.pending_out and device.pending_out[0][1].query():
            g, _ = device.pending_out.popleft()
            self.arena.set(CONSUMED, g + 1)

    def _flush_stage_out(self, device: _DeviceCopies, upto: int) -> None:
        while device.pending_out and device.pending_out[0][0] < upto:
            g, event = device.pending_out.popleft()
            event.synchronize()
            self.arena.set(CONSUMED, g + 1)
