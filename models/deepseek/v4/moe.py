"""V4's MoE layer: hash-routed or learned top-k routed experts, with clipped SwiGLU.

- `hash_moe` layers choose experts with a frozen token → experts table (`tid2eid`), so the
  first layers are balanced by construction; the learned gate still weights the chosen ones.
- `moe` layers choose the top-k of score + `e_score_correction_bias` (V3's
  auxiliary-loss-free balancing, updated by `MoE.update_bias` after each optimiser step).
- Scores are sqrt(softplus(logits)) by default (softmax or sigmoid on request); routed and
  shared experts clamp their gate (above) and up (both sides) pre-activations to
  `swiglu_limit` so that a few huge activations cannot dominate.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from deepseek.layers import MLP
from deepseek.moe import Experts, MoE, Routing
from deepseek.v4.config import V4Config

SCORES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sqrtsoftplus": lambda logits: F.softplus(logits).sqrt(),
    "softmax": lambda logits: logits.softmax(dim=-1),
    "sigmoid": torch.sigmoid,
}


def clipped_swiglu(gate: torch.Tensor, up: torch.Tensor, limit: float) -> torch.Tensor:
    """silu(min(gate, limit)) · clamp(up, ±limit)."""
    return F.silu(gate.clamp(max=limit)) * up.clamp(min=-limit, max=limit)


class V4Router(nn.Module):
    """The gate: HF keys `mlp.gate.weight` plus `tid2eid` (hash) or `e_score_correction_bias`."""

    def __init__(self, config: V4Config, hashed: bool) -> None:
        super().__init__()
        experts = config.n_routed_experts
        self.top_k = config.num_experts_per_tok
        self.score = SCORES[config.scoring_func]
        self.norm_topk_prob = config.norm_topk_prob
        self.scaling = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(experts, config.hidden_size))
        self.tid2eid: torch.Tensor | None
        self.e_score_correction_bias: torch.Tensor | None
        if hashed:
            # Part of the checkpoint (transformers saves it): the table is the routing.
            self.register_buffer(
                "tid2eid", torch.zeros(config.vocab_size, self.top_k, dtype=torch.long)
            )
            self.e_score_correction_bias = None
        else:
            self.tid2eid = None
            # fp32 so that γ=1e-3 steps are not lost to rounding; no gradient ever.
            self.register_buffer("e_score_correction_bias", torch.zeros(experts))

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> Routing:
        """x (N, hidden) and its token ids (N,) → the chosen experts and their weights."""
        weight = self.weight if self.weight.dtype == torch.float32 else self.weight.float()
        scores = self.score(F.linear(x.float(), weight))
        with torch.no_grad():  # choosing is not differentiable; only the weights are
            if self.tid2eid is not None:
                indices = self.tid2eid[input_ids].long()
            else:
                assert self.e_score_correction_bias is not None
                biased = scores + self.e_score_correction_bias.float()
                indices = biased.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, indices)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return Routing(weights * self.scaling, indices, scores)


class ClippedExperts(Experts):
    """`deepseek.moe.Experts` (same stacked tensors) with the clipped SwiGLU."""

    def __init__(self, experts: int, hidden: int, intermediate: int, limit: float) -> None:
        super().__init__(experts, hidden, intermediate)
        self.limit = limit

    def activation(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return clipped_swiglu(gate, up, self.limit)


class ClippedMLP(MLP):
    """The shared expert: `deepseek.layers.MLP` with the clipped SwiGLU."""

    def __init__(self, hidden_size: int, intermediate_size: int, limit: float) -> None:
        super().__init__(hidden_size, intermediate_size)
        self.limit = limit

    def activation(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return clipped_swiglu(gate, up, self.limit)


class V4MoE(MoE):
    """Shared + routed experts of one V4 layer (HF prefix `mlp.`).

    A `deepseek.moe.MoE` for the training loop: the same load counting and
    `update_bias` (which only restarts the count of a hash layer, having no bias).
    """

    def __init__(self, config: V4Config, layer_idx: int) -> None:
        nn.Module.__init__(self)  # MoE.__init__ builds V2/V3 parts from a ModelConfig
        self._assemble(
            V4Router(config, hashed=config.mlp_layer_types[layer_idx] == "hash_moe"),
            ClippedExperts(
                config.n_routed_experts,
                config.hidden_size,
                config.moe_intermediate_size,
                config.swiglu_limit,
            ),
            ClippedMLP(
                config.hidden_size,
                config.moe_intermediate_size * config.n_shared_experts,
                config.swiglu_limit,
            )
            if config.n_shared_experts
            else None,
            alpha=config.aux_loss_alpha,
            seq_aux=True,
            bias_update_rate=config.bias_update_rate,
        )

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, input_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (batch, seq, hidden), input_ids (batch, seq) → (output, α-weighted
        sequence-wise balance loss or None)."""
        flat = x.reshape(-1, x.shape[-1])
        return self._mix(flat, self.gate(flat, input_ids.reshape(-1)), x.shape[0])
