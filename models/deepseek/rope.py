"""Rotary position embeddings, plain or YaRN-extended, on interleaved pairs or halves.

DeepSeek V2/V3 rotate interleaved pairs (x0,x1),(x2,x3),... (the official code's
`view_as_complex`); DeepSeek LLM and DeepSeekMoE v1 use the LLaMA layout that rotates
x[:d/2] against x[d/2:]. YaRN follows transformers' `_compute_yarn_parameters` (itself
the DeepSeek-V2 code): frequencies blend interpolation and extrapolation over a linear
ramp between the beta_fast/beta_slow correction dimensions, cos/sin carry
`RopeConfig.attention_factor`, and attention multiplies its softmax scale by
`RopeConfig.softmax_scale_factor`.
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
    """Produces cos/sin tables for positions; `apply_rotary` rotates queries and keys."""

    def __init__(self, rope: RopeConfig, dim: int) -> None:
        super().__init__()
        self.interleaved = rope.interleaved
        self.attention_factor = rope.attention_factor
        self.register_buffer("inv_freq", rope_inv_freq(rope, dim), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin, fp32, of shape positions.shape + (dim/2,)."""
        angles = positions.float()[..., None] * self.inv_freq
        return angles.cos() * self.attention_factor, angles.sin() * self.attention_factor


def apply_rotary(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
) -> torch.Tensor:
    """Rotates x of shape (batch, seq, heads, dim) by the (seq, dim/2) cos/sin tables.

    The rotation is done in fp32 and the result cast back to x's dtype.
    """
    cos = cos[:, None, :]
    sin = sin[:, None, :]
    xf = x.float()
    if interleaved:
        pairs = xf.unflatten(-1, (-1, 2))
        a, b = pairs[..., 0], pairs[..., 1]
        out = torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)
    else:
        a, b = xf.chunk(2, dim=-1)
        out = torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)
    return out.to(x.dtype)
