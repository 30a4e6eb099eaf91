"""Fully sharded data parallel (ZeRO-3): each rank keeps 1/N of every unit's parameters.

A *unit* is one wrapped module. Its parameters are flattened into one vector, padded to a
multiple of the world size N, and each rank keeps one block of it as ``flat_param`` (fp32,
the master copy the optimiser updates, so gradients and optimiser state are sharded too).
Around a unit's forward the full vector is all-gathered, the module's parameters are set
as views of it, and its memory is released afterwards; before the unit's backward it is
gathered again, and when its gradient is complete it is reduce-scattered back to the
shards. The next unit's all-gather is issued asynchronously while the current one
computes, so communication overlaps compute in both passes.

The released buffers keep their autograd identity: tensors saved for backward are views
of a storage that is shrunk to nothing after forward and refilled before backward.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map


class BackwardPrefetch(enum.Enum):
    """When a unit's backward asks for the next unit's parameters."""

    BACKWARD_PRE = "pre"
    """Before the current unit's gradient computation: most overlap, two units in memory."""
    BACKWARD_POST = "post"
    """After the current unit's gradient is computed: less memory, less overlap."""


WrapPolicy = Callable[[nn.Module], bool] | set[type[nn.Module]]


@dataclass
class _ParamSlot:
    """Where one original parameter lives: an attribute of a module, a slice of the flat."""

    module: nn.Module
    attr: str
    name: str  # fully qualified name in the unwrapped model
    index: int  # which unique parameter (tied parameters share one)


class _GatheredParams(torch.autograd.Function):
    """Identity from the shard to the gathered vector in autograd's eyes: its backward is
    the unit's post-backward hook (reduce-scatter), so it runs once the whole gradient of
    the unit's parameters is known."""

    @staticmethod
    def forward(ctx: Any, shard: torch.Tensor, unit: FullyShardedDataParallel) -> torch.Tensor:
        ctx.unit = unit
        # A fresh tensor over the gather buffer's storage: its own version counter, so
        # refilling the buffer before backward does not look like an in-place edit.
        full = unit._full_buffer
        return torch.empty(0, dtype=full.dtype, device=full.device).set_(
            full.untyped_storage(), 0, full.shape
        )

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None]:
        ctx.unit._post_backward(grad)
        return None, None


