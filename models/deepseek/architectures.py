"""What a config's `model_type` selects: the model class and the checkpoint key layout.

DeepSeek LLM, MoE, V2, V3 and V3.2 share `ModelConfig` and `DeepseekForCausalLM`; V4's
blocks differ everywhere, so it has its own (`deepseek.v4`). Everything that builds a model
from a config or reads a checkpoint goes through here, so both families load, train and
generate the same way.
"""

from __future__ import annotations

from collections.abc import Collection

from deepseek.config import ModelConfig
from deepseek.layout import HubLayout, Layout
from deepseek.model import CausalLM, DeepseekForCausalLM
from deepseek.v4 import DeepseekV4ForCausalLM, ReleaseLayout, TransformersLayout, V4Config

AnyConfig = ModelConfig | V4Config


def build_model(config: AnyConfig) -> CausalLM:
    """A randomly initialised model of `config`'s architecture."""
    if isinstance(config, V4Config):
        return DeepseekV4ForCausalLM(config)
    return DeepseekForCausalLM(config)


def checkpoint_layout(config: AnyConfig, hub_keys: Collection[str] = ()) -> Layout:
    """The key layout of a checkpoint holding `hub_keys` (for writing: no keys).

    V4 checkpoints come in DeepSeek's release names (`embed.weight`, `layers.N.…`) or in
    the names transformers' save_pretrained writes, which is what we write.
    """
    if isinstance(config, V4Config):
        return ReleaseLayout(config) if "embed.weight" in hub_keys else TransformersLayout(config)
    return HubLayout(config)
