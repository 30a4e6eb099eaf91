"""The trash: ``hai fs3 rm -r --expire 1d`` moves a tree into it in one rename; it can be
restored until it expires, then meta's collector deletes it and the chunk collector its
chunks. A plain ``rm -r`` goes the same way with an expiry of now, so a tree is deleted
whole or not at all, and never seen half gone.

Layout: ``/.fs3-trash/<expiry>-<id>/<name>``, one holder folder per deleted tree, named by
when it expires (UTC, ``20260412T101500Z``, rounded up to the second) and the tree's inode
id, holding the tree under its own name. The holder keeps the tree's original path in its
inode's ``target`` field, which directories do not otherwise use, so a restore knows where
the tree goes back to, however long the path. Moving into the trash is a rename: the tree
keeps its inodes and chunks, its bytes and inodes leave the quotas it was under (the trash
sits at the root, outside every quota but the root's), and a restore charges them again,
failing with EDQUOT when they no longer fit.
"""

from __future__ import annotations

import dataclasses
import datetime
import math

from fs3.errors import AlreadyExists, InvalidArgument, NotADirectory, NotFound, NotPermitted
from fs3.meta import permissions
from fs3.meta.namespace import Namespace
from fs3.meta.store import ROOT_ID, MetaTxn
from fs3.paths import normalize
from fs3.types import DIRECTORY, Inode, TrashEntry

TRASH_NAME = ".fs3-trash"
TRASH = "/" + TRASH_NAME
_STAMP = "%Y%m%dT%H%M%SZ"
PURGE_BATCH = 256
"""Inodes one purge transaction deletes: small enough that a huge tree never holds the
store's write lock (SQLite) or a conflict window (PostgreSQL) for long."""


def _stamp(when: float) -> str:
    return datetime.datetime.fromtimestamp(math.ceil(when), datetime.timezone.utc).strftime(_STAMP)


def expiry_of(name: str) -> float | None:
    """When the holder ``name`` expires (seconds since the epoch), None if not a holder."""
    try:
        stamp = datetime.datetime.strptime(name.split("-", 1)[0], _STAMP)
    except ValueError:
        return None
    return stamp.replace(tzinfo=datetime.timezone.utc).timestamp()


def _in_trash(path: str) -> bool:
    return path == TRASH or path.startswith(TRASH + "/")


