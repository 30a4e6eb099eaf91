"""DeepSeek-V4: hyper-connected blocks, compressed sparse attention and hash/learned MoE.

Separate from the V2/V3 `ModelConfig` / `DeepseekForCausalLM` because its blocks differ
everywhere; its config and checkpoint keys follow transformers' `deepseek_v4`.
"""

from deepseek.v4.config import V4Config

__all__ = ["V4Config"]
