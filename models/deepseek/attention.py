"""Multi-head and grouped-query attention (DeepSeek LLM, DeepSeekMoE v1) and the shared
causal attention kernel that MLA's naive path uses too."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepseek.cache import LayerCache
from deepseek.config import ModelConfig
from deepseek.rope import apply_rotary


def causal_mask(queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """Boolean (queries, keys) mask, True where allowed; the queries are the last ones."""
    q = torch.arange(queries, device=device)[:, None] + (keys - queries)
    return torch.arange(keys, device=device)[None, :] <= q


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal softmax attention.

    Args:
        q: (batch, seq, heads, d_qk), the last `seq` positions of the keys' sequence.
        k: (batch, kv_len, kv_heads, d_qk); kv_heads divides heads (GQA shares each kv head
           by consecutive query heads, as HF's repeat_kv does).
        v: (batch, kv_len, kv_heads, d_v).
        scale: softmax scale.
    Returns:
        (batch, seq, heads, d_v).
    """
    rep = q.shape[2] // k.shape[2]
    if rep > 1:
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    seq, kv_len = q.shape[2], k.shape[2]
    if seq == kv_len:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    else:
        mask = causal_mask(seq, kv_len, q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2)


class Attention(nn.Module):
    """MHA/GQA with rotary queries and keys; caches full keys and values."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = d = config.head_dim
        self.interleaved = config.rope.interleaved
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.heads * d, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * d, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * d, bias=bias)
        self.o_proj = nn.Linear(self.heads * d, config.hidden_size, bias=bias)
        self.scale = d**-0.5 * config.rope.softmax_scale_factor

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """x (batch, seq, hidden) at the positions cos/sin were made for → (batch, seq, hidden)."""
        b, s, _ = x.shape
        q = apply_rotary(self.q_proj(x).view(b, s, self.heads, -1), cos, sin, self.interleaved)
        k = apply_rotary(self.k_proj(x).view(b, s, self.kv_heads, -1), cos, sin, self.interleaved)
        v = self.v_proj(x).view(b, s, self.kv_heads, -1)
        if cache is not None:
            k, v = cache.append(k, v)
        return self.o_proj(attend(q, k, v, self.scale).flatten(2))