class FullyShardedDataParallel(nn.Module):
    """Shard ``module``'s parameters, gradients and optimiser state across a process group.

    Args:
        module: the model (or part of it) to wrap; its parameters must be equal on every
            rank or are made so (rank 0's are broadcast).
        process_group: the data-parallel group (default: the world). Works on any backend
            with all-gather and reduce-scatter (gloo, nccl, "hfreduce").
        auto_wrap_policy: which submodules become units of their own: a callable
            ``module -> bool`` or a set of module classes (e.g. ``{TransformerBlock}``).
            Whatever is left stays in the root unit.
        backward_prefetch: when the next unit's all-gather is issued during backward
            (``None``: not before that unit's own backward starts).
        mixed_precision: compute dtype of gathered parameters (e.g. ``torch.bfloat16``);
            shards, gradients and optimiser state stay fp32, and floating-point inputs are
            cast to it. ``None`` computes in fp32.

    Build the optimiser on ``parameters()`` after wrapping: those are the shards. The
    state-dict methods belong to the outermost wrapper and speak the unwrapped model's names.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        process_group: dist.ProcessGroup | None = None,
        auto_wrap_policy: WrapPolicy | None = None,
        backward_prefetch: BackwardPrefetch | None = BackwardPrefetch.BACKWARD_PRE,
        mixed_precision: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not dist.is_initialized():
            raise RuntimeError(
                "FullyShardedDataParallel needs torch.distributed: call "
                "dist.init_process_group(...) before wrapping the model"
            )
        self._group = process_group or dist.group.WORLD
        self._rank = dist.get_rank(self._group)
        self._world = dist.get_world_size(self._group)
        self._backward_prefetch = backward_prefetch
        self._compute_dtype = mixed_precision or torch.float32
        if auto_wrap_policy is not None:
            _wrap_children(module, _as_predicate(auto_wrap_policy), self._unit_kwargs())
        self.module = module
        # Shards and gather buffers live where the module's parameters do.
        device = next(module.parameters(), torch.empty(0)).device
        self._slots, params = _own_parameters(module)
        self._shapes = [p.shape for p in params]
        self._numels = [p.numel() for p in params]
        numel = sum(self._numels)
        self._padded = -(-max(numel, 1) // self._world) * self._world
        self.flat_param = nn.Parameter(self._broadcast_and_shard(params, numel, device))
        self._full_buffer = torch.empty(self._padded, dtype=self._compute_dtype, device=device)
        self._full_buffer.untyped_storage().resize_(0)
        self._pending_gather: tuple[dist.Work, torch.Tensor] | None = None
        self._gathered = False
        self._backward_ready = False
        _broadcast_buffers(self._own_buffers(), self._group)
        self._adopt_as_root()

    def _unit_kwargs(self) -> dict[str, Any]:
        return {
            "process_group": self._group,
            "backward_prefetch": self._backward_prefetch,
            "mixed_precision": self._compute_dtype,
        }

    def _broadcast_and_shard(
        self, params: list[nn.Parameter], numel: int, device: torch.device
    ) -> torch.Tensor:
        """This rank's block of the padded flat vector (rank 0's values everywhere)."""
        flat = torch.zeros(self._padded, dtype=torch.float32, device=device)
        if params:
            flat[:numel] = torch.cat([p.detach().reshape(-1).float() for p in params])
        dist.broadcast(flat, src=dist.get_global_rank(self._group, 0), group=self._group)
        for slot in self._slots:
            delattr(slot.module, slot.attr)
        return flat.chunk(self._world)[self._rank].clone()

    def _own_buffers(self) -> list[torch.Tensor]:
        return [b for _, _, _, b in _named_unit_tensors(self.module, "", buffers=True)]

    def _adopt_as_root(self) -> None:
        """Make this the root of every unit inside it (the outermost wrapper wins)."""
        self._units = [m for m in self.modules() if isinstance(m, FullyShardedDataParallel)]
        self._order: list[FullyShardedDataParallel] = []
        self._order_fixed = False
        self._pending_grads: list[tuple[FullyShardedDataParallel, dist.Work, torch.Tensor]] = []
        for name, unit in self.named_modules():
            if isinstance(unit, FullyShardedDataParallel):
                unit._root = self
                unit._prefix = _original_path(self, name)

    # -- gather and release --------------------------------------------------------------

    def _start_gather(self) -> None:
        """Issue the all-gather of the full vector unless it is gathered or on its way."""
        if self._gathered or self._pending_gather is not None:
            return
        self._full_buffer.untyped_storage().resize_(self._padded * self._full_buffer.itemsize)
        shard = self.flat_param.detach().to(self._compute_dtype)
        work = dist.all_gather_single(self._full_buffer, shard, group=self._group, async_op=True)
        self._pending_gather = (work, shard)  # the shard copy lives until the gather ends

    def _wait_gather(self) -> None:
        self._start_gather()
        if self._pending_gather is not None:
            self._pending_gather[0].wait()
            self._pending_gather = None
        self._gathered = True

    def _release(self) -> None:
        if self._pending_gather is not None:
            self._pending_gather[0].wait()
            self._pending_gather = None
        self._full_buffer.untyped_storage().resize_(0)
        self._gathered = False

    def _set_views(self, full: torch.Tensor, as_parameters: bool = False) -> None:
        """Point the module's parameter attributes at slices of ``full``."""
        padding = self._padded - sum(self._numels)
        pieces = full.split([*self._numels, padding])
        views = [p.view(s) for p, s in zip(pieces, self._shapes, strict=False)]
        for slot in self._slots:
            view = views[slot.index]
            if as_parameters:
                slot.module.register_parameter(slot.attr, nn.Parameter(view, requires_grad=False))
            else:
                setattr(slot.module, slot.attr, view)

    def _clear_views(self) -> None:
        for slot in self._slots:
            slot.module._parameters.pop(slot.attr, None)
            slot.module.__dict__.pop(slot.attr, None)

    # -- forward and backward ----------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        root = self._root
        if self is root:
            args, kwargs = self._cast_inputs(args, kwargs)
        root._record_order(self)
        self._wait_gather()
        root._prefetch(self, backward=False)
        self._set_views(_GatheredParams.apply(self.flat_param, self))
        try:
            out = self.module(*args, **kwargs)
        finally:
            self._clear_views()
            self._release()
            if self is root:
                self._order_fixed = True
        self._backward_ready = False
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                t.register_hook(self._pre_backward)
        return out

    def _cast_inputs(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if self._compute_dtype == torch.float32:
            return args, kwargs

        def cast(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and x.is_floating_point():
                return x.to(self._compute_dtype)
            return x

        return tree_map(cast, args), tree_map(cast, kwargs)

    def _record_order(self, unit: FullyShardedDataParallel) -> None:
        if not self._order_fixed:
            self._order.append(unit)

    def _prefetch(self, unit: FullyShardedDataParallel, backward: bool) -> None:
        """Start gathering the unit that runs after ``unit``: the next one in forward order,
        or in backward order the one before it (after the root: the last one)."""
        if not self._order_fixed or unit not in self._order:
            return
        k = self._order.index(unit)
        k = (k - 1 if k > 0 else len(self._order) - 1) if backward else k + 1
        if 0 < k < len(self._order):  # the root (k=0) is gathered first anyway
            self._order[k]._start_gather()

    def _pre_backward(self, grad: torch.Tensor) -> None:
        if self._backward_ready:
            return
        self._backward_ready = True
        root = self._root
        if self is root:
            # Runs once backward is over: wait for the last reduce-scatters.
            torch.autograd.Variable._execution_engine.queue_callback(root._finish_backward)
        self._wait_gather()
        if self._backward_prefetch is BackwardPrefetch.BACKWARD_PRE:
            root._prefetch(self, backward=True)

    def _post_backward(self, grad: torch.Tensor) -> None:
        self._release()
        root = self._root
        if self._backward_prefetch is BackwardPrefetch.BACKWARD_POST:
            root._prefetch(self, backward=True)
        # Gradients are reduced in fp32 whatever the compute dtype: the master is fp32.
        grad = grad.detach().float().contiguous()
        # One reduce-scatter in flight at a time: each holds a full-size gradient, and on
        # CPU several at once contend with the all-gathers for the same cores.
        root._settle_grads()
        shard_grad = torch.empty_like(self.flat_param)
        work = dist.reduce_scatter_single(shard_grad, grad, group=self._group, async_op=True)
        root._pending_grads.append((self, work, shard_grad))

    def _settle_grads(self) -> None:
        """Wait for the reduce-scatters in flight and add their blocks to the gradients."""
        for unit, work, shard_grad in self._pending_grads:
            work.wait()
            shard_grad.div_(self._world)  # the mean over ranks, as DDP averages
            p = unit.flat_param
            p.grad = shard_grad if p.grad is None else p.grad.add_(shard_grad)
        self._pending_grads.clear()

    def _finish_backward(self) -> None:
        self._settle_grads()
        for unit in self._units:
            unit._release()
            unit._backward_ready = False

    # -- full parameters and state dicts -----------------------------------------------

    @contextmanager
    def summon_full_params(self, writeback: bool = True) -> Iterator[None]:
        """Within the block the wrapped modules hold their full parameters (as plain
        ``nn.Parameter`` objects, in the compute dtype). With ``writeback`` changes made to
        them are copied back to the shards on exit."""
        for unit in self._units:
            unit._wait_gather()
            unit._set_views(unit._full_buffer, as_parameters=True)
        try:
            yield
        finally:
            for unit in self._units:
                if writeback:
                    unit.flat_param.data.copy_(unit._full_buffer.chunk(self._world)[self._rank])
                unit._clear_views()
                unit._release()

    def state_dict(self, *, rank0_only: bool = False) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """The full, unsharded state under the unwrapped model's names (parameters as fp32
        copies). Every rank takes part; with ``rank0_only`` the others get an empty dict."""
        state: dict[str, torch.Tensor] = {}
        with self.summon_full_params(writeback=False):
            for unit in self._units:
                for slot in unit._slots:
                    value = getattr(slot.module, slot.attr).detach().float().clone()
                    state[unit._prefix + slot.name] = value
                for name, _, _, b in _named_unit_tensors(unit.module, unit._prefix, True):
                    state[name] = b.clone()
        return {} if rank0_only and self._rank != 0 else state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:  # type: ignore[override]
        """Load a full state dict (as ``state_dict`` returns it, on every rank)."""
        for unit in self._units:
            first = {s.index: unit._prefix + s.name for s in reversed(unit._slots)}
            names = [first[i] for i in range(len(unit._numels))]
            missing = [n for n in names if n not in state]
            if missing:
                raise KeyError(f"full state dict lacks {missing}; was it saved from this model?")
            flat = torch.zeros(unit._padded, device=unit.flat_param.device)
            if names:
                flat[: sum(unit._numels)] = torch.cat(
                    [state[n].reshape(-1).to(flat) for n in names]
                )
            unit.flat_param.data.copy_(flat.chunk(self._world)[self._rank])
            unit._load_buffers(state)

    def sharded_state_dict(self) -> dict[str, Any]:
        """This rank's shards (one flat fp32 block per unit), the buffers, and the layout
        needed to load them back (world size, rank, each unit's parameter names)."""
        shards, layout, buffers = {}, {}, {}
        for unit in self._units:
            key = unit._prefix or "<root>"
            shards[key] = unit.flat_param.detach().clone()
            names = [unit._prefix + s.name for s in unit._slots]
            layout[key] = {"names": names, "numel": sum(unit._numels)}
            for name, _, _, b in _named_unit_tensors(unit.module, unit._prefix, True):
                buffers[name] = b.clone()
        meta = {"world_size": self._world, "rank": self._rank, "units": layout}
        return {"shards": shards, "buffers": buffers, "meta": meta}

    def load_sharded_state_dict(self, state: dict[str, Any]) -> None:
        """Load what ``sharded_state_dict`` returned on this rank of an equal-sized group."""
        meta = state["meta"]
        if (meta["world_size"], meta["rank"]) != (self._world, self._rank):
            raise ValueError(
                f"sharded state dict is rank {meta['rank']} of {meta['world_size']}, this is "
                f"rank {self._rank} of {self._world}; load the full state dict to reshard"
            )
        for unit in self._units:
            key, numel = unit._prefix or "<root>", sum(unit._numels)
            if meta["units"].get(key, {}).get("numel") != numel:
                raise ValueError(f"sharded state dict has no unit {key!r} of {numel} elements")
            unit.flat_param.data.copy_(state["shards"][key])
            unit._load_buffers(state["buffers"])

    def _load_buffers(self, state: dict[str, torch.Tensor]) -> None:
        for name, _, _, b in _named_unit_tensors(self.module, self._prefix, True):
            b.copy_(state[name])


# -- wrapping -----------------------------------------------------------------------------


def _as_predicate(policy: WrapPolicy) -> Callable[[nn.Module], bool]:
    if isinstance(policy, set):
        classes = tuple(policy)
        return lambda m: isinstance(m, classes)
    return policy


def _wrap_children(
    module: nn.Module, wrap: Callable[[nn.Module], bool], kwargs: dict[str, Any]
) -> None:
    """Replace, innermost first, every submodule ``wrap`` selects by a unit of its own."""
    for name, child in module.named_children():
        if isinstance(child, FullyShardedDataParallel):
            continue
        _wrap_children(child, wrap, kwargs)
        if wrap(child):
            setattr(module, name, FullyShardedDataParallel(child, **kwargs))


def _named_unit_tensors(
    module: nn.Module, prefix: str, buffers: bool = False
) -> Iterator[tuple[str, nn.Module, str, torch.Tensor]]:
    """(qualified name, owner, attribute, tensor) for the parameters (or buffers) of
    ``module`` that belong to no inner unit."""
    tensors = module._buffers if buffers else module._parameters
    for attr, t in tensors.items():
        if t is not None:
            yield f"{prefix}{attr}", module, attr, t
    for name, child in module.named_children():
        if not isinstance(child, FullyShardedDataParallel):
            yield from _named_unit_tensors(child, f"{prefix}{name}.", buffers)


def _own_parameters(module: nn.Module) -> tuple[list[_ParamSlot], list[nn.Parameter]]:
    slots: list[_ParamSlot] = []
    unique: dict[int, int] = {}
    params: list[nn.Parameter] = []
    for name, owner, attr, p in _named_unit_tensors(module, ""):
        if id(p) not in unique:
            unique[id(p)] = len(params)
            params.append(p)
        slots.append(_ParamSlot(owner, attr, name, unique[id(p)]))
    return slots, params


def _broadcast_buffers(buffers: list[torch.Tensor], group: dist.ProcessGroup) -> None:
    for b in buffers:
        dist.broadcast(b, src=dist.get_global_rank(group, 0), group=group)


def _original_path(root: nn.Module, name: str) -> str:
    """The prefix (``"layers.0."``, or ``""``) of the module wrapped by the unit at ``name``
    in the unwrapped model: the path less the ``module`` step each wrapper adds."""
    parts, current = [], root
    for part in [*name.split("."), "module"] if name else ["module"]:
        if not (isinstance(current, FullyShardedDataParallel) and part == "module"):
            parts.append(part)
        current = getattr(current, part)
    return "".join(f"{p}." for p in parts)
