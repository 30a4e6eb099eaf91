"""Data parallelism whose gradient all-reduce overlaps the backward pass.

Every rank holds the whole model. Gradients are packed into flat buckets in reverse
registration order (roughly the order backward produces them), and each bucket is
all-reduced asynchronously the moment its last gradient arrives, so the communication of
the late layers runs while autograd still computes the early ones. Any torch.distributed
process group works: ``"hfreduce"`` (``import hfreduce`` registers it) sums on the CPU
through shared memory, ``"gloo"``/``"nccl"`` serve as the comparison.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

__all__ = ["DistributedDataParallel", "Reducer"]


@dataclass
class _Bucket:
    """Parameters whose gradients are all-reduced together as one flat tensor.

    With ``flags`` the flat tensor ends in one slot per parameter, 1 where this rank had a
    gradient for it: after the sum, 0 means no rank used it this step.
    """

    params: list[nn.Parameter]
    flat: torch.Tensor
    views: list[torch.Tensor]
    flags: torch.Tensor | None
    pending: int = 0
    work: dist.Work | None = None
    ready: set[int] = field(default_factory=set)
    """Indices into ``params`` whose gradients are in ``flat`` this step."""


def _plan_buckets(params: list[nn.Parameter], cap_bytes: int) -> list[list[nn.Parameter]]:
    """Group ``params`` (in the order given) into runs of one dtype and device, each run
    cut before it would exceed ``cap_bytes`` (a single larger parameter gets its own)."""
    plan: list[list[nn.Parameter]] = []
    size = 0
    for p in params:
        nbytes = p.numel() * p.element_size()
        last = plan[-1][-1] if plan else None
        same_kind = last is not None and (last.dtype, last.device) == (p.dtype, p.device)
        if not same_kind or size + nbytes > cap_bytes:
            plan.append([])
            size = 0
        plan[-1].append(p)
        size += nbytes
    return plan


def _make_bucket(params: list[nn.Parameter], with_flags: bool) -> _Bucket:
    numel = sum(p.numel() for p in params)
    flat = torch.zeros(
        numel + (len(params) if with_flags else 0), dtype=params[0].dtype, device=params[0].device
    )
    views, offset = [], 0
    for p in params:
        views.append(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    flags = flat[numel:] if with_flags else None
    return _Bucket(params, flat, views, flags, pending=len(params))


def _broadcast_from_first(tensors: list[torch.Tensor], group: dist.ProcessGroup | None) -> None:
    """Overwrite ``tensors`` with the group's first rank's, one broadcast per dtype."""
    by_kind: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        by_kind.setdefault((t.dtype, t.device), []).append(t)
    for same in by_kind.values():
        flat = _flatten_dense_tensors([t.detach() for t in same])
        dist.broadcast(flat, group=group, group_src=0)
        with torch.no_grad():
            for t, synced in zip(same, _unflatten_dense_tensors(flat, same), strict=True):
                t.copy_(synced)


def _reachable_leaves(outputs: Any) -> set[int]:
    """Ids of the leaf tensors that the autograd graph of the tensors in ``outputs`` reaches."""
    stack = [t.grad_fn for t in _tensors_in(outputs) if t.grad_fn is not None]
    seen, leaves = set(stack), set()
    while stack:
        node = stack.pop()
        variable = getattr(node, "variable", None)  # an AccumulateGrad node holds its leaf
        if variable is not None:
            leaves.add(id(variable))
        for next_node, _ in node.next_functions:
            if next_node is not None and next_node not in seen:
                seen.add(next_node)
                stack.append(next_node)
    return leaves


def _tensors_in(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors_in(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors_in(v)


class Reducer:
    """Buckets a module's gradients and all-reduces them (averaged) during backward.

    Launches buckets strictly in bucket order, so every rank issues the same collectives
    in the same order even when its gradients arrive in another.
    """

    def __init__(
        self,
        named_params: list[tuple[str, nn.Parameter]],
        group: dist.ProcessGroup | None,
        bucket_cap_bytes: int,
        find_unused_parameters: bool,
    ) -> None:
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.find_unused_parameters = find_unused_parameters
        self.sync = True
        """False inside ``no_sync()``: gradients only accumulate locally."""
        self._names = {p: name for name, p in named_params}
        params = [p for _, p in reversed(named_params)]
        self.buckets = [
            _make_bucket(ps, find_unused_parameters)
            for ps in _plan_buckets(params, bucket_cap_bytes)
        ]
        self._where = {p: (b, i) for b in self.buckets for i, p in enumerate(b.params)}
        self._reachable: set[int] | None = None
        self._next_launch = 0
        self._in_backward = False
        self._handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in params]

    # -- called by the wrapper ------------------------------------------------------

    def note_forward(self, outputs: Any) -> None:
        """Remember which parameters this forward's graph reaches, so those it does not
        reach can be marked ready as soon as backward starts (their buckets need not
        wait for the end)."""
        if self.find_unused_parameters and self.sync and self._handles:
            self._reachable = (self._reachable or set()) | _reachable_leaves(outputs)

    def stop(self) -> None:
        """Detach from the parameters (every all-reduce is done when backward returns);
        the module then trains without synchronising. Idempotent."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._reset()

    # -- autograd hooks -------------------------------------------------------------

    def _on_grad(self, param: nn.Parameter) -> None:
        if not self.sync:
            return
        if not self._in_backward:
            self._start_backward()
        bucket, index = self._where[param]
        if index in bucket.ready:
            self._abort(
                f"haiscale DDP: parameter {self._names[param]!r} got a gradient after it was "
                "marked unused: the loss uses it outside the wrapped module's forward, "
                "which find_unused_parameters=True cannot see; call it inside forward"
            )
        self._mark_ready(bucket, index)

    def _start_backward(self) -> None:
        self._in_backward = True
        torch.autograd.Variable._execution_engine.queue_callback(self._finish_backward)
        if self._reachable is not None:
            for param, (bucket, index) in self._where.items():
                if id(param) not in self._reachable:
                    self._mark_ready(bucket, index)

    def _mark_ready(self, bucket: _Bucket, index: int) -> None:
        """Put this rank's share (gradient / world size) of parameter ``index`` into the
        bucket, and launch every bucket that is now complete and next in order."""
        param, view = bucket.params[index], bucket.views[index]
        grad = param.grad
        if grad is None:
            view.zero_()
        elif grad.data_ptr() == view.data_ptr():
            view.div_(self.world_size)  # the grad already lives in the bucket (last step's)
        else:
            torch.div(grad, self.world_size, out=view)
            # Point .grad at the bucket now, not after backward: autograd's buffer is freed
            # here and the next layer's gradient reuses it. Held to the end, all of them
            # were freed at once and the allocator handed that memory back to the kernel,
            # so every step page-faulted the whole model's gradients in again (50M
            # parameters: 49k faults, up to 150 ms of system time per rank and step).
            param.grad = view
        if bucket.flags is not None:
            bucket.flags[index] = 0 if grad is None else 1
        bucket.ready.add(index)
        bucket.pending -= 1
        while self._next_launch < len(self.buckets) and not self.buckets[self._next_launch].pending:
            launched = self.buckets[self._next_launch]
            launched.work = dist.all_reduce(launched.flat, group=self.group, async_op=True)
            self._next_launch += 1

    def _finish_backward(self) -> None:
        """Runs once backward is done: settle parameters that got no gradient, wait for
        every bucket and point each parameter's ``.grad`` at its averaged slice."""
        missing = [(b, i) for b in self.buckets for i in range(len(b.params)) if i not in b.ready]
        if missing and not self.find_unused_parameters:
            names = ", ".join(repr(self._names[b.params[i]]) for b, i in missing)
            self._abort(
                f"haiscale DDP: parameter(s) {names} got no gradient in this backward pass; "
                "pass find_unused_parameters=True to DistributedDataParallel if they are "
                "unused on purpose, or make the loss depend on them"
            )
        for bucket, index in missing:
            self._mark_ready(bucket, index)
        for bucket in self.buckets:
            bucket.work.wait()
            self._write_back(bucket)
        self._reset()

    def _write_back(self, bucket: _Bucket) -> None:
        for index, (param, view) in enumerate(zip(bucket.params, bucket.views, strict=True)):
            if bucket.flags is None or bucket.flags[index] > 0:
                param.grad = view
            # else no rank used it: its gradient stays None, as in one process

    def _abort(self, message: str) -> None:
        """Raise RuntimeError(message) once the buckets already launched are done, so the
        failed step leaves no collective running into the next one."""
        for bucket in self.buckets:
            if bucket.work is not None:
                with contextlib.suppress(Exception):
                    bucket.work.wait()
        self._reset()
        raise RuntimeError(message)

    def _reset(self) -> None:
        for bucket in self.buckets:
            bucket.pending, bucket.work = len(bucket.params), None
            bucket.ready.clear()
        self._next_launch = 0
        self._in_backward = False
        self._reachable = None


