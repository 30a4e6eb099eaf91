"""DeepSeek Sparse Attention's lightning indexer (DeepSeek-V3.2 §2.1).

A few small heads score every earlier key for each query,
    I[s, t] = Σ_h w[s, h] · relu(q[s, h] · k[t]),
with one key per token shared by all heads, and each query then attends only to its
`index_topk` highest-scoring causal keys. The indexer's queries read MLA's query latent
(q_a_layernorm ∘ q_a_proj), its key and head weights read the block's normalised input; the
first qk_rope_head_dim dimensions of queries and keys are rotated as halves (not interleaved
pairs as in MLA), as transformers' DeepseekV32Indexer and the released inference code do.

Training (§2.1.1): the indexer learns to imitate the main attention by a KL loss, target the
main attention's distribution summed over heads and L1-normalised, detached; the indexer's
inputs are detached too, so the language-model loss never reaches it and its loss never
reaches the rest of the model. Two stages: a dense warm-up (attention over every causal key,
KL over them all) and sparse training (attention over the selected keys, KL over those only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepseek.attention import causal_mask
from deepseek.config import ModelConfig
from deepseek.rope import apply_rotary

DSA_STAGES = ("dense", "sparse")
# LayerNorm epsilon of the indexer's key (transformers and the released code use 1e-6).
KEY_NORM_EPS = 1e-6


class Indexer(nn.Module):
    """HF names (under `self_attn.indexer.`): wq_b, wk, k_norm, weights_proj."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        assert config.q_lora_rank is not None
        self.heads, self.head_dim = config.index_n_heads, config.index_head_dim
        self.rope_dim = config.qk_rope_head_dim
        self.topk = config.index_topk
        self.wq_b = nn.Linear(config.q_lora_rank, self.heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.hidden_size, self.head_dim, bias=False)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=KEY_NORM_EPS)
        self.weights_proj = nn.Linear(config.hidden_size, self.heads, bias=False)
        self.scale = self.head_dim**-0.5
        # Head weights are scaled by heads^-0.5 so that the score's size does not grow with
        # the number of heads (the released code's weights_proj scale).
        self.head_weight_scale = self.heads**-0.5
        self.stage = "sparse"
        """"dense" (warm-up: attention ignores the selection) or "sparse"; see DSA_STAGES."""

    def _rotate(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        """x (batch, seq, heads, head_dim) with its first rope_dim dimensions rotated."""
        rotated, rest = x.split([self.rope_dim, self.head_dim - self.rope_dim], dim=-1)
        return torch.cat((apply_rotary(rotated, rope, interleaved=False), rest), dim=-1)

    def keys(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        """The indexer keys (batch, seq, head_dim) of the block inputs x (batch, seq, hidden)
        at the positions of the rotation table `rope`; decoding caches them."""
        return self._rotate(self.k_norm(self.wk(x))[:, :, None], rope)[:, :, 0]

    def scores(
        self, x: torch.Tensor, q_latent: torch.Tensor, rope: torch.Tensor, keys: torch.Tensor
    ) -> torch.Tensor:
        """Index scores I (batch, seq, keys) in fp32, not yet masked.

        Args:
            x: the block inputs (batch, seq, hidden) of the queries.
            q_latent: MLA's query latent (batch, seq, q_lora_rank) of the same positions.
            rope: rotation table of the queries' positions.
            keys: indexer keys (batch, keys, head_dim) of every position attended to.
        """
        b, s, _ = x.shape
        q = self._rotate(self.wq_b(q_latent).view(b, s, self.heads, self.head_dim), rope)
        # relu(a·scale) = scale·relu(a): the scale joins the small head weights, and the
        # (batch, seq, heads, keys) products, the big tensor here, are rectified in place.
        per_head = torch.matmul(q.float(), keys.float().transpose(1, 2)[:, None]).relu_()
        # weights_proj may be kept in fp32 in a bf16 model, as transformers keeps it.
        w = self.weights_proj.weight
        weights = F.linear(x.to(w.dtype), w).float() * (self.head_weight_scale * self.scale)
        return torch.matmul(weights[:, :, None], per_head)[:, :, 0]


def select_keys(scores: torch.Tensor, topk: int) -> torch.Tensor | None:
    """Which keys each query attends to: its `topk` best-scored causal keys.

    Args:
        scores: index scores (batch, seq, keys); the queries are the last `seq` positions.
        topk: keys kept per query.
    Returns:
        Boolean (batch, seq, keys), True where attended; None when no query has more than
        `topk` causal keys, so that every causal key is kept.
    """
    s, t = scores.shape[-2:]
    if t <= topk:
        return None
    causal = causal_mask(s, t, scores.device)
    # Queries with fewer than topk causal keys pick some masked ones; `& causal` drops them.
    chosen = scores.masked_fill(~causal, float("-inf")).topk(topk, dim=-1).indices
    selected = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, chosen, True)
    return selected & causal


def indexer_loss(
    scores: torch.Tensor, attention: torch.Tensor, allowed: torch.Tensor
) -> torch.Tensor:
    """KL(p ‖ softmax(I)) per query over the keys it attends to, averaged over queries.

    Args:
        scores: index scores I (batch, seq, keys), with gradient to the indexer.
        attention: main attention probabilities summed over heads (batch, seq, keys); used
            detached, L1-normalised per query.
        allowed: boolean (batch or 1, seq, keys) keys the KL runs over (every causal key in
            the dense warm-up, the selected ones in sparse training).
    Returns:
        Scalar fp32 loss.
    """
    target = attention.detach().float().masked_fill(~allowed, 0.0)
    target = target / target.sum(dim=-1, keepdim=True)
    log_q = scores.masked_fill(~allowed, float("-inf")).log_softmax(dim=-1)
    log_q = log_q.masked_fill(~allowed, 0.0)  # no -inf·0 where the target is 0 by the mask
    kl = torch.xlogy(target, target) - target * log_q  # xlogy: 0·log 0 = 0
    return kl.sum(dim=-1).mean()
