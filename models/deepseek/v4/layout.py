"""Checkpoint key layouts of DeepSeek-V4: DeepSeek's release names and transformers' saved names.

Our module names are transformers' in-memory names. Both layouts name a layer's tensors as
DeepSeek's release does (`attn.wq_a`, `attn.compressor.wkv`, `ffn.experts.E.w1`,
`hc_attn_fn`, ...: transformers' save_pretrained reverses its own conversion mapping); they
differ in the names around the layers:

| ours                      | release          | transformers' save_pretrained |
|---------------------------|------------------|-------------------------------|
| model.embed_tokens.weight | embed.weight     | model.embed_tokens.weight     |
| model.layers.N.…          | layers.N.…       | model.layers.N.…              |
| model.norm.weight         | norm.weight      | model.norm.weight             |
| model.hc_head.hc_fn       | hc_head_fn       | model.hc_head.hc_fn           |
| lm_head.weight            | head.weight      | head.weight                   |

Routed experts are stacked here (`mlp.experts.gate_up_proj` (E, 2I, H), `down_proj`) and
per expert in both layouts (w1 = gate, w3 = up, w2 = down). The release's MTP layers
(`mtp.*`) are skipped: this model does not build them. A tied head is neither written nor
loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

import torch

from deepseek.layout import ExpertPart, Slot
from deepseek.v4.config import V4Config

# Leaf names inside a layer's modules, release → ours.
_ATTENTION = {
    "attn_sink": "sinks",
    "wq_a.weight": "q_a_proj.weight",
    "q_norm.weight": "q_a_norm.weight",
    "wq_b.weight": "q_b_proj.weight",
    "wkv.weight": "kv_proj.weight",
    "norm.weight": "kv_norm.weight",
    "wo_a.weight": "o_a_proj.weight",
    "wo_b.weight": "o_b_proj.weight",
}
_COMPRESSOR = {
    "wkv.weight": "kv_proj.weight",
    "wgate.weight": "gate_proj.weight",
    "ape": "position_bias",
    "norm.weight": "kv_norm.weight",
}
_INDEXER = {"wq_b.weight": "q_b_proj.weight", "weights_proj.weight": "scorer.weights_proj.weight"}
_SHARED_EXPERT = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}


def _layer_names() -> dict[str, str]:
    """Every non-expert tensor name inside one layer, release → ours."""
    names = {
        "attn_norm.weight": "input_layernorm.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
        "ffn.gate.weight": "mlp.gate.weight",
        "ffn.gate.bias": "mlp.gate.e_score_correction_bias",
        "ffn.gate.tid2eid": "mlp.gate.tid2eid",
    }
    for sub in ("attn", "ffn"):
        for part in ("fn", "base", "scale"):
            names[f"hc_{sub}_{part}"] = f"{sub}_hc.{part}"
    groups = (
        ("attn.", "self_attn.", _ATTENTION),
        ("attn.compressor.", "self_attn.compressor.", _COMPRESSOR),
        # The release nests the indexer's compressor in the indexer; we nest it the other way.
        ("attn.indexer.compressor.", "self_attn.compressor.indexer.", _COMPRESSOR),
        ("attn.indexer.", "self_attn.compressor.indexer.", _INDEXER),
    )
    for release, ours, leaves in groups:
        names.update({release + k: ours + v for k, v in leaves.items()})
    for w, proj in _SHARED_EXPERT.items():
        names[f"ffn.shared_experts.{w}.weight"] = f"mlp.shared_experts.{proj}.weight"
    return names


_RELEASE_TO_OURS = _layer_names()
_OURS_TO_RELEASE = {v: k for k, v in _RELEASE_TO_OURS.items()}
_EXPERT = re.compile(r"^ffn\.experts\.(\d+)\.w([123])\.weight$")
_EXPERT_PART: dict[str, ExpertPart] = {"1": "gate", "3": "up", "2": "down"}


class V4Layout:
    """A V4 key layout: the shared per-layer names plus the layout's names around them."""

    layer_prefix: str
    """How the layout names layer N: `{layer_prefix}N.`."""
    outer: dict[str, str]
    """Tensors outside the layers, hub name → our name."""

    def __init__(self, config: V4Config) -> None:
        self.config = config
        self._outer_hub = {ours: hub for hub, ours in self.outer.items()}

    def slot(self, hub_key: str) -> Slot | None:
        """Where `hub_key` goes; None for the MTP layers and a tied head."""
        if hub_key.startswith("mtp."):
            return None
        if hub_key in self.outer:
            key = self.outer[hub_key]
            if key == "lm_head.weight" and self.config.tie_word_embeddings:
                return None
            return Slot(key)
        index, _, rest = hub_key.removeprefix(self.layer_prefix).partition(".")
        if not hub_key.startswith(self.layer_prefix) or not index.isdigit() or not rest:
            return Slot(hub_key)  # not ours: reported as unexpected by the loader
        prefix = f"model.layers.{index}."
        expert = _EXPERT.match(rest)
        if expert:
            row, part = int(expert.group(1)), _EXPERT_PART[expert.group(2)]
            if part == "down":
                return Slot(prefix + "mlp.experts.down_proj", row)
            return Slot(prefix + "mlp.experts.gate_up_proj", row, part)
        return Slot(prefix + _RELEASE_TO_OURS.get(rest, rest))

    def hub_items(self, state: Mapping[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
        """Our state dict → (hub key, tensor view) pairs; expert rows are views."""
        for key, value in state.items():
            if key == "lm_head.weight" and self.config.tie_word_embeddings:
                continue
            if key in self._outer_hub:
                yield self._outer_hub[key], value
                continue
            index, rest = key[len("model.layers.") :].split(".", 1)
            prefix = f"{self.layer_prefix}{index}.ffn.experts."
            if rest == "mlp.experts.gate_up_proj":
                for i, rows in enumerate(value):
                    gate, up = rows.chunk(2, dim=0)
                    yield f"{prefix}{i}.w1.weight", gate
                    yield f"{prefix}{i}.w3.weight", up
            elif rest == "mlp.experts.down_proj":
                for i, rows in enumerate(value):
                    yield f"{prefix}{i}.w2.weight", rows
            else:
                yield f"{self.layer_prefix}{index}.{_OURS_TO_RELEASE[rest]}", value


class ReleaseLayout(V4Layout):
    """DeepSeek's released V4 checkpoints (`embed.weight`, `layers.N.attn.wq_a.weight`, ...)."""

    layer_prefix = "layers."
    outer = {
        "embed.weight": "model.embed_tokens.weight",
        "norm.weight": "model.norm.weight",
        "hc_head_fn": "model.hc_head.hc_fn",
        "hc_head_base": "model.hc_head.hc_base",
        "hc_head_scale": "model.hc_head.hc_scale",
        "head.weight": "lm_head.weight",
    }


class TransformersLayout(V4Layout):
    """What transformers' `DeepseekV4ForCausalLM.save_pretrained` writes (and loads)."""

    layer_prefix = "model.layers."
    outer = {
        "model.embed_tokens.weight": "model.embed_tokens.weight",
        "model.norm.weight": "model.norm.weight",
        "model.hc_head.hc_fn": "model.hc_head.hc_fn",
        "model.hc_head.hc_base": "model.hc_head.hc_base",
        "model.hc_head.hc_scale": "model.hc_head.hc_scale",
        "head.weight": "lm_head.weight",
    }
