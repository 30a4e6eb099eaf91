"""The order in which one pipeline rank runs its forward and backward passes.

An action is ``(op, chunk, micro)``: ``op`` is ``"F"`` or ``"B"``, ``chunk`` the index of
the rank's model chunk (always 0 without interleaving) and ``micro`` the micro-batch.
These are pure functions of the pipeline's shape, so they are checked without processes.
"""

from __future__ import annotations

Action = tuple[str, int, int]


def gpipe_order(micro_batches: int) -> list[Action]:
    """All forwards, then all backwards in reverse (GPipe; the last micro-batch's
    activations are the freshest, so its backward goes first)."""
    forwards = [("F", 0, m) for m in range(micro_batches)]
    return forwards + [("B", 0, m) for m in reversed(range(micro_batches))]


def one_f_one_b_order(micro_batches: int, size: int, rank: int) -> list[Action]:
    """PipeDream-flush (1F1B): ``size - rank - 1`` warm-up forwards, then one forward and
    one backward alternately, then the remaining backwards. At most ``size - rank``
    micro-batches hold activations at once, against all of them in GPipe."""
    return interleaved_order(micro_batches, size, rank, chunks=1)


def interleaved_order(micro_batches: int, size: int, rank: int, chunks: int) -> list[Action]:
    """Interleaved 1F1B (Megatron-LM's virtual pipeline) with ``chunks`` model chunks per
    rank. Forwards visit micro-batches in groups of ``size`` per chunk, so the pipeline
    fills after ``size`` micro-batches of the first chunk; backwards visit chunks in
    reverse. With ``chunks == 1`` this is plain 1F1B.

    Raises ValueError when interleaving and ``micro_batches`` is not a multiple of ``size``.
    """
    if chunks > 1 and micro_batches % size:
        raise ValueError(
            f"interleaved 1F1B needs the number of micro-batches ({micro_batches}) to be a "
            f"multiple of the pipeline size ({size})"
        )
    total = micro_batches * chunks
    # Warm-up counts from Megatron-LM: later ranks start their first backward sooner.
    if chunks == 1:
        warmup = min(size - rank - 1, total)
    else:
        warmup = min((size - rank - 1) * 2 + (chunks - 1) * size, total)
    forwards = [("F", *_virtual(k, size, chunks, forward=True)) for k in range(total)]
    backwards = [("B", *_virtual(k, size, chunks, forward=False)) for k in range(total)]
    order = forwards[:warmup]
    for k in range(total - warmup):
        order += [forwards[warmup + k], backwards[k]]
    return order + backwards[total - warmup :]


def _virtual(k: int, size: int, chunks: int, forward: bool) -> tuple[int, int]:
    """Chunk and micro-batch of a rank's ``k``-th forward (or backward)."""
    chunk = (k // size) % chunks
    micro = (k // (size * chunks)) * size + k % size
    return (chunk if forward else chunks - 1 - chunk), micro
