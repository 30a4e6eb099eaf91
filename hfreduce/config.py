"""Tuning knobs of hfreduce, loaded once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

# Chosen by sweeping chunk size and depth with 64 MiB calls on the 2-core dev machine
# (1x2, 1x4 and 2x2 ranks; see the issue note): 2 MiB chunks beat 512 KiB and 1 MiB in
# every layout (the per-chunk Python and wake-up cost, 30-60 us, is amortised), and the
# staging area of depth x chunk x (local ranks + 1) still fits the 32 MiB L3 at depth 2.
DEFAULT_CHUNK_BYTES = 2 << 20
SINGLE_NODE_DEPTH = 2
"""On one node two slots already overlap one chunk's adds with the next one's copy, and
more slots only push the staging area out of cache (1x2: 21 ms at depth 2, 28 at 4)."""
MULTI_NODE_DEPTH = 4
"""Across nodes a chunk spends a tree round trip on the wire; more slots keep it busy."""


@dataclass
class HfreduceConfig:
    """How hfreduce pipelines a call; every rank of a group must use the same values."""

    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    """Bytes of each rank's tensor staged, summed and sent as one pipeline step."""
    pipeline_depth: int | None = None
    """Chunks in flight at once (staging slots per rank); None picks SINGLE_NODE_DEPTH or
    MULTI_NODE_DEPTH by the job's layout."""
    timeout_s: float = 300.0
    """Longest wait for a peer to make progress before the call fails naming that peer."""

    def __post_init__(self) -> None:
        if self.chunk_bytes < 4096 or self.chunk_bytes % 64:
            raise ValueError(
                f"hfreduce chunk_bytes={self.chunk_bytes}: must be a multiple of 64 and at "
                "least 4096"
            )
        if self.pipeline_depth is not None and self.pipeline_depth < 2:
            raise ValueError(f"hfreduce pipeline_depth={self.pipeline_depth}: must be at least 2")
        if self.timeout_s <= 0:
            raise ValueError(f"hfreduce timeout_s={self.timeout_s}: must be positive")


_ENV = {
    "chunk_bytes": ("HFREDUCE_CHUNK_BYTES", int),
    "pipeline_depth": ("HFREDUCE_PIPELINE_DEPTH", int),
    "timeout_s": ("HFREDUCE_TIMEOUT", float),
}


def load_config(**overrides: object) -> HfreduceConfig:
    """Defaults, then ``HFREDUCE_*`` environment variables, then explicit ``overrides``."""
    values: dict[str, object] = {}
    for f in fields(HfreduceConfig):
        name, parse = _ENV[f.name]
        raw = os.environ.get(name)
        if raw is not None:
            try:
                values[f.name] = parse(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a valid {parse.__name__}") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return HfreduceConfig(**values)  # type: ignore[arg-type]


def for_layout(config: HfreduceConfig, num_nodes: int) -> HfreduceConfig:
    """``config`` with its pipeline depth settled for a job spanning ``num_nodes``."""
    if config.pipeline_depth is not None:
        return config
    depth = SINGLE_NODE_DEPTH if num_nodes == 1 else MULTI_NODE_DEPTH
    return replace(config, pipeline_depth=depth)
