"""The namespace on PostgreSQL: each operation is one statement, a call of its server-side
function (:mod:`fs3.meta.pg_functions`), instead of one round trip per read and write.

The Python :class:`~fs3.meta.namespace.Namespace` stays the reference: what it does in a
transaction, the function does in one statement, with the caller, the clock's now and a new
file's layout (chosen here, as the Python does) passed as parameters. Operations not ported
(fsck's ``inode_status``, the trash, users) run the inherited Python code over the same
tables in real transactions, so both kinds interleave freely.
"""

from __future__ import annotations

import logging

from fs3.meta import permissions
from fs3.meta.namespace import (
    Namespace,
    check_mode,
    check_new_length,
    check_quota_limits,
    check_special_kind,
)
from fs3.meta.permissions import READ
from fs3.meta.postgres import GARBAGE_QUERY, PostgresMetaStore, garbage_from_rows
from fs3.meta.sqlite import COLUMNS, row_to_inode
from fs3.meta.store import Garbage
from fs3.paths import check_length, normalize
from fs3.types import DirEntry, Inode

log = logging.getLogger("fs3.meta")

_CALLER = "ROW(%s, %s, %s::BIGINT[], %s)::fs3_caller"


def _inode_call(function: str, params: int) -> str:
    """``SELECT`` of the inode function ``function`` returns, called with the caller and
    ``params`` further parameters."""
    placeholders = ", ".join([_CALLER, *["%s"] * params])
    return f"SELECT {COLUMNS} FROM {function}({placeholders})"


_STAT = _inode_call("fs3_stat", 1)
_OPEN = _inode_call("fs3_open", 2)
_MKDIR = _inode_call("fs3_mkdir", 4)
_CREATE = _inode_call("fs3_create", 7)
_RENAME = _inode_call("fs3_rename", 3)
_TRUNCATE = _inode_call("fs3_truncate", 3)
_SET_LENGTH = _inode_call("fs3_set_length", 3)
_SET_ATTR = _inode_call("fs3_set_attr", 5)
_CHOWN = _inode_call("fs3_chown", 4)
_SYMLINK = _inode_call("fs3_symlink", 3)
_LINK = _inode_call("fs3_link", 3)
_MKNOD = _inode_call("fs3_mknod", 4)
_SET_QUOTA = _inode_call("fs3_set_quota", 3)
_UNLINK = f"SELECT fs3_unlink({_CALLER}, %s, %s)"
_RMDIR = f"SELECT fs3_rmdir({_CALLER}, %s, %s)"
_LISTDIR = f"SELECT entry_name, {COLUMNS} FROM fs3_listdir({_CALLER}, %s, %s, %s)"
_LENGTH_LIMIT = "SELECT fs3_length_limit(%s)"
_TAKE_GARBAGE = GARBAGE_QUERY
_DROP_GARBAGE = (
    "WITH gone AS (DELETE FROM garbage WHERE id = ANY(%s::BIGINT[]) RETURNING id) "
    "SELECT count(*) FROM gone"
)
_TAKE_LEASE = "SELECT won, previous FROM fs3_take_lease(%s, %s, %s)"


def _caller() -> tuple[int, int, list[int], bool]:
    c = permissions.current()
    return c.uid, c.gid, sorted(c.groups), c.admin


class PostgresNamespace(Namespace):
    """:class:`Namespace` over a :class:`PostgresMetaStore`, one statement per operation.

    Args: as :class:`Namespace`.
    """

    store: PostgresMetaStore

    def _inode(self, sql: str, *params: object) -> Inode:
        """Runs an inode function as the current caller and returns the inode."""
        (row,) = self.store.call(sql, (*_caller(), *params))
        return row_to_inode(row)

    def stat(self, path: str) -> Inode:
        return self._inode(_STAT, normalize(path))

    def open(self, path: str, access: int = READ) -> Inode:
        return self._inode(_OPEN, normalize(path), access)

    def mkdir(self, path: str, parents: bool = False, mode: int = 0o755) -> Inode:
        return self._inode(_MKDIR, normalize(path), parents, mode, self._clock())

    def create(
        self,
        path: str,
        exclusive: bool = False,
        chunk_size: int = 4 << 20,
        stripe: int = 0,
        mode: int = 0o644,
    ) -> Inode:
        path = normalize(path)
        layout = self._new_layout(chunk_size, stripe)
        chains = ",".join(map(str, layout.chains))
        return self._inode(
            _CREATE, path, exclusive, mode, self._clock(), layout.chunk_size, chains, layout.seed
        )

    def listdir(self, path: str, after: str = "", limit: int | None = None) -> list[DirEntry]:
        rows = self.store.call(_LISTDIR, (*_caller(), normalize(path), after, limit))
        return [DirEntry(row[0], row_to_inode(row[1:])) for row in rows]

    def rename(self, src: str, dst: str) -> Inode:
        return self._inode(_RENAME, normalize(src), normalize(dst), self._clock())

    def unlink(self, path: str) -> None:
        self.store.call(_UNLINK, (*_caller(), normalize(path), self._clock()))

    def rmdir(self, path: str) -> None:
        self.store.call(_RMDIR, (*_caller(), normalize(path), self._clock()))

    def truncate(self, path: str, length: int) -> Inode:
        check_new_length(length, path)
        return self._inode(_TRUNCATE, normalize(path), length, self._clock())

    def set_length(self, inode_id: int, length: int) -> Inode:
        return self._inode(_SET_LENGTH, inode_id, length, self._clock())

    def set_attr(
        self,
        path: str,
        mode: int | None = None,
        atime: float | None = None,
        mtime: float | None = None,
    ) -> Inode:
        check_mode(mode, path)
        return self._inode(_SET_ATTR, normalize(path), mode, atime, mtime, self._clock())

    def chown(self, path: str, uid: int = -1, gid: int = -1) -> Inode:
        return self._inode(_CHOWN, normalize(path), uid, gid, self._clock())

    def symlink(self, path: str, target: str) -> Inode:
        path = normalize(path)
        check_length(target)
        return self._inode(_SYMLINK, path, target, self._clock())

    def link(self, src: str, dst: str) -> Inode:
        return self._inode(_LINK, normalize(src), normalize(dst), self._clock())

    def mknod(self, path: str, kind: str, mode: int = 0o644) -> Inode:
        path = normalize(path)
        check_special_kind(kind)
        return self._inode(_MKNOD, path, kind, mode, self._clock())

    def set_quota(
        self, path: str, max_bytes: int | None = None, max_inodes: int | None = None
    ) -> Inode:
        check_quota_limits(max_bytes, max_inodes, path)
        return self._inode(_SET_QUOTA, normalize(path), max_bytes, max_inodes)

    def length_limit(self, inode_id: int) -> int | None:
        ((limit,),) = self.store.call(_LENGTH_LIMIT, (inode_id,))
        return limit

    def take_garbage(self, limit: int = 100) -> list[tuple[int, Garbage]]:
        return garbage_from_rows(self.store.call(_TAKE_GARBAGE, (limit,)))

    def drop_garbage(self, garbage_ids: list[int]) -> None:
        self.store.call(_DROP_GARBAGE, (list(garbage_ids),))

    def take_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        ((won, previous),) = self.store.call(_TAKE_LEASE, (name, holder, ttl_s))
        if won and previous != holder:
            log.info("lease %s: %s takes over from %s", name, holder, previous or "nobody")
        return bool(won)
