"""The geometry of one all-reduce call: how its tensor splits into chunks, each chunk
into one slice per local rank, and each slice into one half per inter-node tree."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hfreduce.kernels import DTYPE_CODES, ReduceOp

FIRST_CHUNK_BYTES = 256 << 10
"""Across nodes, chunk 0's size at most. Every rank waits for chunk 0 to come back through
the trees before it stages the next one (it carries the call's checks), and the links
idle meanwhile: a whole 4 MiB chunk 0 cost a 64 MiB call 6% of its time at 2 Gbit/s."""


def split(n: int, parts: int, k: int) -> tuple[int, int]:
    """Bounds of part ``k`` when ``n`` items are cut into ``parts`` near-equal parts."""
    return n * k // parts, n * (k + 1) // parts


@dataclass
class CallPlan:
    call: int
    """Sequence number of this call on the communicator (the same on every rank)."""
    base: int
    """Global index of this call's first chunk: progress words count chunks over all calls."""
    numel: int
    dtype: torch.dtype
    op: ReduceOp
    chunk_elems: int
    local_rank: int
    local_size: int
    world_size: int
    multi_node: bool
    abort: str | None = None
    """Why the call failed its first-chunk checks, once some rank found out."""
    first_elems: int = field(init=False)
    """Chunk 0's length (FIRST_CHUNK_BYTES across nodes); the others are chunk_elems long."""

    def __post_init__(self) -> None:
        first = max(1, FIRST_CHUNK_BYTES // self.dtype.itemsize) if self.multi_node else 0
        self.first_elems = min(self.chunk_elems, first) if first else self.chunk_elems

    @property
    def nchunks(self) -> int:
        # A zero-element call still moves one (empty) chunk: it carries the header check.
        return 1 + max(0, -(-(self.numel - self.first_elems) // self.chunk_elems))

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    @property
    def dtype_code(self) -> int:
        return DTYPE_CODES[self.dtype]

    @property
    def integer_average(self) -> bool:
        return self.op == ReduceOp.AVG and not self.dtype.is_floating_point

    @property
    def local_divisor(self) -> int:
        """What the intra-node reduce divides by. Floating AVG scales each node's partial
        sum by 1/world (no overflow of half types on the way up); integer AVG must sum
        exactly and is divided once, at the tree root (or here, on a single node)."""
        if self.op != ReduceOp.AVG or (self.multi_node and self.integer_average):
            return 1
        return self.world_size

    def chunk(self, i: int) -> tuple[int, int]:
        if i == 0:
            return 0, min(self.numel, self.first_elems)
        start = self.first_elems + (i - 1) * self.chunk_elems
        return start, min(self.numel, start + self.chunk_elems)

    def my_slice(self, i: int) -> tuple[int, int]:
        """Our slice of chunk ``i``, in elements from the chunk's start."""
        start, stop = self.chunk(i)
        return split(stop - start, self.local_size, self.local_rank)

    def half(self, i: int, tree: int) -> tuple[int, int]:
        """The part of our slice of chunk ``i`` that travels through ``tree``."""
        lo, hi = self.my_slice(i)
        a, b = split(hi - lo, 2, tree)
        return lo + a, lo + b

    def header(self) -> tuple[int, int, int, int]:
        return self.call, self.numel, self.dtype_code, int(self.op)
