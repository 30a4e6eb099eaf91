"""Multi-head Latent Attention (DeepSeek-V2 §2.1, V3 §2.1.1).

Keys and values come from a compressed latent c = RMSNorm(W_dkv·x) of width kv_lora_rank
plus one decoupled rotary key k_pe shared by all heads; queries are low-rank when
q_lora_rank is set. Two equivalent computations:

- naive (training, long prompts): expand c through kv_b_proj into per-head keys and values
  and run ordinary attention;
- absorbed (cached decoding): fold kv_b_proj's key half into the query and its value half
  into the output, so attention runs directly against the cached latent and nothing per
  head is ever materialised for past tokens.

Per key, s queries cost h·(c·(n + v) + s·(n + r + v)) multiply-adds naive (expanding the key
once, then attending) and h·s·(2c + r) absorbed (attending over the wider latent): with a
cache, the absorbed path runs while s < c·(n + v)/(2c − n − v) (under 36 query tokens for
the 4k benchmark's shape, 170 for V3's), and a longer prompt is prefilled naive.

The cache holds only (c, k_pe) per token, side by side in one row (and, for V3.2, the
indexer's key).

DeepSeek-V3.2 (model_type deepseek_v32) adds a lightning indexer (`deepseek.indexer`): each
query then attends only to the `index_topk` causal keys the indexer scores highest, on every
path; with labels the layer also reports the indexer's KL loss, for which the naive path
keeps the attention probabilities it computes.

When the latent is small next to the heads (kv_lora_rank ≤ qk_nope_head_dim, as in the tiny
presets), the absorbed path's weight products W_qb·W_uk and W_uv·W_o hold no more numbers
than their factors; they are then computed once, kept until a weight changes, and a decoding
step runs two projections where it ran four matmuls plus their reshapes. For real shapes
(V3: rank 512 against 128-wide heads) the products would be 3.4x the factors' size and a
memory-bound decoding step slower, so the factors are used as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from deepseek.attention import attend_heads_first, causal_mask
from deepseek.cache import LayerCache
from deepseek.config import ModelConfig
from deepseek.indexer import Indexer, indexer_loss, select_keys
from deepseek.layers import RMSNorm
from deepseek.rope import apply_rotary, apply_rotary_


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
        self.low_rank_q = config.q_lora_rank is not None
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
        self.indexer = Indexer(config) if config.has_indexer else None
        self.scale = qk**-0.5 * config.rope.softmax_scale_factor
        q_in = config.q_lora_rank or h
        c, r, n, v, heads = self.kv_rank, self.rope_dim, self.nope, self.v_dim, self.heads
        factors = heads * (q_in * (n + r) + c * (n + v) + v * h)
        products = heads * (q_in * (c + r) + c * h)
        self.fuse_absorbed = products <= factors
        """Whether no-grad absorbed attention uses the cached weight products."""
        self.absorb_below = c * (n + v) / (2 * c - n - v) if 2 * c > n + v else math.inf
        """Query tokens below which cached attention costs less absorbed (module docstring)."""
        self._fused: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    def forward(
        self,
        x: torch.Tensor,
        rope: torch.Tensor,
        cache: LayerCache | None = None,
        absorb: bool | None = None,
        indexer_losses: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x (batch, seq, hidden) at the positions of the rotation table `rope`
        → (batch, seq, hidden).

        `absorb` picks the absorbed path; by default it is used with a cache for fewer
        than `absorb_below` query tokens. With `indexer_losses` given, a layer with an
        indexer appends its KL loss there (and runs the naive path, which has the
        probabilities the loss needs).
        """
        b, s, _ = x.shape
        grad = torch.is_grad_enabled()
        # One (latent | k_pe) row per token, so the absorbed scores are a single matmul.
        kv = self.kv_a_proj_with_mqa(x)
        latent, k_pe = kv.split([self.kv_rank, self.rope_dim], dim=-1)
        if grad:
            k_pe = apply_rotary(k_pe[:, :, None], rope, self.interleaved)[:, :, 0]
            kv = torch.cat((self.kv_a_layernorm(latent), k_pe), dim=-1)
        else:  # the same row, made inside the projection's output
            apply_rotary_(k_pe[:, :, None], rope, self.interleaved)
            latent.copy_(self.kv_a_layernorm(latent))
        q_in = self.q_a_layernorm(self.q_a_proj(x)) if self.low_rank_q else x
        # The indexer reads detached inputs: its loss must not train the rest of the model.
        rows = (kv,) if self.indexer is None else (kv, self.indexer.keys(x.detach(), rope))
        if cache is not None:
            rows = cache.append(*rows)
        kv = rows[0]
        want_loss = indexer_losses is not None and self.indexer is not None
        if absorb is None:
            absorb = cache is not None and s < self.absorb_below
        use_absorbed = absorb and not want_loss
        scores, allowed = (None, None)
        if self.indexer is not None and s == 1 and use_absorbed:
            kv = self._chosen_rows(x, q_in, rope, rows[1], kv)
        elif self.indexer is not None:
            scores, allowed = self._select(x.detach(), q_in.detach(), rope, rows[1], want_loss)
        if use_absorbed and self.fuse_absorbed and not grad:
            return self._absorbed_fused(q_in, rope, kv, allowed)
        q = F.linear(q_in, self.q_b_proj.weight if self.low_rank_q else self.q_proj.weight)
        q_nope, q_pe = q.view(b, s, self.heads, -1).split([self.nope, self.rope_dim], dim=-1)
        q_pe = apply_rotary(q_pe, rope, self.interleaved)
        if use_absorbed:
            out = self._absorbed(q_nope, q_pe, kv, allowed)
        elif allowed is None and not want_loss:
            out = self._naive(q_nope, q_pe, kv)
        else:
            if allowed is None:
                allowed = causal_mask(s, kv.shape[1], x.device)[None]
            out, probs = self._naive_masked(q_nope, q_pe, kv, allowed)
            if want_loss:
                assert indexer_losses is not None and scores is not None
                indexer_losses.append(indexer_loss(scores, probs, allowed))
        return self.o_proj(out)

    def _select(
        self,
        x: torch.Tensor,
        q_in: torch.Tensor,
        rope: torch.Tensor,
        index_keys: torch.Tensor,
        want_scores: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(index scores or None, keys attended to (batch, seq, keys) or None for every
        causal key). Scores are computed only when selection or the loss needs them."""
        indexer = self.indexer
        assert indexer is not None
        sparse = indexer.stage == "sparse" and index_keys.shape[1] > indexer.topk
        if not (sparse or want_scores):
            return None, None
        scores = indexer.scores(x, q_in, rope, index_keys)
        return scores, select_keys(scores, indexer.topk) if sparse else None

    def _chosen_rows(
        self,
        x: torch.Tensor,
        q_in: torch.Tensor,
        rope: torch.Tensor,
        index_keys: torch.Tensor,
        kv: torch.Tensor,
    ) -> torch.Tensor:
        """The cache rows (batch, index_topk, c + r) one decoding step attends to, in no
        particular order (attention does not care): this is where DSA saves its work at a
        long context, and where a mask over every key would cost as much as dense attention."""
        indexer = self.indexer
        assert indexer is not None
        if indexer.stage == "dense" or kv.shape[1] <= indexer.topk:
            return kv
        scores = indexer.scores(x, q_in, rope, index_keys)[:, 0]
        chosen = scores.topk(indexer.topk, dim=-1, sorted=False).indices
        # index_select copies whole rows: 6x faster than gather's per-element index.
        return torch.stack(
            [rows.index_select(0, keys) for rows, keys in zip(kv, chosen, strict=True)]
        )

    def _heads_first(self, q_nope, q_pe, kv) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head q, k, v (batch, heads, ·, ·) expanded from the latent rows kv."""
        b, t, _ = kv.shape
        h = self.heads
        latent, k_pe = kv.split([self.kv_rank, self.rope_dim], dim=-1)
        kv = self.kv_b_proj(latent).view(b, t, h, -1)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        # The concatenations write heads-first layouts directly, with no transposing copy.
        q = torch.cat((q_nope.transpose(1, 2), q_pe.transpose(1, 2)), dim=-1)
        k = torch.cat((k_nope.transpose(1, 2), k_pe[:, None].expand(b, h, t, -1)), dim=-1)
        return q, k, v.transpose(1, 2)

    def _naive(self, q_nope, q_pe, kv) -> torch.Tensor:
        b, s = q_nope.shape[:2]
        out = attend_heads_first(*self._heads_first(q_nope, q_pe, kv), self.scale)
        return out.transpose(1, 2).reshape(b, s, self.heads * self.v_dim)

    def _naive_masked(self, q_nope, q_pe, kv, allowed) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention over the `allowed` (batch or 1, seq, keys) keys → (output, the
        probabilities summed over heads (batch, seq, keys))."""
        b, s = q_nope.shape[:2]
        q, k, v = self._heads_first(q_nope, q_pe, kv)
        # In place: at a 4k prompt each (heads, seq, keys) pass is a GiB; the matmul's
        # backward needs only its inputs, so autograd allows it.
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(self.scale)
        bias = torch.zeros(allowed.shape, device=q.device, dtype=scores.dtype)
        scores = scores.add_(bias.masked_fill_(~allowed, float("-inf"))[:, None])
        probs = scores.softmax(dim=-1, dtype=torch.float32)
        out = torch.matmul(probs.to(v.dtype), v)
        return out.transpose(1, 2).reshape(b, s, self.heads * self.v_dim), probs.sum(dim=1)

    def _latent_attention(self, q, kv, scale: float, allowed=None) -> torch.Tensor:
        """Attention of q (b, s·h, c + r), rows ordered (query, head), against the cached
        (latent | k_pe) rows kv (b, t, c + r) → (b, s·h, c), over the `allowed` (b, s, t)
        keys (None: every causal key)."""
        h, t = self.heads, kv.shape[1]
        s = q.shape[1] // h
        if s == 1 and allowed is None:  # a decoding step sees every cached row it is given
            scores = torch.bmm(q, kv.transpose(1, 2))
            if scale != 1.0:
                scores = scores.mul_(scale)
        else:
            if allowed is None:
                allowed = causal_mask(s, t, q.device)[None]
            n = allowed.shape[0]
            allowed = allowed[:, :, None].expand(n, s, h, t).reshape(n, s * h, t)
            bias = torch.zeros(n, s * h, t, device=q.device, dtype=q.dtype)
            bias = bias.masked_fill_(~allowed, float("-inf"))
            scores = torch.baddbmm(bias, q, kv.transpose(1, 2), alpha=scale)
        probs = scores.softmax(dim=-1, dtype=torch.float32)
        probs = probs if probs.dtype == kv.dtype else probs.to(kv.dtype)
        return torch.bmm(probs, kv[..., : self.kv_rank])

    def _absorbed(self, q_nope, q_pe, kv, allowed) -> torch.Tensor:
        # Plain bmm on (heads, tokens, ·) and (batch, queries·heads, ·) layouts: einsum's
        # permutes and reshapes would dominate a one-token step.
        b, s, h, _ = q_nope.shape
        c = self.kv_rank
        w = self.kv_b_proj.weight.view(h, self.nope + self.v_dim, c)
        w_k, w_v = w.split([self.nope, self.v_dim], dim=1)
        q_latent = torch.bmm(q_nope.reshape(b * s, h, -1).transpose(0, 1), w_k)
        q = torch.cat(
            (q_latent.transpose(0, 1).reshape(b, s * h, c), q_pe.reshape(b, s * h, -1)), dim=-1
        )
        out_latent = self._latent_attention(q, kv, self.scale, allowed).view(b * s, h, c)
        out = torch.bmm(out_latent.transpose(0, 1), w_v.transpose(1, 2))  # (h, b·s, v_dim)
        return out.transpose(0, 1).reshape(b, s, h * self.v_dim)

    def _absorbed_fused(self, q_in, rope, kv, allowed) -> torch.Tensor:
        b, s, _ = q_in.shape
        h, c = self.heads, self.kv_rank
        w_q, w_o = self._fused_weights()
        q = F.linear(q_in, w_q).view(b, s, h, -1)  # (latent | rope) per head
        apply_rotary_(q[..., c:], rope, self.interleaved)
        q = q.view(b, s * h, -1)
        out_latent = self._latent_attention(q, kv, 1.0, allowed)  # softmax scale is in w_q
        return F.linear(out_latent.view(b, s, h * c), w_o, self.o_proj.bias)

    def _fused_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale·[W_uk^T·W_q_nope ; W_q_pe] per head, W_o·W_uv per head), cached.

        Shapes (heads·(kv_rank + rope), q_in) and (hidden, heads·kv_rank). Recomputed when
        any of the three weights is replaced, moved or updated in place (its version).
        """
        sources = (
            self.q_b_proj.weight if self.low_rank_q else self.q_proj.weight,
            self.kv_b_proj.weight,
            self.o_proj.weight,
        )
        key = tuple((w, w.data_ptr(), w._version) for w in sources)
        cached = self._fused
        if cached is not None and all(
            a is x and pa == px and va == vx
            for (a, pa, va), (x, px, vx) in zip(cached[0], key, strict=True)
        ):
            return cached[1], cached[2]
        w_q, w_kv, w_o = sources
        h, n, c = self.heads, self.nope, self.kv_rank
        # Plain tensors even inside inference_mode, so that they can be copied and compared.
        with torch.inference_mode(False), torch.no_grad():
            wq = w_q.float().view(h, n + self.rope_dim, -1)
            w_k, w_v = w_kv.float().view(h, n + self.v_dim, c).split([n, self.v_dim], dim=1)
            q_latent = torch.einsum("hnc,hnq->hcq", w_k, wq[:, :n])
            fused_q = (torch.cat((q_latent, wq[:, n:]), dim=1) * self.scale).flatten(0, 1)
            wo = w_o.float().view(w_o.shape[0], h, self.v_dim)
            fused_o = torch.einsum("ohv,hvc->ohc", wo, w_v).flatten(1)
        self._fused = (key, fused_q.to(w_q.dtype), fused_o.to(w_o.dtype))
        return self._fused[1], self._fused[2]
