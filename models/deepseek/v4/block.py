"""One V4 decoder block: hyper-connected attention, then a hyper-connected MoE."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from deepseek.layers import RMSNorm
from deepseek.v4.attention import V4Attention
from deepseek.v4.config import V4Config
from deepseek.v4.hyper import HyperConnection
from deepseek.v4.moe import V4MoE

if TYPE_CHECKING:
    from deepseek.v4.cache import V4LayerCache


class V4Block(nn.Module):
    """HF names: self_attn, mlp, input_layernorm, post_attention_layernorm, attn_hc, ffn_hc."""

    def __init__(self, config: V4Config, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = V4Attention(config, layer_idx)
        self.mlp = V4MoE(config, layer_idx)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn_hc = HyperConnection(config)
        self.ffn_hc = HyperConnection(config)

    def forward(
        self,
        streams: torch.Tensor,
        input_ids: torch.Tensor,
        start: int,
        cache: V4LayerCache | None = None,
        indexer_losses: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """streams (batch, seq, hc_mult, hidden) of tokens input_ids (batch, seq) at positions
        start... → (streams after the block, the MoE balance loss or None); a CSA layer
        appends its indexer's loss to `indexer_losses` when given."""
        x, post, comb = self.attn_hc(streams)
        out = self.self_attn(self.input_layernorm(x), start, cache, indexer_losses)
        streams = HyperConnection.merge(streams, out, post, comb)
        x, post, comb = self.ffn_hc(streams)
        out, aux = self.mlp(self.post_attention_layernorm(x), input_ids)
        return HyperConnection.merge(streams, out, post, comb), aux
