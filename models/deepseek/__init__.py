"""deepseek: the DeepSeek model family (LLM, MoE, V2, V3).

Plain single-device model code, Hugging Face checkpoint compatibility and the training
entry point that platform jobs run.
"""

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
from deepseek.model import CausalLMOutput, DeepseekForCausalLM

__all__ = [
    "CausalLMOutput",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConfigError",
    "DataError",
    "DeepseekError",
    "DeepseekForCausalLM",
    "KVCache",
    "ModelConfig",
    "RopeConfig",
    "SequenceTooLongError",
    "from_pretrained",
    "generate",
    "load_config",
    "preset",
    "save_pretrained",
]
