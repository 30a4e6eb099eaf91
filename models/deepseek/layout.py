"""Checkpoint key layouts: where each tensor of a released checkpoint goes in our model.

A layout maps one hub key at a time, so a loader can place tensors into the model shard by
shard without holding the whole checkpoint: per-expert hub tensors land in their row of our
stacked expert tensors (`Slot.expert`, `Slot.part`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

ExpertPart = Literal["gate", "up", "down"]


@dataclass(frozen=True)
class Slot:
    """Where one hub tensor goes in our state dict."""

    key: str
    """Our state-dict key."""
    expert: int | None = None
    """Row of a stacked expert tensor (`...experts.gate_up_proj` / `down_proj`), if any."""
    part: ExpertPart | None = None
    """For `gate_up_proj`: the gate rows (first half) or the up rows (second half)."""


class Layout(Protocol):
    """One checkpoint key layout (a DeepSeek release's names, or transformers')."""

    def slot(self, hub_key: str) -> Slot | None:
        """Where `hub_key` goes; None for a hub-only copy that is skipped (e.g. the MTP
        layers' copies of the shared embedding)."""
        ...

    def hub_items(self, state: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
        """Our state dict → (hub key, tensor) pairs, in the order they should be written."""
        ...


def place(target: torch.Tensor, slot: Slot, value: torch.Tensor) -> None:
    """Copies `value` into the part of our tensor `target` that `slot` names.

    Raises:
        ValueError: `value` does not have the shape of that part.
    """
    view = target
    if slot.expert is not None:
        if not 0 <= slot.expert < target.shape[0]:
            raise ValueError(f"{slot.key}: expert {slot.expert} of {target.shape[0]}")
        view = target[slot.expert]
    if slot.part in ("gate", "up"):
        half = view.shape[0] // 2
        view = view[:half] if slot.part == "gate" else view[half:]
    if view.shape != value.shape:
        raise ValueError(
            f"{slot.key}{'' if slot.expert is None else f'[{slot.expert}]'}"
            f"{'' if slot.part is None else f' ({slot.part})'}: "
            f"{tuple(value.shape)} vs {tuple(view.shape)}"
        )
    with torch.no_grad():
        view.copy_(value)
