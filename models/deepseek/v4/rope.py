"""V4 rotary embeddings: two bases, rotating only the trailing part of each head.

V4 rotates the last `qk_rope_head_dim` channels of a head ([nope | rope] layout) as
interleaved pairs. Sliding-window layers use the "main" settings (`rope_theta`, never
scaled); layers with a compressor use the "compress" settings (`compress_rope_theta`, YaRN
when configured) for their sliding branch, their compressed entries and the indexer alike,
so every query-key product in such a layer sees one consistent frequency set.

Because keys double as values, attention outputs carry the keys' rotation; rotating the
output back by the query's angle (`inverse=True`) leaves only the relative offset.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from deepseek.config import RopeConfig
from deepseek.rope import apply_rotary, rope_inv_freq

if TYPE_CHECKING:
    from deepseek.v4.config import V4Config

RopeKind = Literal["main", "compress"]


def rope_settings(config: V4Config, kind: RopeKind) -> tuple[RopeConfig, float]:
    """The frequency settings and cos/sin multiplier of one of V4's two rotary bases.

    Args:
        config: the model config; `rope_parameters[kind]` holds transformers' nested dict.
        kind: "main" (sliding-window layers) or "compress" (CSA/HCA layers).
    Returns:
        (frequency settings, attention factor that multiplies cos and sin).
    Raises:
        ConfigError: an unknown rope type or a bad YaRN factor.
    """
    params: dict[str, Any] = dict(config.rope_parameters[kind])
    rope_type = params.get("rope_type", params.get("type", "default"))
    rope = RopeConfig(theta=float(params["rope_theta"]), type=rope_type)
    if rope_type == "yarn":
        original = params["original_max_position_embeddings"]
        factor = params.get("factor") or config.max_position_embeddings / original
        rope = RopeConfig(
            theta=rope.theta,
            type="yarn",
            factor=float(factor),
            original_max_position_embeddings=original,
            # transformers treats an explicit 0/None like an absent key here.
            beta_fast=params.get("beta_fast") or 32.0,
            beta_slow=params.get("beta_slow") or 1.0,
            mscale=params.get("mscale") or 0.0,
            mscale_all_dim=params.get("mscale_all_dim") or 0.0,
        )
    factor = params.get("attention_factor")
    return rope, float(rope.attention_factor if factor is None else factor)


class V4Rotary(nn.Module):
    """Rotation tables of one rotary base for arbitrary absolute positions."""

    def __init__(self, config: V4Config, kind: RopeKind) -> None:
        super().__init__()
        rope, self.attention_factor = rope_settings(config, kind)
        self.kind = kind
        self.register_buffer(
            "inv_freq", rope_inv_freq(rope, config.qk_rope_head_dim), persistent=False
        )

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """Complex64 table of shape (len(positions), qk_rope_head_dim / 2)."""
        angles = positions.float()[:, None] * self.inv_freq
        return torch.polar(torch.full_like(angles, self.attention_factor), angles)


def rotate_tail(x: torch.Tensor, table: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """Rotates the trailing 2·table.shape[-1] channels of x, leaving the leading ones.

    Args:
        x: (batch, seq, heads, dim).
        table: (seq, rope_dim / 2) from `V4Rotary`.
        inverse: rotate by the negative angles (undo a rotation at the same positions).
    Returns:
        A tensor like x.
    """
    rope_dim = 2 * table.shape[-1]
    if inverse:
        table = table.conj()
    rotated = apply_rotary(x[..., -rope_dim:], table, interleaved=True)
    return torch.cat((x[..., :-rope_dim], rotated), dim=-1)
