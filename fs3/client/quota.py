"""Early quota checks for writers: a write that would take a file past a directory quota
fails before its bytes are sent.

Meta decides when a writer records the length it reached (close, fsync): ``set_length``
raises QuotaExceeded and records nothing. A job writing a large file should learn it at the
write that passes the limit, though, not at close with every byte already sent. So before
a write makes whole chunks ship past the largest length meta last allowed, the writer asks
meta for the file's limit (one ``GetLengthLimit`` call; a file with no quota above it asks
once per open). Small files, whose bytes ship only at close, are left to ``set_length``.
"""

from __future__ import annotations

from fs3.client.meta import MetaClient
from fs3.errors import QuotaExceeded


class LengthGuard:
    """Args:
    meta: where to ask.
    inode_id: the file.
    path: named in the error.
    length: the file's length as meta recorded it (always allowed).
    """

    def __init__(self, meta: MetaClient, inode_id: int, path: str, length: int) -> None:
        self._meta = meta
        self._inode_id = inode_id
        self._path = path
        self._allowed = length
        self._unlimited = False

    def needs_check(self, end: int) -> bool:
        """Whether growing the file to ``end`` bytes needs a call to meta first."""
        return not self._unlimited and end > self._allowed

    def check(self, end: int) -> None:
        """Raises QuotaExceeded (naming the path) when the file may not grow to ``end``."""
        if not self.needs_check(end):
            return
        limit = self._meta.length_limit(self._inode_id)
        if limit is None:
            self._unlimited = True
            return
        self._allowed = limit
        if end > limit:
            raise QuotaExceeded(
                f"disk quota exceeded: a directory quota lets this file grow to {limit} "
                f"bytes, the write reaches {end}",
                self._path,
            )
