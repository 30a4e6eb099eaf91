"""Rotary position embeddings, plain or YaRN-extended, on interleaved pairs or halves.

DeepSeek V2/V3 rotate interleaved pairs (x0,x1),(x2,x3),... (the official code's
`view_as_complex`); DeepSeek LLM and DeepSeekMoE v1 use the LLaMA layout that rotates
x[:d/2] against x[d/2:]. YaRN follows transformers' `_compute_yarn_parameters` (itself
the DeepSeek-V2 code): frequencies blend interpolation and extrapolation over a linear
ramp between the beta_fast/beta_slow correction dimensions, the rotation carries
`RopeConfig.attention_factor`, and attention multiplies its softmax scale by
`RopeConfig.softmax_scale_factor`.

A rotation table is complex: attention_factor·e^{i·position·inv_freq}, one entry per pair.
Interleaved pairs are then rotated by one complex multiply (as the official code does),
which is one kernel forward and one backward instead of the dozen of the real-valued
formula; the halves layout reads the table's cos and sin as its real and imaginary views.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from deepseek.config import RopeConfig


def rope_inv_freq(rope: RopeConfig, dim: int) -> torch.Tensor:
    """Inverse frequencies (dim/2 of them) for rotating `dim` dimensions."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float32) / dim
    inv_freq = 1.0 / rope.theta**exponents
    if rope.type != "yarn":
        return inv_freq

    def correction_dim(rotations: float) -> float:
        # The dimension whose wavelength fits `rotations` times into the original context.
        ctx = rope.original_max_position_embeddings
        return dim * math.log(ctx / (rotations * 2 * math.pi)) / (2 * math.log(rope.theta))

    low = max(math.floor(correction_dim(rope.beta_fast)), 0)
    high = min(math.ceil(correction_dim(rope.beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp (same guard as the reference)
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolate = 1 - ramp  # 1 for high-frequency dims kept as trained, 0 for interpolated ones
    return inv_freq / rope.factor * (1 - extrapolate) + inv_freq * extrapolate


class Rotary(nn.Module):
    """Rotation tables for positions; `apply_rotary` rotates queries and keys by them."""

    def __init__(self, rope: RopeConfig, dim: int) -> None:
        super().__init__()
        self.interleaved = rope.interleaved
        self.attention_factor = rope.attention_factor
        self.register_buffer("inv_freq", rope_inv_freq(rope, dim), persistent=False)
        # Table for positions 0..n-1, grown on demand: a decoding step then costs one slice
        # instead of six ops to recompute its angles.
        self._table: torch.Tensor | None = None

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """The complex64 rotation table of shape positions.shape + (dim/2,)."""
        angles = positions.float()[..., None] * self.inv_freq
        return torch.polar(torch.full_like(angles, self.attention_factor), angles)

    def table(self, start: int, end: int) -> torch.Tensor:
        """`forward(arange(start, end))`, sliced from a cached table (equal values)."""
        table = self._table
        if table is None or table.shape[0] < end or table.device != self.inv_freq.device:
            size = max(end, 2 * table.shape[0] if table is not None else 0, 64)
            # A plain tensor even inside inference_mode: training may use the table later.
            with torch.inference_mode(False), torch.no_grad():
                positions = torch.arange(size, device=self.inv_freq.device)
                table = self._table = self(positions)
        return table[start:end]


def _as_pairs(x: torch.Tensor) -> torch.Tensor | None:
    """x's interleaved (real, imag) pairs as a complex view; None where x's layout has none."""
    strides = x.stride()
    if strides[-1] != 1 or x.storage_offset() % 2 or any(st % 2 for st in strides[:-1]):
        return None
    return torch.view_as_complex(x.unflatten(-1, (-1, 2)))


def apply_rotary(x: torch.Tensor, rope: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotates x of shape (batch, seq, heads, dim) by the (seq, dim/2) complex table.

    The rotation is done in fp32 and the result cast back to x's dtype.
    """
    rope = rope[:, None]
    xf = x if x.dtype == torch.float32 else x.float()
    if interleaved:
        pairs = _as_pairs(xf)
        if pairs is None:
            pairs = _as_pairs(xf.contiguous())
        out = torch.view_as_real(pairs * rope).flatten(-2)
    else:
        cos, sin = rope.real, rope.imag
        a, b = xf.chunk(2, dim=-1)
        out = torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def apply_rotary_(x: torch.Tensor, rope: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """`apply_rotary` written into x, for a view into a fresh projection without autograd:
    decoding rotates the rope part of a query or key where it lies, and so needs no
    concatenation afterwards. Returns x."""
    pairs = _as_pairs(x) if interleaved and x.dtype == torch.float32 else None
    if pairs is None:
        return x.copy_(apply_rotary(x, rope, interleaved))
    pairs.mul_(rope[:, None])
    return x
