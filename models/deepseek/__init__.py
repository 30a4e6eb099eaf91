"""deepseek: the DeepSeek model family (LLM, MoE, V2, V3, V3.2, V4).

Plain single-device model code, Hugging Face checkpoint compatibility (FP8 included) and
the training and fine-tuning entry point that platform jobs run.
"""

from deepseek.architectures import build_model
from deepseek.cache import KVCache
from deepseek.config import ModelConfig, RopeConfig, load_config, preset
from deepseek.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    ConfigError,
    DataError,
    DeepseekError,
    SequenceTooLongError,
)
from deepseek.generate import generate
from deepseek.hf import from_pretrained, save_pretrained
from deepseek.model import CausalLM, CausalLMOutput, DeepseekForCausalLM
from deepseek.v4 import DeepseekV4ForCausalLM, V4Config

__all__ = [
    "CausalLM",
    "CausalLMOutput",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConfigError",
    "DataError",
    "DeepseekError",
    "DeepseekForCausalLM",
    "DeepseekV4ForCausalLM",
    "KVCache",
    "ModelConfig",
    "RopeConfig",
    "SequenceTooLongError",
    "V4Config",
    "build_model",
    "from_pretrained",
    "generate",
    "load_config",
    "preset",
    "save_pretrained",
]
