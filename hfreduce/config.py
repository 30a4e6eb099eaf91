"""Tuning knobs of hfreduce, loaded once from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

# Chosen from `python -m hfreduce.bench` on a 2-core machine: 1 MiB chunks let one
# chunk from every local rank plus its sum stay in L2/L3 while it is added (2 ranks x
# 1 MiB in, 1 MiB out), and are large enough that the per-chunk Python and wake-up
# overhead (~20-40 us) is a few percent of the copy time.
DEFAULT_CHUNK_BYTES = 1 << 20


@dataclass
class HfreduceConfig:
    """How hfreduce pipelines a call; every rank of a group must use the same values."""

    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    """Bytes of each rank's tensor staged, summed and sent as one pipeline step."""
    pipeline_depth: int = 4
    """Chunks in flight at once (staging slots per rank). Two is enough on one node; the
    inter-node path needs more so chunk i can be on the wire while i+1..i+d-1 are added."""
    timeout_s: float = 300.0
    """Longest wait for a peer to make progress before the call fails naming that peer."""

    def __post_init__(self) -> None:
        if self.chunk_bytes < 4096 or self.chunk_bytes % 64:
            raise ValueError(
                f"hfreduce chunk_bytes={self.chunk_bytes}: must be a multiple of 64 and at "
                "least 4096"
            )
        if self.pipeline_depth < 2:
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
