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
    return attend_heads_first(q, k, v, scale).transpose(1, 2)


def attend_heads_first(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """`attend` on (batch, heads, seq, d) tensors with as many kv heads as query heads."""
    seq, kv_len = q.shape[2], k.shape[2]
    if q.device.type == "cpu" and q.shape[-1] != v.shape[-1]:
        # SDPA's CPU flash kernel needs d_qk = d_v (MLA has d_qk = nope + rope > d_v), so
        # it would fall back to its math path: scale q and k separately, a boolean mask
        # applied by `where`, and a "safe" softmax that scans for fully masked rows. One
        # baddbmm does scale and mask at once (fwd+bwd, one thread: 2.0 → 1.4 ms at the
        # tiny V3 preset's shape, 17.6 → 15.5 ms at the small one's).
        b, h = q.shape[:2]
        bias = torch.full((seq, kv_len), float("-inf"), device=q.device, dtype=q.dtype)
        bias = bias.triu_(kv_len - seq + 1)
        scores = torch.baddbmm(
            bias,
            q.reshape(b * h, seq, -1),
            k.reshape(b * h, kv_len, -1).transpose(1, 2),
            alpha=scale,
        )
        probs = scores.softmax(dim=-1, dtype=torch.float32)
        probs = probs if probs.dtype == v.dtype else probs.to(v.dtype)
        return torch.bmm(probs, v.reshape(b * h, kv_len, -1)).view(b, h, seq, -1)
    if seq == kv_len:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    mask = causal_mask(seq, kv_len, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


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
        rope: torch.Tensor,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """x (batch, seq, hidden) at the positions `rope` (the rotation table) was made for
        → (batch, seq, hidden)."""
        b, s, _ = x.shape
        q = apply_rotary(self.q_proj(x).view(b, s, self.heads, -1), rope, self.interleaved)
        k = apply_rotary(self.k_proj(x).view(b, s, self.kv_heads, -1), rope, self.interleaved)
        v = self.v_proj(x).view(b, s, self.kv_heads, -1)
        if cache is not None:
            k, v = cache.append(k, v)
        return self.o_proj(attend(q, k, v, self.scale).flatten(2))