class DistributedDataParallel(nn.Module):
    """Wraps ``module`` so that ``backward()`` leaves every rank with the gradients
    averaged over ``process_group`` (the default group when None).

    At construction every rank takes rank 0's parameters and buffers. Gradients are
    all-reduced in buckets of about ``bucket_cap_mb`` MiB while backward runs. With
    ``find_unused_parameters`` parameters that take no part in a step are found (and
    all-reduced as zeros, their gradient left None where no rank used them); without it
    such a parameter makes backward raise RuntimeError naming it. ``broadcast_buffers``
    copies rank 0's buffers to every rank before each forward.
    """

    def __init__(
        self,
        module: nn.Module,
        process_group: dist.ProcessGroup | None = None,
        bucket_cap_mb: float = 25,
        find_unused_parameters: bool = False,
        broadcast_buffers: bool = True,
    ) -> None:
        super().__init__()
        if bucket_cap_mb <= 0:
            raise ValueError(f"bucket_cap_mb={bucket_cap_mb}: must be positive")
        self.module = module
        self.process_group = process_group
        self.broadcast_buffers = broadcast_buffers
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        _broadcast_from_first([p for _, p in module.named_parameters()], process_group)
        self._sync_buffers()
        self.reducer = Reducer(
            named, process_group, int(bucket_cap_mb * 2**20), find_unused_parameters
        )

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.broadcast_buffers:
            self._sync_buffers()
        outputs = self.module(*args, **kwargs)
        if torch.is_grad_enabled():
            self.reducer.note_forward(outputs)
        return outputs

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward passes inside only accumulate gradients locally; the first backward
        after it all-reduces the accumulated sum."""
        before, self.reducer.sync = self.reducer.sync, False
        try:
            yield
        finally:
            self.reducer.sync = before

    def _sync_buffers(self) -> None:
        buffers = list(self.module.buffers())
        if buffers and dist.get_world_size(self.process_group) > 1:
            _broadcast_from_first(buffers, self.process_group)
