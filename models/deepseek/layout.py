"""Checkpoint key layouts: where each tensor of a released checkpoint goes in our model.

A layout maps one hub key at a time, so a loader can place tensors into the model shard by
shard without holding the whole checkpoint: per-expert hub tensors land in their row of our
stacked expert tensors (`Slot.expert`, `Slot.part`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from deepseek.config import ModelConfig

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


def view(target: torch.Tensor, slot: Slot) -> torch.Tensor:
    """The part of our tensor `target` that `slot` names (a view: writing it writes `target`).

    Raises:
        ValueError: `slot` names an expert row that `target` does not have.
    """
    part = target
    if slot.expert is not None:
        if not 0 <= slot.expert < target.shape[0]:
            raise ValueError(f"{slot.key}: expert {slot.expert} of {target.shape[0]}")
        part = target[slot.expert]
    if slot.part in ("gate", "up"):
        half = part.shape[0] // 2
        part = part[:half] if slot.part == "gate" else part[half:]
    return part


def place(target: torch.Tensor, slot: Slot, value: torch.Tensor) -> None:
    """Copies `value` into the part of our tensor `target` that `slot` names, converting dtype.

    Raises:
        ValueError: `value` does not have the shape of that part, or the expert is out of range.
    """
    part = view(target, slot)
    if part.shape != value.shape:
        raise ValueError(f"{describe(slot)}: {tuple(value.shape)} vs {tuple(part.shape)}")
    with torch.no_grad():
        part.copy_(value)


def describe(slot: Slot) -> str:
    """`slot` for messages: `key[expert] (part)`."""
    expert = "" if slot.expert is None else f"[{slot.expert}]"
    part = "" if slot.part is None else f" ({slot.part})"
    return f"{slot.key}{expert}{part}"


_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.*)$")
# Per-MTP-layer hub copies of the main model's embedding and head: written, never loaded.
_MTP_COPIES = {
    "embed_tokens.weight": "model.embed_tokens.weight",
    "shared_head.head.weight": "lm_head.weight",
}


class HubLayout:
    """The DeepSeek V2/V3/V3.2 hub names (also transformers' own save format).

    Our names are the hub's except for two things:
    - routed experts: stacked `mlp.experts.gate_up_proj` (E, 2I, H) / `down_proj` (E, H, I)
      here, `mlp.experts.{i}.{gate,up,down}_proj.weight` per expert on the hub;
    - MTP modules: `mtp.{k}.*` here, `model.layers.{num_hidden_layers + k}.*` on the hub,
      which also stores copies of the shared embedding (`embed_tokens`) and head
      (`shared_head.head`).
    A tied `lm_head.weight` is neither written nor loaded (it is the embedding).
    """

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    def slot(self, hub_key: str) -> Slot | None:
        """Where `hub_key` goes; None for the MTP copies and a tied head."""
        if hub_key == "lm_head.weight" and self.config.tie_word_embeddings:
            return None
        layer = _LAYER.match(hub_key)
        if layer and int(layer.group(1)) >= self.config.num_hidden_layers:
            depth, rest = int(layer.group(1)) - self.config.num_hidden_layers, layer.group(2)
            if rest in _MTP_COPIES:
                return None
            hub_key = f"mtp.{depth}.{rest}"
        expert = _EXPERT.match(hub_key)
        if not expert:
            return Slot(hub_key)
        prefix, index, kind = expert.groups()
        if kind == "down":
            return Slot(f"{prefix}.down_proj", int(index))
        return Slot(f"{prefix}.gate_up_proj", int(index), kind)  # type: ignore[arg-type]

    def hub_items(self, state: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
        """Our state dict → (hub key, tensor view) pairs; expert rows and MTP copies are views."""
        L = self.config.num_hidden_layers
        for key, value in state.items():
            if key == "lm_head.weight" and self.config.tie_word_embeddings:
                continue
            hub_key = key
            if key.startswith("mtp."):
                depth, rest = key[len("mtp.") :].split(".", 1)
                hub_key = f"model.layers.{L + int(depth)}.{rest}"
            if hub_key.endswith(".mlp.experts.gate_up_proj"):
                prefix = hub_key[: -len(".gate_up_proj")]
                for i, rows in enumerate(value):
                    gate, up = rows.chunk(2, dim=0)
                    yield f"{prefix}.{i}.gate_proj.weight", gate
                    yield f"{prefix}.{i}.up_proj.weight", up
            elif hub_key.endswith(".mlp.experts.down_proj"):
                prefix = hub_key[: -len(".down_proj")]
                for i, rows in enumerate(value):
                    yield f"{prefix}.{i}.down_proj.weight", rows
            else:
                yield hub_key, value
        for depth in range(self.config.num_nextn_predict_layers):
            for name, source in _MTP_COPIES.items():
                yield f"model.layers.{L + depth}.{name}", state[source]
