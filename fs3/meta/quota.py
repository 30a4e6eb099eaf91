"""Directory quotas: limits on the bytes and inodes below a directory, kept exact.

A directory with a quota carries in its inode (:class:`fs3.types.Quota`) its limits and what
everything below it uses. Each namespace operation that adds or removes inodes or changes a
file's length charges the change to every directory with a quota on the way up to the root,
inside the operation's own transaction: usage stays exact under concurrent operations on any
serialisable store, and a change that would pass a limit raises :class:`QuotaExceeded` and
changes nothing. Only growth is checked, so deleting below a directory that is over its limit
(its limit was lowered) always works.

Cost: a charging operation reads its directory's ancestors (the path resolution read them
already; a PostgreSQL transaction has them cached) and writes each directory with a quota on
the way, so operations below one such directory conflict on its row and PostgreSQL runs the
losers again. A rename between directories below different quotas measures what moves: a
file by its length, a directory by walking its subtree, where a directory with a quota of its
own counts by its recorded usage instead of being walked.
"""

from __future__ import annotations

import dataclasses

from fs3.errors import QuotaExceeded
from fs3.meta.store import ROOT_ID, MetaTxn
from fs3.types import DIRECTORY, FILE, Inode, Quota

Usage = tuple[int, int]  # bytes, inodes


def quota_dirs(txn: MetaTxn, dir_id: int) -> list[Inode]:
    """Directories with a quota from ``dir_id`` up to the root, as the transaction sees
    them now."""
    # An unlinked directory (of a file kept open in a mount) has no ancestors: no quota.
    return [inode for inode in txn.ancestors(dir_id) if inode.quota is not None]


def path_of(txn: MetaTxn, inode: Inode) -> str:
    """The path of directory ``inode``, from the name of each directory on the way up (the
    entries' child index: one lookup per level, however big the parents)."""
    names: list[str] = []
    while inode.id != ROOT_ID:
        parent = txn.get_inode(inode.parent)
        found = txn.names(inode.id, limit=1)  # a directory has one name
        name = found[0][1] if found else None
        if parent is None or name is None:
            return f"<inode {inode.id}, unlinked>/" + "/".join(reversed(names))
        names.append(name)
        inode = parent
    return "/" + "/".join(reversed(names))


def charge(
    txn: MetaTxn,
    dirs: list[Inode],
    nbytes: int,
    ninodes: int,
    path: str | None,
    check: bool = True,
) -> None:
    """Adds ``nbytes`` and ``ninodes`` (either may be negative) to the usage of ``dirs``
    (from :func:`quota_dirs`); without ``check`` even past a limit.

    Raises:
        QuotaExceeded: a growing count would pass a limit; ``path`` is the error's path and
            the message names the directory of the quota.
    """
    for directory in dirs:
        q = directory.quota
        assert q is not None
        used_bytes, used_inodes = q.used_bytes + nbytes, q.used_inodes + ninodes
        if check and nbytes > 0 and q.max_bytes and used_bytes > q.max_bytes:
            raise QuotaExceeded(
                f"disk quota exceeded: {used_bytes} bytes would pass the limit of "
                f"{q.max_bytes} bytes on {path_of(txn, directory)}",
                path,
            )
        if check and ninodes > 0 and q.max_inodes and used_inodes > q.max_inodes:
            raise QuotaExceeded(
                f"disk quota exceeded: {used_inodes} inodes would pass the limit of "
                f"{q.max_inodes} inodes on {path_of(txn, directory)}",
                path,
            )
        quota = dataclasses.replace(q, used_bytes=used_bytes, used_inodes=used_inodes)
        txn.put_inode(dataclasses.replace(directory, quota=quota))


def charge_dir(txn: MetaTxn, dir_id: int, nbytes: int, ninodes: int, path: str | None) -> None:
    """:func:`charge` to every quota at or above directory ``dir_id``."""
    if nbytes or ninodes:
        charge(txn, quota_dirs(txn, dir_id), nbytes, ninodes, path)


def usage_below(txn: MetaTxn, directory: Inode) -> Usage:
    """What everything below ``directory`` uses (not the directory itself); a directory
    below it with a quota of its own counts by its recorded usage."""
    nbytes = ninodes = 0
    stack = [directory.id]  # directories still to walk; each is read a page at a time
    while stack:
        for _, child in txn.scan(stack.pop()):
            ninodes += 1
            if child.kind == FILE:
                nbytes += child.length
            elif child.kind == DIRECTORY:
                if child.quota is not None:
                    nbytes += child.quota.used_bytes
                    ninodes += child.quota.used_inodes
                else:
                    stack.append(child.id)
    return nbytes, ninodes


def usage_of(txn: MetaTxn, inode: Inode) -> Usage:
    """What ``inode`` and everything below it uses, as its parent's quotas count it."""
    if inode.kind == FILE:
        return inode.length, 1
    if inode.kind != DIRECTORY:
        return 0, 1
    if inode.quota is not None:
        return inode.quota.used_bytes, inode.quota.used_inodes + 1
    nbytes, ninodes = usage_below(txn, inode)
    return nbytes, ninodes + 1


def move_charges(
    txn: MetaTxn,
    moving: Inode,
    src_dir: int,
    dst_dir: int,
    path: str | None,
    check: bool = True,
) -> None:
    """Moves the usage of ``moving`` from the quotas above ``src_dir`` to those above
    ``dst_dir`` (a rename; without ``check`` even past a limit); quotas above both are
    left alone. Raises QuotaExceeded."""
    if src_dir == dst_dir:
        return
    src, dst = quota_dirs(txn, src_dir), quota_dirs(txn, dst_dir)
    src_ids, dst_ids = {d.id for d in src}, {d.id for d in dst}
    leaving = [d for d in src if d.id not in dst_ids]
    arriving = [d for d in dst if d.id not in src_ids]
    if not leaving and not arriving:
        return
    nbytes, ninodes = usage_of(txn, moving)
    charge(txn, leaving, -nbytes, -ninodes, path)
    charge(txn, arriving, nbytes, ninodes, path, check)


def new_quota(txn: MetaTxn, directory: Inode, max_bytes: int, max_inodes: int) -> Quota | None:
    """The quota ``directory`` gets with these limits (0: none; both 0: no quota at all),
    its usage measured now when it had no quota before."""
    if not max_bytes and not max_inodes:
        return None
    if directory.quota is not None:
        return dataclasses.replace(directory.quota, max_bytes=max_bytes, max_inodes=max_inodes)
    nbytes, ninodes = usage_below(txn, directory)
    return Quota(max_bytes, max_inodes, nbytes, ninodes)


def length_limit(txn: MetaTxn, inode: Inode) -> int | None:
    """The largest length file ``inode`` may grow to now under the quotas above it, or None
    when none limits its bytes."""
    rooms = [d.quota.room()[0] for d in quota_dirs(txn, inode.parent) if d.quota]
    rooms = [r for r in rooms if r is not None]
    return inode.length + min(rooms) if rooms else None
