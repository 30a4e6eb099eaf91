"""Reading what the training job reports: its metrics file, one JSON object per line.

``python -m deepseek.train`` appends events (``start``, ``step``, ``allreduce``,
``checkpoint``, ``suspend``, ``end``) from rank 0 while it trains; each run of a chain
appends to the same file. The demo tails it for live progress and reads it whole for the
summary. A line still being written has no newline yet and is left for the next read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class MetricsTail:
    """Follows a metrics file as it grows."""

    path: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    _offset: int = 0

    def poll(self) -> list[dict[str, Any]]:
        """Reads the complete lines added since the last poll; returns their events."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        new = [json.loads(line) for line in complete.splitlines() if line.strip()]
        self.events.extend(new)
        return new

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == kind]

    @property
    def last_step(self) -> int:
        steps = self.of("step")
        return steps[-1]["step"] if steps else 0
