"""POSIX permission rules for meta: pure functions of a caller and inodes, no store.

:mod:`fs3.meta.namespace` calls them once per operation, inside the operation's
transaction. The rules are those of POSIX and Linux (what pjdfstest expects):

- A caller is the owner, else in the group (its gid or a supplementary group), else other;
  only that one class of mode bits applies (an owner denied by ``u-r`` is not saved by
  ``o+r``). An admin (root) passes every mode check.
- Resolving a path needs search (x) on every directory along it.
- Creating, deleting or renaming an entry needs write and search on its directory; in a
  sticky directory (``+t``, like /tmp) only the owner of the entry or of the directory
  deletes or renames it.
- chmod and setting times to given values: the owner or an admin; setting times to now:
  also anyone who may write the file. chown: only an admin changes the owner; the owner
  may change the group to one of their own groups.
- New inodes take the caller's uid, and the caller's gid or, in a set-gid directory, the
  directory's gid (new directories inherit the set-gid bit too).
- Set-uid and set-gid bits are cleared when a non-admin changes a file's data or a file
  changes owner or group; chmod by a non-admin outside the file's group drops set-gid.
"""

from __future__ import annotations

import dataclasses
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from fs3.errors import NotPermitted, PermissionDenied
from fs3.types import DIRECTORY, Inode

READ, WRITE, EXEC = 4, 2, 1


@dataclass(frozen=True)
class Caller:
    """Who a meta request acts for."""

    uid: int
    gid: int
    groups: frozenset[int] = field(default_factory=frozenset)
    admin: bool = False

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


ROOT = Caller(0, 0, admin=True)
"""Meta's own callers (the trash collector, tests of the namespace alone)."""

# The caller of the request this thread serves. A context variable rather than an argument
# of every Namespace and Trash method: the checks sit deep in path resolution, and meta's
# servicer sets it once per request (:func:`acting`).
_CALLER: ContextVar[Caller] = ContextVar("fs3_meta_caller", default=ROOT)


def current() -> Caller:
    """Who the running meta operation acts for (:data:`ROOT` outside a request)."""
    return _CALLER.get()


@contextmanager
def acting(caller: Caller) -> Iterator[None]:
    """Runs the block's namespace operations as ``caller``."""
    reset = _CALLER.set(caller)
    try:
        yield
    finally:
        _CALLER.reset(reset)


def allowed(caller: Caller, inode: Inode, want: int) -> bool:
    """Whether ``caller`` has every bit of ``want`` (READ|WRITE|EXEC) on ``inode``.

    An admin has all, except execute on a file that no one may execute (Linux's rule for
    root)."""
    if caller.admin:
        return not (want & EXEC and inode.kind != DIRECTORY and not inode.mode & 0o111)
    if caller.uid == inode.uid:
        bits = inode.mode >> 6
    elif caller.in_group(inode.gid):
        bits = inode.mode >> 3
    else:
        bits = inode.mode
    return bits & want == want


def check(caller: Caller, inode: Inode, want: int, path: str) -> None:
    """Raises PermissionDenied (EACCES) unless :func:`allowed`."""
    if not allowed(caller, inode, want):
        raise PermissionDenied("permission denied", path)


def check_delete(caller: Caller, parent: Inode, child: Inode, path: str) -> None:
    """Whether ``caller`` may remove or rename entry ``child`` of directory ``parent``:
    write and search on ``parent`` and, when ``parent`` is sticky, ownership of one of
    them. Raises PermissionDenied (EACCES), NotPermitted (EPERM: the sticky bit)."""
    check(caller, parent, WRITE | EXEC, path)
    sticky = parent.mode & stat.S_ISVTX
    if sticky and not caller.admin and caller.uid not in (parent.uid, child.uid):
        raise NotPermitted("sticky directory: only the owner may delete or rename this", path)


def require_admin(caller: Caller, action: str, path: str | None = None) -> None:
    """Raises NotPermitted unless ``caller`` is an admin."""
    if not caller.admin:
        raise NotPermitted(f"{action} needs an admin token", path)


def is_owner(caller: Caller, inode: Inode) -> bool:
    return caller.admin or caller.uid == inode.uid


def chmod_mode(caller: Caller, inode: Inode, mode: int, path: str) -> int:
    """The mode a chmod to ``mode`` by ``caller`` leaves. Raises NotPermitted unless the
    owner or an admin; a non-admin outside the file's group loses set-gid, and a
    non-admin may not set the sticky bit on a file (EFTYPE on BSD, silently dropped on
    Linux: dropped here)."""
    if not is_owner(caller, inode):
        raise NotPermitted("only the owner may change the mode", path)
    if not caller.admin:
        if not caller.in_group(inode.gid):
            mode &= ~stat.S_ISGID
        if inode.kind != DIRECTORY:
            mode &= ~stat.S_ISVTX
    return mode


def check_utime(caller: Caller, inode: Inode, to_now: bool, path: str) -> None:
    """Setting times: the owner or an admin; to now, also whoever may write the file.
    Raises NotPermitted (given times) or PermissionDenied (now)."""
    if is_owner(caller, inode):
        return
    if not to_now:
        raise NotPermitted("only the owner may set the times", path)
    check(caller, inode, WRITE, path)


def chown(caller: Caller, inode: Inode, uid: int, gid: int, path: str) -> Inode:
    """``inode`` after a chown to ``uid``/``gid`` (-1 keeps one). Raises NotPermitted:
    only an admin changes the owner, and the owner changes the group only to one of
    theirs. A file that changes owner or group loses set-uid, and set-gid when its group
    may execute it (without group execute, set-gid means mandatory locking: kept)."""
    new_uid = inode.uid if uid < 0 else uid
    new_gid = inode.gid if gid < 0 else gid
    if not caller.admin:
        if new_uid != inode.uid:
            raise NotPermitted("only an admin may change the owner", path)
        if caller.uid != inode.uid:
            raise NotPermitted("only the owner may change the group", path)
        if new_gid != inode.gid and not caller.in_group(new_gid):
            raise NotPermitted(f"you are not in group {new_gid}", path)
    mode = inode.mode
    if inode.kind != DIRECTORY and (uid >= 0 or gid >= 0):
        mode = cleared_on_write(mode)
    return dataclasses.replace(inode, uid=new_uid, gid=new_gid, mode=mode)


def cleared_on_write(mode: int) -> int:
    """``mode`` without set-uid, and without set-gid when the group may execute."""
    mode &= ~stat.S_ISUID
    if mode & stat.S_IXGRP:
        mode &= ~stat.S_ISGID
    return mode


def after_write(caller: Caller, inode: Inode) -> int:
    """The mode of a file whose data ``caller`` changed (truncate, write): an admin's
    writes keep the set-id bits, anyone else's clear them."""
    return inode.mode if caller.admin else cleared_on_write(inode.mode)


def new_owner(caller: Caller, parent: Inode, kind: str, mode: int) -> tuple[int, int, int]:
    """(uid, gid, mode) of an inode ``caller`` creates in ``parent``: a set-gid directory
    gives its group (and to new directories its set-gid bit); a non-admin outside the
    new file's group may not create it set-gid."""
    if parent.mode & stat.S_ISGID:
        gid = parent.gid
        if kind == DIRECTORY:
            mode |= stat.S_ISGID
    else:
        gid = caller.gid
    if kind != DIRECTORY and not caller.admin and not caller.in_group(gid):
        mode &= ~stat.S_ISGID
    return caller.uid, gid, mode
