"""Token-window pooling: V4's compressors turn every `rate` tokens into one kv entry.

Each token is projected to a kv vector and to gate logits of the same width; an entry is
the softmax(gate + learned per-slot bias)-weighted sum of its window's kv, RMS-normalised
and rotated at the window's first position. With `overlap` (CSA and its indexer) each token
projects to two halves: the second half pools into its own window's entry, the first half
into the next window's, so entries cover 2·rate tokens with stride rate.
"""

from __future__ import annotations

import torch
from torch import nn

from deepseek.layers import RMSNorm
from deepseek.v4.cache import PoolState
from deepseek.v4.rope import V4Rotary, rotate_tail


def visible_entries(positions: torch.Tensor, count: int, rate: int) -> torch.Tensor:
    """Bool (queries, count): True where every token of the entry is at or before the query.

    Entry w covers tokens [w·rate, (w+1)·rate), so a query at p may read it iff
    (w+1)·rate ≤ p+1.
    """
    entries = torch.arange(count, device=positions.device)
    return entries[None, :] < torch.div(positions[:, None] + 1, rate, rounding_mode="floor")


class WindowPool(nn.Module):
    """Pools windows of `rate` tokens into RMS-normalised, rotated entries of size `dim`.

    Parameter names are transformers' (`kv_proj`, `gate_proj`, `position_bias`, `kv_norm`).
    """

    def __init__(self, hidden_size: int, dim: int, rate: int, overlap: bool, eps: float) -> None:
        super().__init__()
        self.dim, self.rate, self.overlap = dim, rate, overlap
        width = 2 * dim if overlap else dim
        self.kv_proj = nn.Linear(hidden_size, width, bias=False)
        self.gate_proj = nn.Linear(hidden_size, width, bias=False)
        self.position_bias = nn.Parameter(torch.zeros(rate, width))
        self.kv_norm = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, rotary: V4Rotary, state: PoolState | None) -> torch.Tensor:
        """Entries of every window closed so far.

        Args:
            x: (batch, seq, hidden), the tokens after those `state` has seen (from 0 when
               `state` is None; a trailing incomplete window is then dropped).
            rotary: the compress rotary base.
            state: the cached pool, updated in place; None for a whole sequence.
        Returns:
            (batch, entries, dim): the cached entries followed by the new ones.
        """
        kv, gate = self.kv_proj(x), self.gate_proj(x)
        first = 0
        if state is None:
            usable = kv.shape[1] - kv.shape[1] % self.rate
            kv, gate = kv[:, :usable], gate[:, :usable]
        else:
            first = state.count * self.rate
            kv, gate = state.closed_windows(kv, gate, self.rate)
        batch, windows = kv.shape[0], kv.shape[1] // self.rate
        if windows == 0:
            new = kv.new_zeros(batch, 0, self.dim)
        else:
            kv = kv.unflatten(1, (windows, self.rate))
            gate = gate.unflatten(1, (windows, self.rate)) + self.position_bias
            if self.overlap:
                kv, gate = self._overlapping(kv, gate, state)
            # fp32 softmax: bf16 gate logits that differ slightly would tie.
            weights = gate.softmax(dim=2, dtype=torch.float32).to(kv.dtype)
            pooled = self.kv_norm((kv * weights).sum(dim=2))
            starts = first + self.rate * torch.arange(windows, device=x.device)
            new = rotate_tail(pooled[:, :, None], rotary(starts))[:, :, 0]
        return new if state is None else state.entries.append(new)[0]

    def _overlapping(
        self, kv: torch.Tensor, gate: torch.Tensor, state: PoolState | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, windows, rate, 2·dim) halves → (batch, windows, 2·rate, dim) slots: the
        previous window's first halves, then this window's second halves."""
        d = self.dim
        if state is not None and state.overlap_kv is not None:
            head_kv, head_gate = state.overlap_kv[:, None], state.overlap_gate[:, None]  # type: ignore[index]
        else:
            # No previous window: zero kv with -inf gates takes no softmax weight.
            head_kv = kv.new_zeros(kv.shape[0], 1, self.rate, d)
            head_gate = torch.full_like(head_kv, float("-inf"), dtype=gate.dtype)
        if state is not None:
            state.overlap_kv, state.overlap_gate = kv[:, -1, :, :d], gate[:, -1, :, :d]
        previous_kv = torch.cat((head_kv, kv[:, :-1, :, :d]), dim=1)
        previous_gate = torch.cat((head_gate, gate[:, :-1, :, :d]), dim=1)
        return (
            torch.cat((previous_kv, kv[..., d:]), dim=2),
            torch.cat((previous_gate, gate[..., d:]), dim=2),
        )
