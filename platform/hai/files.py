"""Small files the platform's processes share through the state folder."""

from __future__ import annotations

import os
from pathlib import Path


def replace_text(path: Path, text: str) -> None:
    """Writes ``path`` so that a concurrent reader sees the old text or the new, never a
    half-written file (write beside it, then rename over it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
