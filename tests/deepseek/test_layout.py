"""Checkpoint layouts: slots, placing tensors into stacked experts, the hub names."""

from __future__ import annotations

import pytest
import torch

import deepseek
from deepseek.layout import HubLayout, Slot, place


def test_place_fills_one_expert_half() -> None:
    stacked = torch.zeros(3, 4, 2)  # 3 experts, gate rows 0-1, up rows 2-3
    place(stacked, Slot("gate_up_proj", 1, "up"), torch.ones(2, 2))
    assert stacked[1, 2:].eq(1).all() and stacked.sum() == 4


def test_place_refuses_wrong_shapes_and_experts() -> None:
    stacked = torch.zeros(3, 4, 2)
    with pytest.raises(ValueError, match=r"gate_up_proj\[1\] \(gate\): \(4, 2\) vs \(2, 2\)"):
        place(stacked, Slot("gate_up_proj", 1, "gate"), torch.ones(4, 2))
    with pytest.raises(ValueError, match="expert 3 of 3"):
        place(stacked, Slot("gate_up_proj", 3, "gate"), torch.ones(2, 2))
    assert stacked.sum() == 0


def test_hub_layout_names() -> None:
    config = deepseek.preset("v3-tiny", num_nextn_predict_layers=1, tie_word_embeddings=True)
    layout = HubLayout(config)
    assert layout.slot("model.layers.1.mlp.experts.5.down_proj.weight") == Slot(
        "model.layers.1.mlp.experts.down_proj", 5
    )
    assert layout.slot("model.layers.3.mlp.experts.0.gate_proj.weight") == Slot(
        "mtp.0.mlp.experts.gate_up_proj", 0, "gate"
    )
    assert layout.slot("model.layers.3.eh_proj.weight") == Slot("mtp.0.eh_proj.weight")
    assert layout.slot("lm_head.weight") is None  # tied: it is the embedding
    state = deepseek.DeepseekForCausalLM(config).state_dict()
    keys = [key for key, _ in layout.hub_items(state)]
    assert "lm_head.weight" not in keys
    assert "model.layers.3.shared_head.head.weight" in keys
    assert len(keys) == len(set(keys))
