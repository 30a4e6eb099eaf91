"""The DeepSeekMoE layer: shared experts plus fine-grained routed experts.

Routing (`Router`) scores experts with softmax (v1, V2) or sigmoid (V3), optionally limits
each token to its best `topk_group` expert groups (V2's device-limited / V3's node-limited
routing), picks the top-k, and weights the chosen experts by their unbiased scores,
renormalised when `norm_topk_prob`, times `routed_scaling_factor`.

Balancing:
- V3's auxiliary-loss-free bias (`e_score_correction_bias`) is a buffer added to the scores
  only to *choose* experts; after each optimiser step `MoE.update_bias` moves it by
  γ·sign(mean_load − load_i), with loads summed over data-parallel ranks.
- `balance_loss` gives V3's sequence-wise loss α·Σ f_i·P_i per sequence, or V2's
  expert-level loss over the whole batch.

Expert compute (`Experts`) sorts the (token, expert) pairs by expert and runs each
projection as one grouped matmul, never looping over tokens; a single token (cached
decoding) loops over its k experts instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deepseek.config import ModelConfig
from deepseek.layers import MLP


def grouped_mm(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Rows of x sorted by group times that group's matrix.

    Args:
        x: (rows, d_in), rows of group 0 first, then group 1, ...
        w: (groups, d_in, d_out).
        counts: (groups,) rows per group, summing to rows.
    Returns:
        (rows, d_out).
    """
    # torch._grouped_mm runs on CPU in any dtype and on CUDA for bf16 (sm90); elsewhere
    # fall back to one matmul per group (a loop over experts, not tokens).
    fused = hasattr(torch, "_grouped_mm") and x.dtype == w.dtype
    if fused and x.is_cuda:
        fused = x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device)[0] >= 9
    if fused:
        return torch._grouped_mm(x, w, offs=counts.cumsum(0).to(torch.int32))
    chunks = x.split(counts.tolist())
    return torch.cat([chunk @ w[i] for i, chunk in enumerate(chunks)])


@dataclass
class Routing:
    """Router output for N tokens."""

    weights: torch.Tensor
    """(N, k) weights of the chosen experts."""
    indices: torch.Tensor
    """(N, k) chosen expert ids."""
    scores: torch.Tensor
    """(N, E) unbiased affinity scores (fp32), for balance losses."""


