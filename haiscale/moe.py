"""Expert parallelism for mixture-of-experts layers.

Each of the W ranks of a group holds E/W experts (rank r holds experts r·E/W … (r+1)·E/W−1).
A layer routes its tokens as in one process, then:

1. ``dispatch`` sorts the (token, expert) pairs by expert, tells every rank how many it
   will receive per local expert (a small all-to-all of counts, so the split sizes of the
   next one are known), sends each token to its expert's rank with ``all_to_all_single``
   and hands back the received tokens grouped by local expert;
2. the layer runs its local experts on them (one contiguous slice per expert);
3. ``combine`` sends the results back and restores the caller's (token, choice) order.

Both exchanges are differentiable: their backward is the reverse all-to-all, so gradients
reach the tokens of other ranks and every expert gets the gradient of all tokens routed to
it. The module knows nothing of routers or expert shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.nn.functional import all_to_all_single

__all__ = ["DispatchContext", "ExpertParallel"]


@dataclass
class DispatchContext:
    """What ``combine`` needs to undo one ``dispatch``."""

    order: torch.Tensor
    """(N·k,) the (token, choice) pairs in the order they were sent (sorted by expert)."""
    regroup: torch.Tensor
    """(M,) received tokens (by source rank, then local expert) in local-expert order."""
    send_splits: list[int]
    """Tokens sent to each rank."""
    recv_splits: list[int]
    """Tokens received from each rank."""
    shape: torch.Size
    """The caller's ``expert_ids`` shape: (N,) or (N, k)."""


class ExpertParallel:
    """Moves tokens to the ranks that hold their experts and back.

    Args:
        num_experts: experts of the layer across all ranks; a multiple of the group size.
        process_group: the expert-parallel ranks (default: the default group).
    """

    def __init__(self, num_experts: int, process_group: dist.ProcessGroup | None = None) -> None:
        self.group = process_group
        self.world = dist.get_world_size(process_group)
        if num_experts % self.world:
            raise ValueError(
                f"num_experts={num_experts} does not split over {self.world} expert-parallel "
                f"ranks; use a multiple of {self.world}"
            )
        self.num_experts = num_experts
        self.local_experts = num_experts // self.world
        self.first_expert = dist.get_rank(process_group) * self.local_experts

    def dispatch(
        self, tokens: torch.Tensor, expert_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, DispatchContext]:
        """Sends each token to the rank of each expert it chose. Collective over the group.

        Args:
            tokens: (N, hidden).
            expert_ids: (N,) or (N, k) global expert ids, k choices per token.
        Returns:
            received: (M, hidden) tokens for this rank's experts, those of local expert 0
                first (from every rank), then local expert 1, ...
            counts: (local_experts,) how many of ``received`` each local expert gets.
            context: for ``combine``.
        """
        flat = expert_ids.reshape(-1)
        if flat.numel() and not 0 <= int(flat.min()) <= int(flat.max()) < self.num_experts:
            raise ValueError(
                f"expert ids must lie in [0, {self.num_experts}); got {int(flat.min())}.."
                f"{int(flat.max())}"
            )
        choices = flat.numel() // max(tokens.shape[0], 1)
        order = flat.argsort(stable=True)
        per_expert = torch.bincount(flat, minlength=self.num_experts)
        # received[r, e]: tokens rank r sends to our local expert e.
        received = torch.empty_like(per_expert)
        dist.all_to_all_single(received, per_expert, group=self.group)
        received = received.view(self.world, self.local_experts)
        send_splits = per_expert.view(self.world, self.local_experts).sum(1).tolist()
        recv_splits = received.sum(1).tolist()
        arrived = self._exchange(tokens[order // choices], recv_splits, send_splits)
        # Arrivals come by source rank, then local expert; each expert wants one slice.
        local_ids = torch.arange(self.local_experts, device=flat.device).repeat(self.world)
        regroup = local_ids.repeat_interleave(received.flatten()).argsort(stable=True)
        context = DispatchContext(order, regroup, send_splits, recv_splits, expert_ids.shape)
        return arrived[regroup], received.sum(0), context

    def combine(self, outputs: torch.Tensor, context: DispatchContext) -> torch.Tensor:
        """Returns expert outputs to the tokens' ranks. Collective over the group.

        Args:
            outputs: (M, d) results for ``dispatch``'s ``received``, in the same order.
            context: what that ``dispatch`` returned.
        Returns:
            ``expert_ids.shape + (d,)``: for each token and choice, its expert's output.
        """
        arrival_order = outputs[_inverse(context.regroup)]
        returned = self._exchange(arrival_order, context.send_splits, context.recv_splits)
        return returned[_inverse(context.order)].view(*context.shape, outputs.shape[-1])

    def _exchange(
        self, x: torch.Tensor, recv_splits: list[int], send_splits: list[int]
    ) -> torch.Tensor:
        out = x.new_empty(sum(recv_splits), *x.shape[1:])
        return all_to_all_single(out, x.contiguous(), recv_splits, send_splits, group=self.group)


def _inverse(permutation: torch.Tensor) -> torch.Tensor:
    inverse = torch.empty_like(permutation)
    inverse[permutation] = torch.arange(permutation.numel(), device=permutation.device)
    return inverse
