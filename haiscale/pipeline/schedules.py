"""Pipeline schedules: run a rank's stage(s) over micro-batches and accumulate gradients.

Each schedule is an ``nn.Module`` holding this rank's model chunk(s), so its
``parameters()`` go to the optimiser as usual. ``forward_backward`` runs one training
step's forward and backward passes; the caller then steps the optimiser.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint as checkpointed

from haiscale.pipeline.orders import Action, gpipe_order, interleaved_order, one_f_one_b_order
from haiscale.pipeline.p2p import StageLinks

CHECKPOINT_MODES = ("never", "except_last", "always")


@dataclass
class _Step:
    """What one ``forward_backward`` call keeps between its actions."""

    inputs: list[torch.Tensor | None]
    labels: list[tuple[torch.Tensor, ...]]
    criterion: Callable[..., torch.Tensor] | None
    weights: list[float]
    saved: dict[tuple[int, int], tuple[torch.Tensor | None, torch.Tensor]] = field(
        default_factory=dict
    )
    losses: list[torch.Tensor] = field(default_factory=list)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)


class PipelineSchedule(nn.Module):
    """Runs ``modules`` (this rank's chunks) in the order ``_order`` gives.

    Chunk ``c`` of group rank ``r`` is virtual stage ``c * size + r``, as ``partition``
    lays it out. Subclasses supply the order.
    """

    def __init__(
        self,
        modules: Sequence[nn.Module],
        chunks: int,
        process_group: dist.ProcessGroup | None,
        checkpoint: str = "never",
    ) -> None:
        super().__init__()
        if chunks < 1:
            raise ValueError(f"chunks (micro-batches per step) must be at least 1, not {chunks}")
        if checkpoint not in CHECKPOINT_MODES:
            raise ValueError(f"checkpoint={checkpoint!r}; choose one of {CHECKPOINT_MODES}")
        self.module = nn.ModuleList(modules)
        self.chunks = chunks
        self.checkpoint = checkpoint
        self.process_group = process_group
        self.rank = dist.get_rank(process_group)
        self.size = dist.get_world_size(process_group)
        self.stages = self.size * len(self.module)
        params = (p for m in self.module for p in m.parameters())
        device = next(params, torch.empty(0)).device
        self.links = StageLinks(process_group, self.stages, device)

    def _order(self) -> list[Action]:
        """This rank's actions for one step (see ``haiscale.pipeline.orders``)."""
        raise NotImplementedError

    @property
    def is_first_stage(self) -> bool:
        return self.rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.rank == self.size - 1

    def forward_backward(
        self,
        x: torch.Tensor | None,
        criterion: Callable[..., torch.Tensor] | None = None,
        labels: tuple[torch.Tensor, ...] = (),
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One step's forward and backward over ``chunks`` micro-batches of ``x``.

        ``x`` is read on the first stage only (other ranks may pass None); ``criterion``
        and ``labels`` (split along dim 0 like ``x``) on the last. Each micro-batch's
        ``criterion(output, *labels)`` is weighted by its share of the batch, so for a
        mean-reduced criterion the accumulated gradients are those of the full-batch loss
        (without labels the micro-batches weigh equally).

        Returns ``(loss, output)`` on the last stage: the full-batch loss and the
        concatenated outputs, both detached. Other stages return ``(None, None)``.
        """
        step = self._prepare(x, criterion, labels)
        for op, chunk, micro in self._order():
            if op == "F":
                self._forward(step, chunk, micro)
            else:
                self._backward(step, chunk, micro)
        self.links.wait_sends()
        if not self.is_last_stage:
            return None, None
        outputs = torch.cat([step.outputs[m] for m in range(self.chunks)])
        return torch.stack(step.losses).sum(), outputs

    def _prepare(
        self,
        x: torch.Tensor | None,
        criterion: Callable[..., torch.Tensor] | None,
        labels: tuple[torch.Tensor, ...],
    ) -> _Step:
        inputs: list[torch.Tensor | None] = [None] * self.chunks
        micro_labels: list[tuple[torch.Tensor, ...]] = [()] * self.chunks
        weights = [1.0 / self.chunks] * self.chunks
        if self.is_first_stage:
            inputs = list(self._split(x, "x"))
        if self.is_last_stage:
            if criterion is None:
                raise ValueError("the last pipeline stage needs a criterion to compute the loss")
            split = [self._split(t, f"labels[{i}]") for i, t in enumerate(labels)]
            if split:
                micro_labels = list(zip(*split, strict=True))
                weights = [len(t) / len(labels[0]) for t in split[0]]
        return _Step(inputs, micro_labels, criterion, weights)

    def _split(self, t: torch.Tensor | None, name: str) -> tuple[torch.Tensor, ...]:
        if t is None or len(t) < self.chunks:
            size = "None" if t is None else f"a batch of {len(t)}"
            raise ValueError(
                f"{name} is {size}; it needs at least chunks={self.chunks} rows to split "
                "into micro-batches"
            )
        return torch.tensor_split(t, self.chunks)

    def _stage(self, chunk: int) -> int:
        return chunk * self.size + self.rank

    def _checkpointed(self, micro: int) -> bool:
        if self.checkpoint == "except_last":
            # The last micro-batch's backward comes right after its forward: recomputing
            # it would save no memory.
            return micro < self.chunks - 1
        return self.checkpoint == "always"

    def _forward(self, step: _Step, chunk: int, micro: int) -> None:
        stage = self._stage(chunk)
        if stage == 0:
            x = step.inputs[micro]
        else:
            x = self.links.recv_activation(stage - 1, micro)
            # Floating activations carry a gradient back to the previous stage.
            x.requires_grad_(x.is_floating_point())
        module = self.module[chunk]
        if self._checkpointed(micro):
            y = checkpointed(module, x, use_reentrant=False)
        else:
            y = module(x)
        if stage == self.stages - 1:
            step.outputs[micro] = y.detach()
            y = step.criterion(y, *step.labels[micro]) * step.weights[micro]
            step.losses.append(y.detach())
        else:
            self.links.send_activation(y, stage, micro)
        step.saved[chunk, micro] = (x, y)

    def _backward(self, step: _Step, chunk: int, micro: int) -> None:
        stage = self._stage(chunk)
        x, y = step.saved.pop((chunk, micro))
        grad = None
        if stage != self.stages - 1 and y.is_floating_point():
            grad = self.links.recv_grad(y, stage, micro)
        if y.requires_grad:
            torch.autograd.backward(y, grad)
        if stage > 0 and x.is_floating_point():
            # An input the stage did not use still owes its predecessor a gradient.
            self.links.send_grad(
                x.grad if x.grad is not None else torch.zeros_like(x), stage - 1, micro
            )


class GPipe(PipelineSchedule):
    """GPipe: every micro-batch's forward, then every backward.

    ``checkpoint`` recomputes activations in backward instead of keeping them:
    ``"never"``, ``"always"`` or ``"except_last"`` (all micro-batches but the last).
    """

    def __init__(
        self,
        module: nn.Module,
        chunks: int,
        process_group: dist.ProcessGroup | None = None,
        checkpoint: str = "never",
    ) -> None:
        super().__init__([module], chunks, process_group, checkpoint)

    def _order(self) -> list[Action]:
        return gpipe_order(self.chunks)


class PipeDream(PipelineSchedule):
    """PipeDream-flush, i.e. 1F1B: same bubble as GPipe, but a rank holds the
    activations of at most ``size - rank`` micro-batches instead of all of them."""

    def __init__(
        self, module: nn.Module, chunks: int, process_group: dist.ProcessGroup | None = None
    ) -> None:
        super().__init__([module], chunks, process_group)

    def _order(self) -> list[Action]:
        return one_f_one_b_order(self.chunks, self.size, self.rank)


class Interleaved1F1B(PipelineSchedule):
    """Interleaved 1F1B: ``modules[c]`` is virtual stage ``c * size + rank`` (what
    ``partition(..., num_model_chunks=len(modules))`` returns). The bubble shrinks by the
    number of chunks at the cost of more stage-to-stage messages. ``chunks`` must be a
    multiple of the pipeline size."""

    def __init__(
        self,
        modules: Sequence[nn.Module],
        chunks: int,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__(modules, chunks, process_group)
        self._order()  # fails early on a micro-batch count the schedule cannot run

    def _order(self) -> list[Action]:
        return interleaved_order(self.chunks, self.size, self.rank, len(self.module))