class Router(nn.Module):
    """The gate: HF keys `mlp.gate.weight` and (noaux_tc) `mlp.gate.e_score_correction_bias`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        assert config.n_routed_experts is not None
        self.experts = config.n_routed_experts
        self.top_k = config.num_experts_per_tok
        self.sigmoid = config.scoring_func == "sigmoid"
        self.method = config.topk_method
        self.n_group, self.topk_group = config.n_group, config.topk_group
        self.norm_topk_prob = config.norm_topk_prob
        self.scaling = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(self.experts, config.hidden_size))
        self.e_score_correction_bias: torch.Tensor | None
        if self.method == "noaux_tc":
            # fp32 so that γ=1e-3 steps are not lost to rounding; no gradient ever.
            self.register_buffer("e_score_correction_bias", torch.zeros(self.experts))
        else:
            self.e_score_correction_bias = None

    def forward(self, x: torch.Tensor) -> Routing:
        """x (N, hidden) → the chosen experts and their weights."""
        fp32 = torch.float32
        weight = self.weight if self.weight.dtype == fp32 else self.weight.float()
        logits = F.linear(x if x.dtype == fp32 else x.float(), weight)
        scores = logits.sigmoid() if self.sigmoid else logits.softmax(dim=-1)
        with torch.no_grad():  # choosing is not differentiable; only the weights are
            indices = self._choose(scores)
        weights = scores.gather(1, indices)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return Routing(weights * self.scaling, indices, scores)

    def _choose(self, scores: torch.Tensor) -> torch.Tensor:
        """(N, top_k) experts picked by the (biased) scores within the best groups."""
        choice = scores
        bias = self.e_score_correction_bias
        if bias is not None:
            choice = choice + (bias if bias.dtype == torch.float32 else bias.float())
        if self.method != "greedy" and self.n_group > 1:
            grouped = choice.view(-1, self.n_group, self.experts // self.n_group)
            # V3 scores a group by the sum of its top two experts, V2 by its best one.
            if self.method == "noaux_tc":
                group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
            else:
                group_scores = grouped.amax(dim=-1)
            keep = group_scores.topk(self.topk_group, dim=-1).indices
            group_mask = torch.ones_like(group_scores, dtype=torch.bool).scatter(1, keep, False)
            choice = grouped.masked_fill(group_mask[..., None], float("-inf")).flatten(1)
        return choice.topk(self.top_k, dim=-1).indices


class Experts(nn.Module):
    """Routed experts as stacked tensors: gate_up_proj (E, 2I, H), down_proj (E, H, I).

    The same in-memory layout as transformers; the hub stores them per expert and
    `deepseek.hf` converts.
    """

    def __init__(self, experts: int, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.num_experts = experts
        self.gate_up_proj = nn.Parameter(torch.empty(experts, 2 * intermediate, hidden))
        self.down_proj = nn.Parameter(torch.empty(experts, hidden, intermediate))

    def activation(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """silu(gate) · up; a subclass may bound it (V4 clips both)."""
        return F.silu(gate) * up

    def forward(
        self, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """Σ_k weights[:, k] · expert_{indices[:, k]}(x) for x (N, hidden) → (N, hidden)."""
        if x.shape[0] == 1:
            # One token (cached decoding): the grouped path's sort, count, gather and
            # scatter cost more than the token's k small matmuls, so run those directly
            # (and faster than one _grouped_mm call for them: 223 against 303 µs, V3-small).
            # Without autograd the weights can be Python numbers: one accumulate per expert.
            grad = torch.is_grad_enabled()
            token_weights = weights[0].to(x.dtype) if grad else weights.tolist()[0]
            out = None
            for e, w in zip(indices.tolist()[0], token_weights, strict=True):
                gate, up = F.linear(x, self.gate_up_proj[e]).chunk(2, -1)
                y = F.linear(self.activation(gate, up), self.down_proj[e])
                if out is None:
                    out = y * w
                elif grad:
                    out = out + w * y
                else:
                    out = out.add_(y, alpha=w)
            assert out is not None
            return out
        top_k = indices.shape[1]
        flat = indices.flatten()
        order = flat.argsort(stable=True)
        token = order // top_k
        counts = torch.bincount(flat, minlength=self.num_experts)
        gate, up = grouped_mm(x[token], self.gate_up_proj.transpose(1, 2), counts).chunk(2, -1)
        out = grouped_mm(self.activation(gate, up), self.down_proj.transpose(1, 2), counts)
        out = out * weights.flatten()[order, None].to(out.dtype)
        return torch.zeros_like(x).index_add_(0, token, out.to(x.dtype))


def balance_loss(
    scores: torch.Tensor, indices: torch.Tensor, sequences: int, top_k: int
) -> torch.Tensor:
    """Σ_i f_i·P_i averaged over `sequences` equal slices of the tokens (no α).

    f_i = E/(k·T)·(tokens of the slice routed to i), P_i = mean over the slice of the
    normalised score s_i/Σ_j s_j. One slice per sequence gives V3's sequence-wise loss;
    one slice for the batch gives V2's expert-level loss.

    Args:
        scores: (sequences·T, E) affinity scores.
        indices: (sequences·T, k) chosen experts.
    """
    experts = scores.shape[1]
    probs = scores / scores.sum(dim=-1, keepdim=True)
    probs = probs.view(sequences, -1, experts)
    tokens = probs.shape[1]
    counts = torch.zeros(sequences, experts, device=scores.device)
    counts.scatter_add_(
        1, indices.view(sequences, -1), torch.ones_like(counts[:, :1]).expand(-1, tokens * top_k)
    )
    f = counts * experts / (top_k * tokens)
    return (f * probs.mean(dim=1)).sum(dim=-1).mean()


class MoE(nn.Module):
    """Shared experts + routed experts, with load counting and balancing."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        assert config.n_routed_experts is not None
        self._assemble(
            Router(config),
            Experts(config.n_routed_experts, config.hidden_size, config.moe_intermediate_size),
            MLP(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts)
            if config.n_shared_experts
            else None,
            alpha=config.aux_loss_alpha,
            seq_aux=config.seq_aux,
            bias_update_rate=config.bias_update_rate,
        )

    def _assemble(
        self,
        gate: nn.Module,
        experts: Experts,
        shared_experts: nn.Module | None,
        *,
        alpha: float,
        seq_aux: bool,
        bias_update_rate: float,
    ) -> None:
        """Sets what every MoE layer has; a generation with other parts (V4) passes its own."""
        self.gate = gate
        self.experts = experts
        self.shared_experts = shared_experts
        self.alpha, self.seq_aux = alpha, seq_aux
        self.bias_update_rate = bias_update_rate
        # Tokens routed to each expert in training since the last `update_bias`.
        self.register_buffer("load", torch.zeros(experts.num_experts), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (batch, seq, hidden) → (output, α-weighted balance loss or None)."""
        flat = x.reshape(-1, x.shape[-1])
        return self._mix(flat, self.gate(flat), x.shape[0])

    def _mix(
        self, flat: torch.Tensor, routing: Routing, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The routed and shared experts' sum for tokens flat (batch·seq, hidden) →
        ((batch, seq, hidden), α-weighted balance loss or None); counts the load."""
        out = self.experts(flat, routing.indices, routing.weights)
        if self.shared_experts is not None:
            out = out + self.shared_experts(flat)
        aux = None
        if self.training:
            with torch.no_grad():
                self.load += torch.bincount(routing.indices.flatten(), minlength=self.load.numel())
            if self.alpha > 0:
                sequences = batch if self.seq_aux else 1
                aux = self.alpha * balance_loss(
                    routing.scores, routing.indices, sequences, self.gate.top_k
                )
        return out.view(batch, -1, flat.shape[-1]), aux

    @torch.no_grad()
    def update_bias(
        self, total: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Applies b_i += γ·sign(mean_load − load_i) and restarts load counting.

        Call after each optimiser step. ``total`` turns this replica's loads into the whole
        job's (the training loop's sum over ranks, so every rank applies the same update);
        the model itself never communicates. Returns the load that drove the update, for
        logging. A router without a bias (V2) only restarts the count.
        """
        load = self.load.clone()
        if total is not None:
            load = total(load)
        bias = self.gate.e_score_correction_bias
        if bias is not None:
            bias += self.bias_update_rate * torch.sign(load.mean() - load).to(bias.dtype)
        self.load.zero_()
        return load
