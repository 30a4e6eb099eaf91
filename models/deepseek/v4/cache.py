"""Decoding state of V4 attention, so that a token-by-token forward equals a full one.

Per layer the cache holds
- the last `sliding_window - 1` rotated keys (= values) of the sliding branch: with the new
  token they make the `sliding_window` keys a query may see;
- for each compressor (the layer's own, and the CSA indexer's): every compressed entry so
  far, the projected tokens of the window that is still open (fewer than `rate`), and for
  CSA's overlapping windows the previous closed window's first half, which the next entry
  pools too.

`V4Cache.length` counts the positions cached; the model calls `advance(n)` once after each
forward of n tokens through all layers (the layers read positions from `start` and keep
their own state).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deepseek.cache import LayerCache
from deepseek.v4.config import CSA, SLIDING, V4Config


@dataclass
class PoolState:
    """One compressor's state between forwards; tensors are (batch, tokens, ...)."""

    entries: LayerCache
    """Compressed entries emitted so far (one per `rate` tokens)."""
    pending_kv: torch.Tensor | None = None
    """Projected kv of the tokens after the last closed window."""
    pending_gate: torch.Tensor | None = None
    """Their gate logits (position bias not yet added)."""
    overlap_kv: torch.Tensor | None = None
    """CSA: the last closed window's first-half kv, (batch, rate, dim)."""
    overlap_gate: torch.Tensor | None = None
    """CSA: its gate logits, position bias included."""

    @property
    def count(self) -> int:
        """Compressed entries emitted so far."""
        return self.entries.length

    def closed_windows(
        self, kv: torch.Tensor, gate: torch.Tensor, rate: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepends the pending tokens to new ones, keeps the incomplete tail pending.

        Returns:
            (kv, gate) of the tokens that complete windows, a multiple of `rate` of them.
        """
        if self.pending_kv is not None:
            kv = torch.cat((self.pending_kv, kv), dim=1)
            gate = torch.cat((self.pending_gate, gate), dim=1)  # type: ignore[arg-type]
        usable = kv.shape[1] - kv.shape[1] % rate
        self.pending_kv, self.pending_gate = kv[:, usable:], gate[:, usable:]
        return kv[:, :usable], gate[:, :usable]


class V4LayerCache:
    """One attention layer's state: sliding-window keys and its compressors' pools."""

    def __init__(self, config: V4Config, layer_idx: int, capacity: int) -> None:
        layer_type = config.layer_types[layer_idx]
        self.capacity = capacity
        self.length = 0
        """Positions this layer has seen; the next forward must start there."""
        self.keep = config.sliding_window - 1
        self.window: torch.Tensor | None = None
        self.compressor: PoolState | None = None
        self.indexer: PoolState | None = None
        if layer_type != SLIDING:
            rate = config.compress_rates[layer_type]
            self.compressor = PoolState(LayerCache(capacity // rate))
            if layer_type == CSA:
                self.indexer = PoolState(LayerCache(capacity // rate))

    def extend_window(self, kv: torch.Tensor) -> torch.Tensor:
        """Keys of the sliding branch: the cached ones followed by kv (batch, new, dim).

        Returns:
            (batch, cached + new, dim); the last `sliding_window - 1` of them stay cached.
        """
        keys = kv if self.window is None else torch.cat((self.window, kv), dim=1)
        self.length += kv.shape[1]
        self.window = keys[:, keys.shape[1] - min(self.keep, keys.shape[1]) :]
        return keys


class V4Cache:
    """The caches of every layer of one V4 model, for sequences of up to `capacity` tokens."""

    def __init__(self, config: V4Config, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0
        """Positions cached so far (the position of the next token)."""
        self.layers = [V4LayerCache(config, i, capacity) for i in range(config.num_hidden_layers)]

    def advance(self, n: int) -> None:
        """Records that every layer has now seen n more tokens.

        Raises:
            ValueError: the cache would exceed its capacity.
        """
        if self.length + n > self.capacity:
            raise ValueError(
                f"cache capacity {self.capacity} exceeded by {self.length + n} positions"
            )
        self.length += n

    def nbytes(self) -> int:
        """Bytes held by the cached tensors."""
        total = 0
        for layer in self.layers:
            tensors = [layer.window]
            for pool in (layer.compressor, layer.indexer):
                if pool is not None:
                    tensors += [*pool.entries.buffers, pool.pending_kv, pool.pending_gate]
                    tensors += [pool.overlap_kv, pool.overlap_gate]
            total += sum(t.numel() * t.element_size() for t in tensors if t is not None)
        return total
