"""Cutting an ``nn.Sequential``-style model into pipeline stages."""

from __future__ import annotations

from torch import nn


def partition(
    model: nn.Module,
    rank: int,
    world_size: int,
    balance: list[int] | None = None,
    num_model_chunks: int = 1,
) -> nn.Sequential | list[nn.Sequential]:
    """Return the layers of ``model`` that pipeline rank ``rank`` runs.

    ``model``'s children, in order, are the layers. The pipeline has
    ``world_size * num_model_chunks`` virtual stages; ``balance[s]`` layers go to virtual
    stage ``s`` (an even split when ``balance`` is None). Chunk ``c`` of rank ``r`` is
    virtual stage ``c * world_size + r``, the layout ``Interleaved1F1B`` expects.

    Returns one ``nn.Sequential`` when ``num_model_chunks == 1``, else a list of them,
    one per chunk. Raises ValueError when ``rank`` is out of range or ``balance`` does
    not give every layer to exactly one stage.
    """
    layers = list(model.children())
    stages = world_size * num_model_chunks
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1} (world_size {world_size})")
    if balance is None:
        balance = _even_balance(len(layers), stages)
    if len(balance) != stages:
        raise ValueError(
            f"balance has {len(balance)} entries but the pipeline has {stages} stages "
            f"(world_size {world_size} x num_model_chunks {num_model_chunks}); give one per stage"
        )
    if sum(balance) != len(layers) or min(balance) < 1:
        raise ValueError(
            f"balance {balance} sums to {sum(balance)} but the model has {len(layers)} layers; "
            "every stage needs at least one layer and the sum must equal the layer count"
        )
    starts = [sum(balance[:s]) for s in range(stages + 1)]
    chunks = [
        nn.Sequential(*layers[starts[s] : starts[s + 1]]) for s in range(rank, stages, world_size)
    ]
    return chunks[0] if num_model_chunks == 1 else chunks


def _even_balance(layers: int, stages: int) -> list[int]:
    # The first ``layers % stages`` stages take one extra layer.
    return [layers // stages + (s < layers % stages) for s in range(stages)]
