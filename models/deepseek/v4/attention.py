"""DeepSeek-V4 attention: one shared key-value head over a sliding window plus, per layer
type, compressed long-range entries.

- Queries go through a low-rank latent (`q_a_proj` → `q_a_norm` → `q_b_proj`) and a
  weightless per-head RMS norm; keys are one RMS-normalised head that is also the value.
- Every layer reads the last `sliding_window` positions; CSA layers add the entries their
  indexer picks, HCA layers every complete entry (compressor.py).
- A learned per-head sink logit joins each softmax, so a head can attend to nothing.
- Values carry the keys' rotation, so the output is rotated back by the query's angle.
- The heads' outputs are projected per group (`o_a_proj`), then mixed (`o_b_proj`).
- Training: a CSA layer given `indexer_losses` appends its indexer's KL loss (V3.2's
  sparse-stage objective, deepseek.indexer.indexer_loss) over the entries it chose.

Module and parameter names are transformers' `DeepseekV4Attention` names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepseek.indexer import indexer_loss
from deepseek.layers import RMSNorm
from deepseek.v4.cache import V4LayerCache
from deepseek.v4.compressor import CSACompressor, HCACompressor
from deepseek.v4.config import CSA, HCA, SLIDING, V4Config
from deepseek.v4.rope import V4Rotary, rotate_tail


class GroupedLinear(nn.Module):
    """Block-diagonal linear: group g of the input maps to rows g·out:(g+1)·out of weight."""

    def __init__(self, in_per_group: int, out_per_group: int, groups: int) -> None:
        super().__init__()
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(groups * out_per_group, in_per_group))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., groups, in_per_group) → (..., groups, out_per_group)."""
        weight = self.weight.unflatten(0, (self.groups, -1))
        return torch.einsum("...gi,goi->...go", x, weight)


