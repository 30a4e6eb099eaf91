"""Multi-head Latent Attention (DeepSeek-V2 §2.1, V3 §2.1.1).

Keys and values come from a compressed latent c = RMSNorm(W_dkv·x) of width kv_lora_rank
plus one decoupled rotary key k_pe shared by all heads; queries are low-rank when
q_lora_rank is set. Two equivalent computations:

- naive (training, prefill): expand c through kv_b_proj into per-head keys and values and
  run ordinary attention;
- absorbed (cached decoding): fold kv_b_proj's key half into the query and its value half
  into the output, so attention runs directly against the cached latent and nothing per
  head is ever materialised for past tokens.

The cache holds only (c, k_pe) per token, side by side in one row.
"""

from __future__ import annotations

import torch
from torch import nn

from deepseek.attention import attend, causal_mask
from deepseek.cache import LayerCache
from deepseek.config import ModelConfig
from deepseek.layers import RMSNorm
from deepseek.rope import apply_rotary


class MLA(nn.Module):
    """MLA with HF parameter names (q_proj or q_a_proj/q_a_layernorm/q_b_proj, ...)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        assert config.kv_lora_rank is not None
        h, bias = config.hidden_size, config.attention_bias
        self.heads = config.num_attention_heads
        self.nope, self.rope_dim = config.qk_nope_head_dim, config.qk_rope_head_dim
        self.v_dim, self.kv_rank = config.v_head_dim, config.kv_lora_rank
        self.interleaved = config.rope.interleaved
        qk = self.nope + self.rope_dim
        if config.q_lora_rank is None:
            self.q_proj = nn.Linear(h, self.heads * qk, bias=False)
        else:
            self.q_a_proj = nn.Linear(h, config.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(config.q_lora_rank)
            self.q_b_proj = nn.Linear(config.q_lora_rank, self.heads * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(h, self.kv_rank + self.rope_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(self.kv_rank)
        self.kv_b_proj = nn.Linear(self.kv_rank, self.heads * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(self.heads * self.v_dim, h, bias=bias)
        self.scale = qk**-0.5 * config.rope.softmax_scale_factor

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: LayerCache | None = None,
        absorb: bool | None = None,
    ) -> torch.Tensor:
        """x (batch, seq, hidden) → (batch, seq, hidden).

        `absorb` picks the absorbed path; by default it is used exactly when decoding
        with a cache.
        """
        b, s, _ = x.shape
        if hasattr(self, "q_proj"):
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q_nope, q_pe = q.view(b, s, self.heads, -1).split([self.nope, self.rope_dim], dim=-1)
        q_pe = apply_rotary(q_pe, cos, sin, self.interleaved)
        latent, k_pe = self.kv_a_proj_with_mqa(x).split([self.kv_rank, self.rope_dim], dim=-1)
        k_pe = apply_rotary(k_pe[:, :, None], cos, sin, self.interleaved)[:, :, 0]
        # One (latent | k_pe) row per token, so the absorbed scores are a single matmul.
        kv = torch.cat((self.kv_a_layernorm(latent), k_pe), dim=-1)
        if cache is not None:
            (kv,) = cache.append(kv)
        use_absorbed = cache is not None if absorb is None else absorb
        out = (self._absorbed if use_absorbed else self._naive)(q_nope, q_pe, kv)
        return self.o_proj(out.flatten(2))

    def _naive(self, q_nope, q_pe, kv) -> torch.Tensor:
        b, t, _ = kv.shape
        latent, k_pe = kv.split([self.kv_rank, self.rope_dim], dim=-1)
        kv = self.kv_b_proj(latent).view(b, t, self.heads, -1)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        k = torch.cat((k_nope, k_pe[:, :, None].expand(-1, -1, self.heads, -1)), dim=-1)
        return attend(torch.cat((q_nope, q_pe), dim=-1), k, v, self.scale)

    def _absorbed(self, q_nope, q_pe, kv) -> torch.Tensor:
        # Plain bmm on (heads, tokens, ·) and (batch, queries·heads, ·) layouts: einsum's
        # permutes and reshapes would dominate a one-token step.
        b, s, h, _ = q_nope.shape
        c, t = self.kv_rank, kv.shape[1]
        w = self.kv_b_proj.weight.view(h, self.nope + self.v_dim, c)
        w_k, w_v = w.split([self.nope, self.v_dim], dim=1)
        q_latent = torch.bmm(q_nope.reshape(b * s, h, -1).transpose(0, 1), w_k)
        q = torch.cat(
            (q_latent.transpose(0, 1).reshape(b, s * h, c), q_pe.reshape(b, s * h, -1)), dim=-1
        )
        scores = torch.bmm(q, kv.transpose(1, 2)) * self.scale  # (b, s·h, t)
        if s > 1:
            mask = causal_mask(s, t, scores.device)[:, None].expand(s, h, t).reshape(s * h, t)
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.softmax(dim=-1, dtype=torch.float32).to(kv.dtype)
        out_latent = torch.bmm(probs, kv[..., :c]).view(b * s, h, c).transpose(0, 1)
        out = torch.bmm(out_latent, w_v.transpose(1, 2))  # (h, b·s, v_dim)
        return out.transpose(0, 1).reshape(b, s, h, -1)
