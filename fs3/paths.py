"""Path checking shared by client and meta: one normal form, so both sides agree on names."""

from __future__ import annotations

import posixpath

from fs3.errors import InvalidArgument


def normalize(path: str) -> str:
    """Returns ``path`` as an absolute, normalised fs3 path (``/a/b``).

    Raises:
        InvalidArgument: the path holds a NUL byte or its ``..`` components escape the root.
    """
    if "\x00" in path:
        raise InvalidArgument("path contains a NUL byte", repr(path))
    absolute = "/" + path.lstrip("/")
    # normpath keeps a leading "/.." on some inputs; anything left that climbs is an escape.
    parts: list[str] = []
    for part in absolute.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise InvalidArgument("path escapes the root with '..'", path)
            parts.pop()
        else:
            parts.append(part)
    return "/" + "/".join(parts)


def split(path: str) -> tuple[str, str]:
    """Splits a normalised path into (parent, name); the root has name ``""``."""
    parent, name = posixpath.split(path)
    return parent, name


def components(path: str) -> list[str]:
    return [p for p in path.split("/") if p]
