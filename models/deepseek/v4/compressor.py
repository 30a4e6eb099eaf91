"""The long-range branches of V4 attention: compressed entries and which ones a query reads.

HCA (heavily compressed attention) pools every `compress_rates[HCA]` tokens into one entry
and lets each query read every entry that is complete at it. CSA (compressed sparse
attention) pools overlapping windows every `compress_rates[CSA]` tokens and lets each query
read only the `index_topk` entries its lightning indexer picks. Both return their entries
with a mask, and the attention appends them to its sliding-window keys.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from deepseek.v4.cache import V4LayerCache
from deepseek.v4.config import CSA, HCA, V4Config
from deepseek.v4.indexer import Indexer
from deepseek.v4.pool import WindowPool, visible_entries
from deepseek.v4.rope import V4Rotary


class Branch(NamedTuple):
    """What a compressor adds to its layer's attention."""

    entries: torch.Tensor
    """(batch, entries, head_dim) rotated compressed keys (= values)."""
    readable: torch.Tensor
    """Bool (batch or 1, seq, entries): the entries each query reads."""
    index_scores: torch.Tensor | None = None
    """CSA: the indexer's fp32 scores (batch, seq, entries), for its KL loss."""


class HCACompressor(WindowPool):
    """Non-overlapping windows of `compress_rates[HCA]` tokens, read densely."""

    def __init__(self, config: V4Config) -> None:
        rate = config.compress_rates[HCA]
        super().__init__(
            config.hidden_size, config.head_dim, rate, overlap=False, eps=config.rms_norm_eps
        )

    def branch(
        self,
        x: torch.Tensor,
        q_residual: torch.Tensor,
        positions: torch.Tensor,
        rotary: V4Rotary,
        cache: V4LayerCache | None,
    ) -> Branch:
        """Every complete entry; arguments as in `CSACompressor.branch`."""
        entries = self(x, rotary, cache.compressor if cache is not None else None)
        return Branch(entries, visible_entries(positions, entries.shape[1], self.rate)[None])


class CSACompressor(WindowPool):
    """Overlapping windows of 2·`compress_rates[CSA]` tokens, read through the indexer."""

    def __init__(self, config: V4Config) -> None:
        rate = config.compress_rates[CSA]
        super().__init__(
            config.hidden_size, config.head_dim, rate, overlap=True, eps=config.rms_norm_eps
        )
        self.indexer = Indexer(config)

    def branch(
        self,
        x: torch.Tensor,
        q_residual: torch.Tensor,
        positions: torch.Tensor,
        rotary: V4Rotary,
        cache: V4LayerCache | None,
    ) -> Branch:
        """The compressed keys a query may read.

        Args:
            x: (batch, seq, hidden), the layer input.
            q_residual: (batch, seq, q_lora_rank), the normalised query latent.
            positions: (seq,) absolute positions of x.
            rotary: the compress rotary base.
            cache: the layer's cache (its pools are updated in place) or None.
        Returns:
            The entries, the mask of those the indexer chose and its scores.
        """
        entries = self(x, rotary, cache.compressor if cache is not None else None)
        indexer_state = cache.indexer if cache is not None else None
        # Detached: only the indexer's own KL loss trains it, and that loss trains only it.
        chosen, scores = self.indexer.select(
            x.detach(), q_residual.detach(), positions, rotary, indexer_state
        )
        return Branch(entries, chosen, scores)
