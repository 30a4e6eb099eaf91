"""CSA's lightning indexer: picks, per query, the `index_topk` compressed entries to read.

It pools the same windows as the CSA compressor into small keys of its own
(`index_head_dim`), scores them with Σ_h w_h(x) · ReLU(q_h · k) over `index_n_heads` cheap
heads, and keeps the best `index_topk` entries that are already complete at the query.

The choice is a top-k, so the language-model loss sends no gradient into the indexer. It
is trained as V3.2's indexer is (deepseek.indexer.indexer_loss): a KL loss pulls its scores
towards the main attention over the entries it chose, and it reads detached inputs so that
loss trains only the indexer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepseek.v4.cache import PoolState
from deepseek.v4.config import CSA, V4Config
from deepseek.v4.pool import WindowPool, visible_entries
from deepseek.v4.rope import V4Rotary, rotate_tail


class IndexScorer(nn.Module):
    """Per-query head weights w_h(x) and the weighted ReLU score (transformers' `scorer`)."""

    def __init__(self, config: V4Config) -> None:
        super().__init__()
        self.key_scale = config.index_head_dim**-0.5
        self.head_scale = config.index_n_heads**-0.5
        self.weights_proj = nn.Linear(config.hidden_size, config.index_n_heads, bias=False)

    def forward(self, q: torch.Tensor, keys: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """q (batch, seq, heads, d), keys (batch, entries, d), x (batch, seq, hidden)
        → fp32 scores (batch, seq, entries)."""
        scores = F.relu(torch.matmul(q.float(), keys.float().transpose(1, 2)[:, None]))
        weights = self.weights_proj(x).float() * self.head_scale
        return (scores * self.key_scale * weights[..., None]).sum(dim=2)


class Indexer(WindowPool):
    """Lightning indexer of a CSA layer (transformers' `compressor.indexer`)."""

    def __init__(self, config: V4Config) -> None:
        super().__init__(
            config.hidden_size,
            config.index_head_dim,
            config.compress_rates[CSA],
            overlap=True,
            eps=config.rms_norm_eps,
        )
        self.heads = config.index_n_heads
        self.topk = config.index_topk
        self.q_b_proj = nn.Linear(config.q_lora_rank, self.heads * self.dim, bias=False)
        self.scorer = IndexScorer(config)

    def select(
        self,
        x: torch.Tensor,
        q_residual: torch.Tensor,
        positions: torch.Tensor,
        rotary: V4Rotary,
        state: PoolState | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Which compressed entries each query reads.

        Args:
            x: (batch, seq, hidden), the layer input.
            q_residual: (batch, seq, q_lora_rank), the normalised query latent.
            positions: (seq,) absolute positions of x.
            rotary: the compress rotary base.
            state: the indexer's cached pool (updated in place) or None.
        Returns:
            (bool (batch, seq, entries), True for the chosen entries, all complete at the
            query; their fp32 scores, with gradient to the indexer's weights).
        """
        keys = self(x, rotary, state)
        count = keys.shape[1]
        q = self.q_b_proj(q_residual).unflatten(-1, (self.heads, self.dim))
        q = rotate_tail(q, rotary(positions))
        visible = visible_entries(positions, count, self.rate)
        scores = self.scorer(q, keys, x)
        picks = scores.masked_fill(~visible, float("-inf")).topk(min(self.topk, count)).indices
        # Early queries see fewer than topk entries: picks beyond them are dropped.
        chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, picks, True)
        return chosen & visible, scores
