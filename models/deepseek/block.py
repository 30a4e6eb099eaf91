"""One pre-norm decoder block: attention (MHA/GQA or MLA) then a dense or MoE MLP."""

from __future__ import annotations

import torch
from torch import nn

from deepseek.attention import Attention
from deepseek.cache import LayerCache
from deepseek.config import ModelConfig
from deepseek.layers import MLP, RMSNorm
from deepseek.mla import MLA
from deepseek.moe import MoE


class Block(nn.Module):
    """HF names: self_attn, mlp, input_layernorm, post_attention_layernorm."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = MLA(config) if config.is_mla else Attention(config)
        self.mlp: nn.Module = (
            MoE(config)
            if config.is_moe_layer(layer_idx)
            else MLP(config.hidden_size, config.intermediate_size)
        )
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        cache: LayerCache | None = None,
        indexer_losses: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (batch, seq, hidden) at the positions of the rotation table `rope` → (x after
        the block, the MoE balance loss or None).

        With `indexer_losses` given, a V3.2 block appends its indexer's KL loss there (a
        list rather than a third result, so that callers of other generations keep theirs).
        """
        h = self.input_layernorm(x)
        if indexer_losses is None:
            x = x + self.self_attn(h, rope, cache)
        else:
            x = x + self.self_attn(h, rope, cache, indexer_losses=indexer_losses)
        h = self.post_attention_layernorm(x)
        if isinstance(self.mlp, MoE):
            out, aux = self.mlp(h)
        else:
            out, aux = self.mlp(h), None
        return x + out, aux