class Trash:
    """Trash operations over a namespace, each one transaction (purging: several)."""

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns

    def _folder(self, txn: MetaTxn) -> Inode | None:
        found = txn.lookup_inode(ROOT_ID, TRASH_NAME)
        if found is not None and not found.is_dir:
            raise NotADirectory(f"{TRASH} is not a directory; move it away", TRASH)
        return found

    def move(self, path: str, expire_s: float) -> TrashEntry:
        """Moves the file or tree at ``path`` into the trash for ``expire_s`` seconds.

        With ``expire_s`` 0 this is ``rm -r``: the tree leaves the namespace in this one
        transaction (no client sees part of it, and nothing is refused halfway), in a holder
        that is expired already, so no restore brings it back; its inodes are then deleted
        in small transactions before this returns. Should meta stop halfway, the collector
        finishes them.

        Raises NotFound, InvalidArgument (the root, the trash itself, something in the
        trash unless ``expire_s`` is 0, a bad expiry), QuotaExceeded (a root quota with no
        inode left for the holder).
        """
        path = normalize(path)
        if path in ("/", TRASH) or (expire_s and _in_trash(path)):
            raise InvalidArgument("cannot move the root or the trash into the trash", path)
        if not expire_s >= 0:
            raise InvalidArgument(f"expiry must be >= 0 seconds, got {expire_s}", path)
        ns = self.ns

        def op(txn: MetaTxn) -> tuple[TrashEntry, int]:
            sparent, name = ns._parent(txn, path)
            moving = txn.lookup_inode(sparent.id, name)
            if moving is None:
                raise NotFound("no such file or directory", path)
            caller = permissions.current()
            permissions.check_delete(caller, sparent, moving, path)
            if not expire_s:
                _check_tree(txn, caller, moving, path)
            folder = self._folder(txn)
            if folder is None:
                root = txn.get_inode(ROOT_ID)
                assert root is not None
                with permissions.acting(permissions.ROOT):  # the trash is no caller's own
                    folder = ns._make(txn, root, TRASH_NAME, DIRECTORY, 0o755, TRASH)
            now = ns._clock()
            # Rounded up, so it is kept at least that long; a deletion's, down: expired now.
            expiry = _stamp(now + expire_s) if expire_s else _stamp(math.floor(now))
            holder_name = f"{expiry}-{moving.id}"
            holder_path = f"{TRASH}/{holder_name}"
            with permissions.acting(permissions.ROOT):
                holder = ns._make(
                    txn, folder, holder_name, DIRECTORY, 0o700, holder_path, target=path
                )
            # The holder is the caller's: their trash is listed and restored by them alone.
            holder = dataclasses.replace(holder, uid=caller.uid, gid=caller.gid)
            txn.put_inode(holder)
            txn.unlink(sparent.id, name)
            txn.link(holder.id, name, moving.id)
            moved = ns._moved(txn, moving, sparent.id, holder.id, path)
            ns._touch(txn, sparent, -1 if moving.is_dir else 0)
            expires = expiry_of(holder_name) or 0.0
            return TrashEntry(holder_name, path, now, expires, moved), holder.id

        entry, holder_id = ns.store.run(op)
        if not expire_s:
            self._purge_holder(entry.name, holder_id, math.inf)
        return entry

    def list(self) -> list[TrashEntry]:
        """Every tree the caller put in the trash (an admin: everyone's), soonest to expire
        first."""
        caller = permissions.current()

        def op(txn: MetaTxn) -> list[TrashEntry]:
            folder = self._folder(txn)
            out = []
            for name, holder in txn.scan(folder.id) if folder else ():
                if not permissions.is_owner(caller, holder):
                    continue
                expires = expiry_of(name)
                content = txn.entries(holder.id, limit=1) if holder.is_dir else []
                if expires is None or expires <= self.ns._clock() or not content:
                    continue  # not ours, or expired: being deleted, no longer restorable
                out.append(TrashEntry(name, holder.target, holder.ctime, expires, content[0][1]))
            return out

        return self.ns.store.run(op)

    def restore(self, name: str, to: str | None = None) -> Inode:
        """Moves the tree of trash entry ``name`` back to where it was (or to ``to``).

        Raises NotFound (no such entry, it expired, or the destination's parent is gone),
        AlreadyExists (something is at the destination now), InvalidArgument (a destination
        inside the trash), QuotaExceeded.
        """
        ns = self.ns

        def op(txn: MetaTxn) -> Inode:
            folder = self._folder(txn)
            holder = txn.lookup_inode(folder.id, name) if folder else None
            expires = expiry_of(name)
            content = (
                txn.entries(holder.id, limit=1) if holder is not None and holder.is_dir else []
            )
            if holder is None or expires is None or not content:
                raise NotFound("no such trash entry; see `hai fs3 trash ls`", f"{TRASH}/{name}")
            if expires <= ns._clock():
                raise NotFound("trash entry expired and is being deleted", f"{TRASH}/{name}")
            caller = permissions.current()
            if not permissions.is_owner(caller, holder):
                raise NotPermitted("another user's trash entry", f"{TRASH}/{name}")
            dst = normalize(to or holder.target)
            if _in_trash(dst) or dst == "/":
                raise InvalidArgument("cannot restore into the trash or over the root", dst)
            dparent, dname = ns._parent(txn, dst)
            permissions.check(caller, dparent, permissions.WRITE | permissions.EXEC, dst)
            if txn.lookup(dparent.id, dname) is not None:
                raise AlreadyExists("file exists; restore elsewhere with --to", dst)
            cname, moving = content[0]
            txn.unlink(holder.id, cname)
            txn.link(dparent.id, dname, moving.id)
            moved = ns._moved(txn, moving, holder.id, dparent.id, dst)
            ns._touch(txn, dparent, 1 if moving.is_dir else 0)
            txn.unlink(folder.id, name)  # type: ignore[union-attr]
            ns._discard(txn, holder)
            return moved

        return ns.store.run(op)

    def purge(self, now: float | None = None, budget: int = 10 * PURGE_BATCH) -> int:
        """Deletes expired trash entries (their files' chunks go to the garbage queue), at
        most about ``budget`` inodes per call; returns how many inodes went."""
        now = self.ns._clock() if now is None else now

        def expired(txn: MetaTxn) -> list[tuple[str, int]]:
            folder = self._folder(txn)
            found: list[tuple[str, int]] = []
            # Holder names start with their fixed-width expiry, so they sort by it: the
            # expired ones come first, and each costs at least one inode of the budget.
            for name, holder in txn.scan(folder.id) if folder else ():
                expires = expiry_of(name)
                if (expires is not None and expires > now) or len(found) >= budget:
                    break
                if expires is not None:
                    found.append((name, holder.id))
            return found

        deleted = 0
        for name, holder_id in self.ns.store.run(expired):
            deleted += self._purge_holder(name, holder_id, budget - deleted)
        return deleted

    def _purge_holder(self, name: str, holder_id: int, budget: float) -> int:
        """Deletes holder ``name`` and its tree, ``PURGE_BATCH`` inodes a transaction, until
        it is gone or about ``budget`` inodes went; returns how many went."""
        deleted = 0
        while deleted < budget:
            batch = int(min(PURGE_BATCH, budget - deleted))
            gone, finished = self.ns.store.run(
                lambda txn, b=batch: self._delete_some(txn, name, holder_id, b)
            )
            deleted += gone
            if finished:
                break
        return deleted

    def _delete_some(
        self, txn: MetaTxn, name: str, holder_id: int, budget: int
    ) -> tuple[int, bool]:
        """Deletes up to ``budget`` inodes of one holder, deepest first, and the holder once
        empty; returns (inodes deleted, whether the holder is gone)."""
        holder = txn.get_inode(holder_id)
        folder = self._folder(txn)
        if holder is None or folder is None or txn.lookup(folder.id, name) != holder_id:
            return 0, True  # restored or purged meanwhile (by another meta server)
        done = 0

        def visit(directory: Inode) -> None:
            nonlocal done
            for child_name, child in txn.scan(directory.id):
                if done >= budget:
                    return
                if child.is_dir:
                    visit(child)
                    if done >= budget:
                        return  # the budget ran out inside it
                txn.unlink(directory.id, child_name)
                self.ns._discard(txn, child)
                done += 1

        visit(holder)
        if done >= budget and txn.children(holder_id, limit=1):
            return done, False
        txn.unlink(folder.id, name)
        self.ns._discard(txn, holder)
        return done + 1, True


def _check_tree(txn: MetaTxn, caller: permissions.Caller, top: Inode, path: str) -> None:
    """Raises unless ``caller`` may delete everything under ``top`` one by one, as
    ``rm -r`` would: read, write and search on each directory, and the sticky rule for
    each entry. (Moving a tree to the trash is a rename, which needs none of it.)"""
    if caller.admin or not top.is_dir:
        return
    permissions.check(caller, top, permissions.READ, path)
    for name, child in txn.scan(top.id):
        permissions.check_delete(caller, top, child, f"{path}/{name}")
        _check_tree(txn, caller, child, f"{path}/{name}")
