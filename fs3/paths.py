"""Path checking shared by client and meta: one normal form, so both sides agree on names."""

from __future__ import annotations

import posixpath

from fs3.errors import InvalidArgument, NameTooLong

NAME_MAX = 255
"""Bytes (UTF-8) in one path component: Linux's NAME_MAX, so every name fits a mount."""
PATH_MAX = 4096
"""Bytes (UTF-8) in a whole path: Linux's PATH_MAX."""


def _shown(path: str) -> str:
    """``path`` for an error message: short, so a 100 KB name does not become the message."""
    return path if len(path) <= 80 else f"{path[:60]}...({len(path)} characters)"


def check_length(path: str) -> bytes:
    """Returns ``path`` as UTF-8 after the checks every stored path and symlink target
    passes: no NUL, at most PATH_MAX bytes, valid UTF-8.

    Raises:
        InvalidArgument: a NUL byte, or text that is not UTF-8 (a lone surrogate).
        NameTooLong: more than PATH_MAX bytes.
    """
    if "\x00" in path:
        raise InvalidArgument("path contains a NUL byte", _shown(repr(path)))
    try:
        raw = path.encode()
    except UnicodeEncodeError:
        raise InvalidArgument("path is not valid UTF-8", _shown(repr(path))) from None
    if len(raw) > PATH_MAX:
        raise NameTooLong(f"path of {len(raw)} bytes exceeds {PATH_MAX}", _shown(path))
    return raw


def normalize(path: str) -> str:
    """Returns ``path`` as an absolute, normalised fs3 path (``/a/b``). ``/`` only separates
    components, so no name holds one.

    Raises:
        InvalidArgument: a NUL byte, text that is not UTF-8, or ``..`` components that
            escape the root.
        NameTooLong: a component over NAME_MAX bytes or the path over PATH_MAX.
    """
    check_length(path)
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
            if len(part.encode()) > NAME_MAX:
                raise NameTooLong(
                    f"name of {len(part.encode())} bytes exceeds {NAME_MAX}", _shown(path)
                )
            parts.append(part)
    return "/" + "/".join(parts)


def split(path: str) -> tuple[str, str]:
    """Splits a normalised path into (parent, name); the root has name ``""``."""
    parent, name = posixpath.split(path)
    return parent, name


def components(path: str) -> list[str]:
    return [p for p in path.split("/") if p]
