"""One open directory of the mount, read from meta a page at a time (``readdir``).

The kernel resumes a listing by a 64-bit cookie, the offset the mount gave the last entry
it took; a cookie cannot hold a name, so here the cookie of the entry at position ``n`` of
the pass is ``n + 1``. The stream keeps the one page it is serving with the position of its
first entry: the kernel's next call (the cookie of the last entry it took) continues from
that page, and the page after it is read from meta after the last name seen (keyset), so an
entry present throughout the pass comes exactly once however others come and go, and a
directory of any size costs one page of memory. A cookie outside the page (``seekdir`` back
to an old ``telldir``) is found again by counting entries from the start.
"""

from __future__ import annotations

from collections.abc import Callable

from fs3.types import DirEntry

PAGE = 1000
"""Entries per meta request of a listing."""

ListPage = Callable[[str, str, int], tuple[list[DirEntry], bool]]
"""``(path, after, limit) -> (entries, more)``: :meth:`fs3.client.meta.MetaClient.list_page`."""


class DirStream:
    """The listing of one open directory.

    Args:
        list_page: reads one page of a directory from meta.
        hidden: a name the mount does not show (its orphans folder, at the root).
        page: entries per request.
    """

    def __init__(self, list_page: ListPage, hidden: str | None = None, page: int = PAGE) -> None:
        self._list_page = list_page
        self._hidden = hidden
        self._size = page
        self._first = 0  # position in the pass of the first entry of ``_page``
        self._page: list[DirEntry] = []
        self._after = ""  # the last name read from meta, shown or hidden
        self._more = True  # whether meta may have entries after ``_after``

    def from_cookie(self, path: str, cookie: int) -> list[tuple[int, DirEntry]]:
        """The entries of directory ``path`` from position ``cookie`` of the pass, each with
        its own cookie, up to the end of one page (the caller takes what fits its reply;
        empty at the end of the directory). Cookie 0 starts a new pass, which sees the
        directory as it is now. Blocks on meta; raises what it raises."""
        end = self._first + len(self._page)
        if cookie == 0 or not self._first <= cookie <= end:
            self._restart(path)
        while cookie >= self._first + len(self._page) and self._more:
            self._next_page(path)
        return [
            (self._first + i + 1, entry)
            for i, entry in enumerate(self._page)
            if self._first + i >= cookie
        ]

    def _restart(self, path: str) -> None:
        self._first, self._page, self._after, self._more = 0, [], "", True
        self._next_page(path)

    def _next_page(self, path: str) -> None:
        """Moves on to the next page with an entry to show (or to the end)."""
        self._first += len(self._page)
        self._page = []
        while not self._page and self._more:
            entries, self._more = self._list_page(path, self._after, self._size)
            if entries:
                self._after = entries[-1].name
            else:
                self._more = False
            self._page = [e for e in entries if e.name != self._hidden]
