"""Data- and pipeline-parallel process groups laid out so a node's NICs share the load."""

from __future__ import annotations

import torch.distributed as dist


def make_subgroups(pp_size: int) -> tuple[dist.ProcessGroup, dist.ProcessGroup]:
    """Create the DP and PP groups of the default group and return this rank's
    ``(dp_group, pp_group)``. Every rank must call it (group creation is collective).

    Layout, for world size ``W`` and ``dp_size = W // pp_size``::

        rank = dp_rank * pp_size + pp_rank
        pp group k = ranks [k * pp_size, (k + 1) * pp_size)     (consecutive ranks)
        dp group s = ranks {s, s + pp_size, s + 2 * pp_size, ...}   (one per stage)

    A node's ranks are thus consecutive pipeline stages, each in its own DP group (with
    ``pp_size`` = ranks per node, all of a node's ranks have different DP groups). Stages
    finish their backward passes at different times in a pipeline step, so the gradient
    all-reduces of a node's ranks reach its NIC staggered in time instead of all at once;
    the stage-to-stage sends stay inside the node or go to the neighbouring one. When a node
    holds several pipelines (``pp_size`` below the ranks per node), its ranks of one stage
    share a DP group, where hfreduce sums them inside the node before the NIC.
    Example, W = 4, pp_size = 2: pp groups [0, 1] and [2, 3]; dp groups [0, 2] and [1, 3].

    Raises ValueError when ``pp_size`` does not divide the world size.
    """
    world = dist.get_world_size()
    if pp_size < 1 or world % pp_size:
        raise ValueError(
            f"pp_size {pp_size} does not divide the world size {world}; "
            "choose a pipeline size that splits the ranks evenly"
        )
    rank = dist.get_rank()
    dp_size = world // pp_size
    groups = {}
    # new_group is collective: every rank creates every group, in the same order.
    for k in range(dp_size):
        groups["pp", k] = dist.new_group(list(range(k * pp_size, (k + 1) * pp_size)))
    for s in range(pp_size):
        groups["dp", s] = dist.new_group(list(range(s, world, pp_size)))
    return groups["dp", rank % pp_size], groups["pp", rank // pp_size]
