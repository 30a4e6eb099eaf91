"""Manifold-constrained hyper-connections (mHC): the residual as `hc_mult` parallel streams.

Each block keeps x as (batch, seq, hc_mult, hidden). Before attention (and before the MoE)
a `HyperConnection` reads all streams and yields three mixes: `pre` collapses the streams
into the block's single input, `post` spreads the block's output back over the streams,
and `comb` (hc_mult × hc_mult) mixes the old streams into the new ones. `comb` is pushed
towards a doubly-stochastic matrix by Sinkhorn-Knopp, so the residual path neither grows
nor shrinks the streams' total. `HyperHead` collapses the streams once more before the
final norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepseek.v4.config import V4Config


def sinkhorn(matrix: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """Alternately normalises columns and rows of positive (..., n, n) matrices.

    Starts and ends with the columns (dim -2), `iters` column passes in all, as DeepSeek's
    reference does; `eps` keeps each division finite.
    """
    matrix = matrix / (matrix.sum(dim=-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        matrix = matrix / (matrix.sum(dim=-1, keepdim=True) + eps)
        matrix = matrix / (matrix.sum(dim=-2, keepdim=True) + eps)
    return matrix


def _stream_features(streams: torch.Tensor, fn: torch.Tensor, eps: float) -> torch.Tensor:
    """The streams of each position concatenated, RMS-normalised (no weight) and projected
    by `fn`, in fp32 whatever the model dtype: (batch, seq, streams, hidden) → (batch, seq, out)."""
    flat = streams.flatten(2).float()
    flat = F.rms_norm(flat, flat.shape[-1:], eps=eps)
    return F.linear(flat, fn.float())


def collapse(streams: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_i weights[..., i] · streams[..., i, :] in the streams' dtype."""
    return (weights.unsqueeze(-1) * streams).sum(dim=2).to(streams.dtype)


class HyperConnection(nn.Module):
    """The mixes around one sub-block; HF names `attn_hc` / `ffn_hc` (`fn`, `base`, `scale`)."""

    def __init__(self, config: V4Config) -> None:
        super().__init__()
        n = config.hc_mult
        self.streams = n
        self.iters, self.hc_eps, self.norm_eps = (
            config.hc_sinkhorn_iters,
            config.hc_eps,
            config.rms_norm_eps,
        )
        # One projection gives pre (n), post (n) and comb (n·n) logits.
        self.fn = nn.Parameter(torch.empty((2 + n) * n, n * config.hidden_size))
        self.base = nn.Parameter(torch.empty((2 + n) * n))
        self.scale = nn.Parameter(torch.empty(3))
        """Temperatures of the pre, post and comb logits."""

    def forward(self, streams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """streams (batch, seq, n, hidden) → (sub-block input (batch, seq, hidden),
        post (batch, seq, n), comb (batch, seq, n, n)); post and comb in fp32."""
        n = self.streams
        mixes = _stream_features(streams, self.fn, self.norm_eps)
        pre_w, post_w, comb_w = mixes.split([n, n, n * n], dim=-1)
        pre_b, post_b, comb_b = self.base.float().split([n, n, n * n])
        pre_s, post_s, comb_s = self.scale.float().unbind(0)
        pre = torch.sigmoid(pre_w * pre_s + pre_b) + self.hc_eps
        post = 2 * torch.sigmoid(post_w * post_s + post_b)
        comb_logits = comb_w.unflatten(-1, (n, n)) * comb_s + comb_b.view(n, n)
        comb = sinkhorn(comb_logits.softmax(dim=-1) + self.hc_eps, self.iters, self.hc_eps)
        return collapse(streams, pre), post, comb

    @staticmethod
    def merge(
        streams: torch.Tensor, out: torch.Tensor, post: torch.Tensor, comb: torch.Tensor
    ) -> torch.Tensor:
        """New streams: post_i · out + Σ_j comb[j, i] · streams_j (comb read transposed)."""
        dtype = streams.dtype
        mixed = torch.matmul(comb.to(dtype).transpose(-1, -2), streams)
        return post.to(dtype).unsqueeze(-1) * out.unsqueeze(-2) + mixed


class HyperHead(nn.Module):
    """The final collapse of the streams; HF names `hc_head.hc_fn` / `hc_base` / `hc_scale`."""

    def __init__(self, config: V4Config) -> None:
        super().__init__()
        n = config.hc_mult
        self.hc_eps, self.norm_eps = config.hc_eps, config.rms_norm_eps
        self.hc_fn = nn.Parameter(torch.empty(n, n * config.hidden_size))
        self.hc_base = nn.Parameter(torch.empty(n))
        self.hc_scale = nn.Parameter(torch.empty(1))

    def forward(self, streams: torch.Tensor) -> torch.Tensor:
        """streams (batch, seq, n, hidden) → (batch, seq, hidden)."""
        mixes = _stream_features(streams, self.hc_fn, self.norm_eps)
        pre = torch.sigmoid(mixes * self.hc_scale.float() + self.hc_base.float()) + self.hc_eps
        return collapse(streams, pre)
