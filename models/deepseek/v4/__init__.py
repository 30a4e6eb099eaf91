"""DeepSeek-V4: hyper-connected blocks, compressed sparse attention and hash/learned MoE.

Separate from the V2/V3 `ModelConfig` / `DeepseekForCausalLM` because its blocks differ
everywhere; its config and checkpoint keys follow transformers' `deepseek_v4`.
"""

from deepseek.v4.config import V4Config
from deepseek.v4.layout import ReleaseLayout, TransformersLayout
from deepseek.v4.model import DeepseekV4ForCausalLM

__all__ = ["DeepseekV4ForCausalLM", "ReleaseLayout", "TransformersLayout", "V4Config"]
