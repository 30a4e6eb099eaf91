"""The inter-node stage: our slice of each chunk goes through both trees of the double
binary tree, reduce up and broadcast down, on background threads.

Per tree an "up" thread receives the children's partial sums, adds them to ours and
sends the result to the parent, and a "down" thread receives the finished values from
the parent and passes them to the children. So chunk i can be on its way down while
chunk i+1 is being added and sent up. At the root the finished sum goes down from the
up thread itself: a hand-off to a thread with nothing to wait for would only cost a
wake-up per chunk. Socket I/O and torch kernels release the GIL.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

import torch

from hfreduce.arena import DONE0, Arena
from hfreduce.errors import HfreduceError
from hfreduce.kernels import CODE_DTYPES, ReduceOp, reduce_into
from hfreduce.plan import CallPlan
from hfreduce.transport import ABORT, DATA, Frame, Link, TreeConnections

WorkItem = tuple[CallPlan, int, int, str | None]  # plan, chunk index, slot, failed check


class TreeWorker:
    """Moves our slice halves through one tree."""

    def __init__(
        self,
        tree: int,
        links: TreeConnections,
        arena: Arena,
        rank: int,
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self.tree = tree
        self.links = links
        self.arena = arena
        self.rank = rank
        self._on_failure = on_failure
        self._up: queue.SimpleQueue[WorkItem | None] = queue.SimpleQueue()
        self._down: queue.SimpleQueue[WorkItem | None] = queue.SimpleQueue()
        self._recv = torch.empty(arena.chunk_bytes, dtype=torch.uint8)
        self._wide = torch.empty(arena.chunk_bytes // 2, dtype=torch.float32)
        # Made once: slicing a memoryview costs 0.1 us, a tensor's slice and .numpy() 10.
        self._slots = [arena.output_slot(s) for s in range(arena.depth)]
        self._slot_bytes = [memoryview(t.numpy()) for t in self._slots]
        self._recv_bytes = memoryview(self._recv.numpy())
        self._threads = [
            threading.Thread(target=self._guard, args=(self._run_up,), daemon=True),
            threading.Thread(target=self._guard, args=(self._run_down,), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def submit(self, plan: CallPlan, i: int, slot: int, failed_check: str | None) -> None:
        self._up.put((plan, i, slot, failed_check))

    def stop(self) -> None:
        self._up.put(None)
        for t in self._threads:
            t.join(timeout=5)

    def _guard(self, body: Callable[[], None]) -> None:
        try:
            body()
        except BaseException as exc:  # the thread must report, not die silently
            self._on_failure(exc)

    def _bounds(self, plan: CallPlan, i: int) -> tuple[int, int]:
        """Our half of chunk ``i``'s slice, in bytes from the slot's start."""
        lo, hi = plan.half(i, self.tree)
        return lo * plan.itemsize, hi * plan.itemsize

    def _frame(self, plan: CallPlan, i: int, kind: int, payload: int) -> Frame:
        return Frame(
            kind, plan.dtype_code, int(plan.op), plan.call, i, plan.numel, payload, self.rank
        )

    def _send(self, link: Link, plan: CallPlan, i: int, data: memoryview, why: str | None):
        if why is None:
            link.send(self._frame(plan, i, DATA, len(data)), data)
        else:
            reason = why.encode()
            link.send(self._frame(plan, i, ABORT, len(reason)), reason)

    def _receive(self, link: Link, plan: CallPlan, i: int, into: memoryview) -> str | None:
        """Receive the frame for chunk ``i`` into ``into``; return a failed check, if any."""
        frame = link.recv_frame()
        if frame.kind == ABORT:
            return link.drain(frame.payload).decode(errors="replace")
        if i == 0 and (frame.numel, frame.dtype, frame.op) != (
            plan.numel,
            plan.dtype_code,
            int(plan.op),
        ):
            link.drain(frame.payload)
            theirs = f"numel={frame.numel} dtype={CODE_DTYPES.get(frame.dtype)} " + (
                f"op={ReduceOp(frame.op).name}"
            )
            ours = f"numel={plan.numel} dtype={plan.dtype} op={plan.op.name}"
            return (
                f"hfreduce.all_reduce call {plan.call}: rank {frame.sender} has {theirs}, "
                f"rank {self.rank} has {ours}; every rank must pass the same size, dtype and op"
            )
        if (frame.call, frame.chunk, frame.payload) != (plan.call, i, len(into)):
            raise HfreduceError(
                f"hfreduce: rank {frame.sender} is out of step (sent call {frame.call} chunk "
                f"{frame.chunk}, {frame.payload} bytes; expected call {plan.call} chunk {i}, "
                f"{len(into)} bytes)"
            )
        link.recv_into(into)
        return None

    def _run_up(self) -> None:
        while (item := self._up.get()) is not None:
            plan, i, slot, why = item
            lo, hi = self._bounds(plan, i)
            for child in self.links.children:
                child_why = self._receive(child, plan, i, self._recv_bytes[: hi - lo])
                why = why or child_why
                if why is None:
                    acc = self._slots[slot][lo:hi].view(plan.dtype)
                    theirs = self._recv[: hi - lo].view(plan.dtype)
                    reduce_into(acc, [acc, theirs], plan.op, self._wide)
            if self.links.parent is not None:
                self._send(self.links.parent, plan, i, self._slot_bytes[slot][lo:hi], why)
                self._down.put((plan, i, slot, why))
                continue
            if why is None and plan.integer_average:
                acc = self._slots[slot][lo:hi].view(plan.dtype)
                reduce_into(acc, [acc], plan.op, self._wide, divisor=plan.world_size)
            self._pass_down(plan, i, self._slot_bytes[slot][lo:hi], why)
        self._down.put(None)

    def _run_down(self) -> None:
        while (item := self._down.get()) is not None:
            plan, i, slot, _ = item
            lo, hi = self._bounds(plan, i)
            mine = self._slot_bytes[slot][lo:hi]
            self._pass_down(plan, i, mine, self._receive(self.links.parent, plan, i, mine))

    def _pass_down(self, plan: CallPlan, i: int, result: memoryview, why: str | None) -> None:
        """Send chunk ``i``'s finished half (or why the call failed) to the children, then
        tell the local ranks it is there."""
        for child in self.links.children:
            self._send(child, plan, i, result, why)
        if why is not None and plan.abort is None:
            plan.abort = why
        self.arena.set(DONE0 + self.tree, plan.base + i + 1)
