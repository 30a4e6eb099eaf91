"""Key-value cache for incremental decoding.

Each layer stores what its attention needs from earlier positions: keys and values for
MHA/GQA, the normalised compressed latent and the rotated decoupled key for MLA (so an
MLA cache holds kv_lora_rank + qk_rope_head_dim numbers per token, not 2·heads·head_dim),
plus for V3.2 the lightning indexer's key (index_head_dim numbers), so that a decoding step's
top-k selection ranks every cached position.
Buffers are allocated once for `capacity` positions, so decoding copies only the new
token's entries.
"""

from __future__ import annotations

import torch


class LayerCache:
    """One layer's cached tensors, each of shape (batch, capacity, ...)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0
        self.buffers: list[torch.Tensor] = []

    def append(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Stores tensors of shape (batch, new, ...) after the cached ones.

        Returns:
            Views of every position so far, (batch, length + new, ...), in append order.
        Raises:
            ValueError: the cache would exceed its capacity.
        """
        new = tensors[0].shape[1]
        end = self.length + new
        if end > self.capacity:
            raise ValueError(f"cache capacity {self.capacity} exceeded by {end} positions")
        if not self.buffers:
            self.buffers = [t.new_empty(t.shape[0], self.capacity, *t.shape[2:]) for t in tensors]
        for buf, t in zip(self.buffers, tensors, strict=True):
            buf[:, self.length : end] = t
        self.length = end
        return tuple(buf[:, :end] for buf in self.buffers)


class KVCache:
    """The caches of every layer of one model, for sequences of up to `capacity` tokens."""

    def __init__(self, num_layers: int, capacity: int) -> None:
        self.layers = [LayerCache(capacity) for _ in range(num_layers)]

    @property
    def length(self) -> int:
        """Positions cached so far (the position of the next token)."""
        return self.layers[0].length

    def nbytes(self) -> int:
        """Bytes held by the cache buffers."""
        return sum(b.numel() * b.element_size() for layer in self.layers for b in layer.buffers)