def attend_with_sinks(
    q: torch.Tensor, kv: torch.Tensor, allowed: torch.Tensor, sinks: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of many query heads over one shared key=value head.

    Args:
        q: (batch, seq, heads, dim).
        kv: (batch, keys, dim), both keys and values.
        allowed: bool (batch or 1, seq, keys); every row allows at least one key.
        sinks: (heads,) logits of a virtual key whose value is zero.
        scale: softmax scale.
    Returns:
        (output (batch, seq, heads, dim), fp32 probabilities (batch, heads, seq, keys)).
    """
    b, s, h, _ = q.shape
    logits = torch.matmul(q.transpose(1, 2), kv.transpose(1, 2)[:, None]) * scale
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    sink = sinks.to(logits.dtype).view(1, h, 1, 1).expand(b, h, s, 1)
    probs = torch.cat((logits, sink), dim=-1).softmax(dim=-1, dtype=torch.float32)[..., :-1]
    return torch.matmul(probs.to(kv.dtype), kv[:, None]).transpose(1, 2), probs


def window_mask(queries: torch.Tensor, keys: torch.Tensor, window: int) -> torch.Tensor:
    """Bool (queries, keys) over absolute positions: the last `window` positions up to each
    query, itself included."""
    offset = queries[:, None] - keys[None, :]
    return (offset >= 0) & (offset < window)


class V4Attention(nn.Module):
    """One V4 attention layer of type `config.layer_types[layer_idx]`."""

    def __init__(self, config: V4Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_type = config.layer_types[layer_idx]
        self.heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.window = config.sliding_window
        self.eps = config.rms_norm_eps
        self.o_groups = config.o_groups
        self.scale = config.head_dim**-0.5
        d, rank = config.head_dim, config.q_lora_rank
        self.q_a_proj = nn.Linear(config.hidden_size, rank, bias=False)
        self.q_a_norm = RMSNorm(rank, config.rms_norm_eps)
        self.q_b_proj = nn.Linear(rank, self.heads * d, bias=False)
        self.kv_proj = nn.Linear(config.hidden_size, d, bias=False)
        self.kv_norm = RMSNorm(d, config.rms_norm_eps)
        self.o_a_proj = GroupedLinear(
            self.heads * d // self.o_groups, config.o_lora_rank, self.o_groups
        )
        self.o_b_proj = nn.Linear(
            self.o_groups * config.o_lora_rank, config.hidden_size, bias=False
        )
        self.sinks = nn.Parameter(torch.zeros(self.heads))
        self.compressor: CSACompressor | HCACompressor | None = None
        if self.layer_type == CSA:
            self.compressor = CSACompressor(config)
        elif self.layer_type == HCA:
            self.compressor = HCACompressor(config)
        # Compressed layers rotate their sliding branch with the compress base too.
        self.rotary = V4Rotary(config, "main" if self.layer_type == SLIDING else "compress")

    def forward(
        self,
        x: torch.Tensor,
        start: int = 0,
        cache: V4LayerCache | None = None,
        indexer_losses: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attention output for x.

        Args:
            x: (batch, seq, hidden).
            start: absolute position of x[:, 0]; the number of tokens `cache` has seen.
            cache: this layer's decoding state, updated in place; None for a whole sequence.
            indexer_losses: if given, a CSA layer appends its indexer's scalar KL loss
                (when some query has chosen entries).
        Returns:
            (batch, seq, hidden).
        Raises:
            ValueError: start ≠ 0 without a cache, start is not where the cache ends, or the
                cache's capacity is exceeded.
        """
        b, s, _ = x.shape
        if cache is None and start:
            raise ValueError(f"start={start} needs a cache: without one x must begin at 0")
        if cache is not None and start != cache.length:
            raise ValueError(f"start={start}, but the layer cache holds {cache.length} positions")
        if cache is not None and start + s > cache.capacity:
            raise ValueError(f"cache capacity {cache.capacity} exceeded by {start + s} positions")
        positions = torch.arange(start, start + s, device=x.device)
        table = self.rotary(positions)

        q_residual = self.q_a_norm(self.q_a_proj(x))
        q = self.q_b_proj(q_residual).unflatten(-1, (self.heads, self.head_dim))
        q = rotate_tail(F.rms_norm(q, (self.head_dim,), eps=self.eps), table)
        kv = rotate_tail(self.kv_norm(self.kv_proj(x))[:, :, None], table)[:, :, 0]

        keys = kv if cache is None else cache.extend_window(kv)
        in_window = keys.shape[1]
        key_positions = torch.arange(start + s - in_window, start + s, device=x.device)
        allowed = window_mask(positions, key_positions, self.window)[None]
        branch = None
        if self.compressor is not None:
            branch = self.compressor.branch(x, q_residual, positions, self.rotary, cache)
            keys = torch.cat((keys, branch.entries), dim=1)
            batch = max(allowed.shape[0], branch.readable.shape[0])
            allowed = torch.cat(
                (allowed.expand(batch, -1, -1), branch.readable.expand(batch, -1, -1)), dim=-1
            )

        out, probs = attend_with_sinks(q, keys, allowed, self.sinks, self.scale)
        if indexer_losses is not None and branch is not None and branch.index_scores is not None:
            loss = entry_kl(branch.index_scores, probs[..., in_window:].sum(dim=1), branch.readable)
            if loss is not None:
                indexer_losses.append(loss)
        out = rotate_tail(out, table, inverse=True)
        out = self.o_a_proj(out.flatten(2).unflatten(-1, (self.o_groups, -1))).flatten(2)
        return self.o_b_proj(out)


def entry_kl(
    scores: torch.Tensor, attention: torch.Tensor, chosen: torch.Tensor
) -> torch.Tensor | None:
    """`indexer_loss` over the queries that read at least one compressed entry (earlier
    ones have no distribution to imitate); None if there are none.

    Args:
        scores: the indexer's scores (batch, seq, entries).
        attention: main attention on the entries, summed over heads (batch, seq, entries).
        chosen: bool (batch, seq, entries), the entries the queries read.
    """
    rows = chosen.any(dim=-1)
    if not rows.any():
        return None
    return indexer_loss(scores[rows][None], attention[rows][None], chosen[rows][None])
