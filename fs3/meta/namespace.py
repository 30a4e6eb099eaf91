"""Namespace operations: each one path-resolves and mutates inside a single transaction.

This is the meta service's core; the gRPC servicer only converts messages. Each operation is
a function of its transaction run by :meth:`MetaStore.run`, which runs it again when the
transaction lost a conflict; nothing here keeps state between operations, so several meta
servers may share one store. Paths are
normalised with :func:`fs3.paths.normalize`; symlinks are followed only as the last component
of :meth:`Namespace.open`, the way ``open(2)`` follows them. Directory quotas are charged
inside each operation's transaction (:mod:`fs3.meta.quota`).
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable

from fs3.errors import (
    AlreadyExists,
    DirectoryNotEmpty,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotFound,
    NotPermitted,
)
from fs3.meta import permissions, quota
from fs3.meta.permissions import EXEC, READ, WRITE
from fs3.meta.store import ROOT_ID, Garbage, MetaStore, MetaTxn
from fs3.paths import check_length, components, normalize, split
from fs3.types import DIRECTORY, FIFO, FILE, SOCKET, SYMLINK, DirEntry, Inode, Layout, Quota

_MAX_SYMLINK_HOPS = 8  # like Linux's 40, but fs3 symlinks are rare; a loop fails fast


# Argument checks made before any transaction; every namespace over any store makes them.
def check_new_length(length: int, path: str) -> None:
    """Raises InvalidArgument for a negative file length."""
    if length < 0:
        raise InvalidArgument(f"length must be >= 0, got {length}", path)


def check_mode(mode: int | None, path: str) -> None:
    """Raises InvalidArgument for permission bits outside 0o7777 (None: kept, fine)."""
    if mode is not None and not 0 <= mode <= 0o7777:
        raise InvalidArgument(f"mode must be within 0o7777, got {mode:#o}", path)


def check_special_kind(kind: str) -> None:
    """Raises NotPermitted for a special file other than a fifo or a socket."""
    if kind not in (FIFO, SOCKET):
        raise NotPermitted(f"fs3 keeps only fifos and sockets as special files, not {kind}")


def check_quota_limits(max_bytes: int | None, max_inodes: int | None, path: str) -> None:
    """Raises InvalidArgument for a negative quota limit (None: kept, fine)."""
    for name, value in (("bytes", max_bytes), ("inodes", max_inodes)):
        if value is not None and value < 0:
            raise InvalidArgument(f"quota {name} limit must be >= 0, got {value}", path)


class Namespace:
    """The file tree in a :class:`MetaStore`.

    Args:
        store: where inodes and entries live.
        chains: returns the chain ids new files may use (from the mgmtd chain table).
        clock: wall-clock seconds, injectable for tests.
    """

    def __init__(
        self,
        store: MetaStore,
        chains: Callable[[], list[int]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._chains = chains
        self._clock = clock

    # -- resolution -------------------------------------------------------------------
    def _resolve(self, txn: MetaTxn, path: str) -> Inode:
        caller = permissions.current()
        inode = txn.get_inode(ROOT_ID)
        assert inode is not None, "store lost its root inode"
        walked = ""
        for name in components(path):
            if not inode.is_dir:
                raise NotADirectory("not a directory", walked or "/")
            permissions.check(caller, inode, EXEC, walked or "/")
            walked += "/" + name
            found = txn.lookup_inode(inode.id, name)
            if found is None:
                raise NotFound("no such file or directory", path)
            inode = found
        return inode

    def _parent(self, txn: MetaTxn, path: str) -> tuple[Inode, str]:
        parent_path, name = split(path)
        if not name:
            raise InvalidArgument("operation not allowed on the root", path)
        parent = self._resolve(txn, parent_path)
        if not parent.is_dir:
            raise NotADirectory("parent is not a directory", parent_path)
        return parent, name

    def _touch(self, txn: MetaTxn, inode: Inode, subdirs: int = 0) -> None:
        """Sets directory ``inode``'s times to now (its entries changed) and adds ``subdirs``
        to its link count (a directory came or went), in one write."""
        now = self._clock()
        fresh = txn.get_inode(inode.id) or inode  # this transaction may have charged it
        txn.put_inode(dataclasses.replace(fresh, mtime=now, ctime=now, nlink=fresh.nlink + subdirs))

    def _discard(self, txn: MetaTxn, inode: Inode) -> None:
        """Drops what an entry the caller removed held of ``inode``: one link of a file with
        other names; otherwise the inode itself (a file, symlink, fifo, socket or empty
        directory), releasing what it used in the quotas above it. A file's chunks go to
        the garbage queue."""
        inode = txn.get_inode(inode.id) or inode
        if not inode.is_dir and inode.nlink > 1:
            self._drop_link(txn, inode)
            return
        txn.delete_inode(inode.id)
        quota.charge_dir(txn, inode.parent, -inode.length if inode.kind == FILE else 0, -1, None)
        if inode.kind == FILE and inode.layout.chains:
            txn.add_garbage(Garbage(inode.id, 0, inode.layout.chains))
        parent = txn.get_inode(inode.parent) if inode.is_dir else None
        if parent is not None and parent.id != inode.id:  # its ".." no longer names it
            txn.put_inode(dataclasses.replace(parent, nlink=parent.nlink - 1))

    def _drop_link(self, txn: MetaTxn, inode: Inode) -> None:
        """One name of a hard-linked file went. Quotas count the file once, above its
        ``parent`` (the directory of a name of it): when no name is left there, a remaining
        name's directory takes the file over, even past its limit (a delete never fails)."""
        parent = inode.parent
        names = txn.names(inode.id)
        if names and parent not in {p for p, _ in names}:
            parent = names[0][0]
            quota.move_charges(txn, inode, inode.parent, parent, None, check=False)
        txn.put_inode(
            dataclasses.replace(inode, nlink=inode.nlink - 1, parent=parent, ctime=self._clock())
        )

    def _moved(self, txn: MetaTxn, moving: Inode, src_dir: int, dst_dir: int, path: str) -> Inode:
        """Records that an entry of ``moving`` went from ``src_dir`` to ``dst_dir`` (the
        caller moved the entry): its parent, the quotas that count it, ctime. A hard-linked
        file stays counted where it was unless this entry was in that directory."""
        moving = txn.get_inode(moving.id) or moving
        home = dst_dir if moving.parent == src_dir else moving.parent
        moved = dataclasses.replace(moving, parent=home, ctime=self._clock())
        txn.put_inode(moved)
        quota.move_charges(txn, moved, moving.parent, home, path)
        return moved

    def _new_layout(self, chunk_size: int, stripe: int) -> Layout:
        chains = sorted(self._chains())
        if not chains:
            raise InvalidArgument("the cluster has no chains yet; are storage targets up?")
        if 0 < stripe < len(chains):
            chains = random.sample(chains, stripe)
        return Layout(chunk_size, tuple(chains), random.randrange(len(chains)))

    # -- operations -------------------------------------------------------------------
    def stat(self, path: str) -> Inode:
        """The inode at ``path`` (a symlink itself, not its target). Raises NotFound."""
        path = normalize(path)
        return self.store.run(lambda txn: self._resolve(txn, path))

    def open(self, path: str, access: int = READ) -> Inode:
        """The file at ``path``, following symlinks, for ``access`` (READ and/or WRITE).
        Raises NotFound, IsADirectory, PermissionDenied."""
        start = normalize(path)

        def op(txn: MetaTxn) -> Inode:
            path = start
            for _ in range(_MAX_SYMLINK_HOPS):
                inode = self._resolve(txn, path)
                if inode.kind != SYMLINK:
                    if inode.is_dir:
                        raise IsADirectory("is a directory", path)
                    permissions.check(permissions.current(), inode, access & (READ | WRITE), path)
                    return inode
                path = normalize(
                    inode.target
                    if inode.target.startswith("/")
                    else split(path)[0] + "/" + inode.target
                )
            raise InvalidArgument("too many levels of symbolic links", path)

        return self.store.run(op)

    def mkdir(self, path: str, parents: bool = False, mode: int = 0o755) -> Inode:
        """Creates a directory; with ``parents`` also missing ancestors, and an existing
        directory is fine. Raises AlreadyExists, NotFound (parent), NotADirectory."""
        path = normalize(path)

        def op(txn: MetaTxn) -> Inode:
            if parents:
                inode = txn.get_inode(ROOT_ID)
                assert inode is not None
                walked = ""
                for name in components(path):
                    walked += "/" + name
                    if not inode.is_dir:
                        raise NotADirectory("not a directory", split(walked)[0])
                    permissions.check(permissions.current(), inode, EXEC, split(walked)[0])
                    found = txn.lookup_inode(inode.id, name)
                    if found is None:
                        inode = self._make(txn, inode, name, DIRECTORY, mode, walked)
                    else:
                        inode = found
                if not inode.is_dir:
                    raise AlreadyExists("file exists", path)
                return inode
            parent, name = self._parent(txn, path)
            if txn.lookup(parent.id, name) is not None:
                raise AlreadyExists("file exists", path)
            return self._make(txn, parent, name, DIRECTORY, mode, path)

        return self.store.run(op)

    def _make(
        self,
        txn: MetaTxn,
        parent: Inode,
        name: str,
        kind: str,
        mode: int,
        path: str,
        replacing: Inode | None = None,
        **fields: object,
    ) -> Inode:
        """Creates ``name`` in ``parent`` (at ``path``), owned by the caller, or in place of
        file ``replacing`` (O_TRUNC: its owner and mode stay, and it needs write permission
        rather than the directory's). Raises QuotaExceeded (inodes), PermissionDenied."""
        caller = permissions.current()
        if replacing is None:
            permissions.check(caller, parent, WRITE | EXEC, path)
            uid, gid, mode = permissions.new_owner(caller, parent, kind, mode)
        else:
            permissions.check(caller, replacing, WRITE, path)
            uid, gid = replacing.uid, replacing.gid
            mode = permissions.after_write(caller, replacing)
        quota.charge_dir(txn, parent.id, 0, 1, path)
        now = self._clock()
        fields.update(uid=uid, gid=gid)
        inode = Inode(txn.new_inode_id(), kind, mode, 0, now, now, parent.id, **fields)  # type: ignore[arg-type]
        if kind == DIRECTORY:  # "." and the parent's entry; the parent gains a ".."
            inode = dataclasses.replace(inode, nlink=2)
        txn.put_inode(inode)
        txn.link(parent.id, name, inode.id)
        self._touch(txn, parent, 1 if kind == DIRECTORY else 0)
        return inode

    def create(
        self,
        path: str,
        exclusive: bool = False,
        chunk_size: int = 4 << 20,
        stripe: int = 0,
        mode: int = 0o644,
    ) -> Inode:
        """Creates an empty file. An existing file is replaced by the new, empty one (its
        chunks are reclaimed) unless ``exclusive``. Raises AlreadyExists, IsADirectory,
        NotFound (parent), NotADirectory."""
        path = normalize(path)
        layout = self._new_layout(chunk_size, stripe)

        def op(txn: MetaTxn) -> Inode:
            parent, name = self._parent(txn, path)
            old = txn.lookup_inode(parent.id, name)
            if old is not None:
                if exclusive:
                    raise AlreadyExists("file exists", path)
                if old.is_dir:
                    raise IsADirectory("is a directory", path)
                txn.unlink(parent.id, name)  # a hard link's other names keep the old file
                self._discard(txn, old)  # before the new inode's charge: a full quota allows it
            return self._make(txn, parent, name, FILE, mode, path, old, layout=layout)

        return self.store.run(op)

    def listdir(self, path: str, after: str = "", limit: int | None = None) -> list[DirEntry]:
        """One page of the directory at ``path``: its entries whose names sort after
        ``after`` (code-point order), sorted by name, at most ``limit`` (None: all). The
        next page starts after the last name of this one, so a directory of any size is
        listed page by page, and an entry present throughout appears exactly once however
        others come and go meanwhile. Raises NotFound, NotADirectory, PermissionDenied."""
        path = normalize(path)

        def op(txn: MetaTxn) -> list[DirEntry]:
            inode = self._resolve(txn, path)
            if not inode.is_dir:
                raise NotADirectory("not a directory", path)
            permissions.check(permissions.current(), inode, READ, path)
            return [DirEntry(name, child) for name, child in txn.entries(inode.id, after, limit)]

        return self.store.run(op)

    def rename(self, src: str, dst: str) -> Inode:
        """Moves ``src`` to ``dst`` atomically, replacing a file or an empty directory there.

        Raises NotFound, InvalidArgument (a directory into its own subtree), IsADirectory /
        NotADirectory (kind mismatch with an existing ``dst``), DirectoryNotEmpty.
        """
        src, dst = normalize(src), normalize(dst)

        def op(txn: MetaTxn) -> Inode:
            sparent, sname = self._parent(txn, src)
            moving = self._resolve(txn, src)
            dparent, dname = self._parent(txn, dst)
            if src == dst:
                return moving
            caller = permissions.current()
            permissions.check_delete(caller, sparent, moving, src)
            permissions.check(caller, dparent, WRITE | EXEC, dst)
            if moving.is_dir and dparent.id != sparent.id:
                permissions.check(caller, moving, WRITE, src)  # its ".." changes
            ancestor = dparent
            while moving.is_dir:
                if ancestor.id == moving.id:
                    raise InvalidArgument(f"cannot move {src} into its own subtree", dst)
                if ancestor.id == ROOT_ID:
                    break
                up = txn.get_inode(ancestor.parent)
                assert up is not None
                ancestor = up
            old = txn.lookup_inode(dparent.id, dname)
            if old is not None and old.id == moving.id:
                return moving  # two names of one file: POSIX says rename does nothing
            if old is not None:
                if old.is_dir and not moving.is_dir:
                    raise IsADirectory("is a directory", dst)
                if moving.is_dir and not old.is_dir:
                    raise NotADirectory("not a directory", dst)
                if old.is_dir and txn.children(old.id, limit=1):
                    raise DirectoryNotEmpty("directory not empty", dst)
                permissions.check_delete(caller, dparent, old, dst)
                txn.unlink(dparent.id, dname)
                self._discard(txn, old)
            txn.unlink(sparent.id, sname)
            txn.link(dparent.id, dname, moving.id)
            moved = self._moved(txn, moving, sparent.id, dparent.id, dst)
            subdirs = 1 if moving.is_dir and dparent.id != sparent.id else 0
            self._touch(txn, sparent, -subdirs)
            if dparent.id != sparent.id:
                self._touch(txn, dparent, subdirs)
            return moved

        return self.store.run(op)

    def unlink(self, path: str) -> None:
        """Removes a file or symlink; its chunks are reclaimed. Raises NotFound, IsADirectory."""
        path = normalize(path)

        def op(txn: MetaTxn) -> None:
            parent, name = self._parent(txn, path)
            inode = txn.lookup_inode(parent.id, name)
            if inode is None:
                raise NotFound("no such file or directory", path)
            if inode.is_dir:
                raise IsADirectory("is a directory", path)
            permissions.check_delete(permissions.current(), parent, inode, path)
            txn.unlink(parent.id, name)
            self._discard(txn, inode)
            self._touch(txn, parent)

        self.store.run(op)

    def rmdir(self, path: str) -> None:
        """Removes an empty directory. Raises NotFound, NotADirectory, DirectoryNotEmpty,
        InvalidArgument (the root)."""
        path = normalize(path)

        def op(txn: MetaTxn) -> None:
            parent, name = self._parent(txn, path)
            inode = self._resolve(txn, path)
            if not inode.is_dir:
                raise NotADirectory("not a directory", path)
            if txn.children(inode.id, limit=1):
                raise DirectoryNotEmpty("directory not empty", path)
            permissions.check_delete(permissions.current(), parent, inode, path)
            txn.unlink(parent.id, name)
            self._discard(txn, inode)
            self._touch(txn, parent)

        self.store.run(op)

    def truncate(self, path: str, length: int) -> Inode:
        """Sets a file's length; chunks wholly past the new end are reclaimed. The client
        clears the tail of the last partial chunk. Raises NotFound, IsADirectory,
        InvalidArgument (negative length)."""
        check_new_length(length, path)
        path = normalize(path)

        def op(txn: MetaTxn) -> Inode:
            inode = self._resolve(txn, path)
            if inode.is_dir:
                raise IsADirectory("is a directory", path)
            caller = permissions.current()
            permissions.check(caller, inode, WRITE, path)
            quota.charge_dir(txn, inode.parent, length - inode.length, 0, path)
            lay = inode.layout
            if length < inode.length and lay.chains:
                first_gone = -(-length // lay.chunk_size)
                txn.add_garbage(Garbage(inode.id, first_gone, lay.chains))
            now = self._clock()
            mode = permissions.after_write(caller, inode)
            inode = dataclasses.replace(inode, length=length, mtime=now, ctime=now, mode=mode)
            txn.put_inode(inode)
            return inode

        return self.store.run(op)

    def set_length(self, inode_id: int, length: int) -> Inode:
        """Records the exact length a writer reached at close or fsync. Raises NotFound when
        the file was deleted meanwhile, QuotaExceeded (and records nothing) when the growth
        would pass a directory quota."""

        def op(txn: MetaTxn) -> Inode:
            inode = txn.get_inode(inode_id)
            if inode is None:
                raise NotFound(f"file with inode {inode_id} was deleted while open")
            caller = permissions.current()
            # Its owner too: a file created 0444 is written through the handle that made it.
            if not permissions.is_owner(caller, inode):
                permissions.check(caller, inode, WRITE, f"inode {inode_id}")
            quota.charge_dir(txn, inode.parent, length - inode.length, 0, None)
            now = self._clock()
            mode = permissions.after_write(caller, inode)
            inode = dataclasses.replace(inode, length=length, mtime=now, ctime=now, mode=mode)
            txn.put_inode(inode)
            return inode

        return self.store.run(op)

    def set_attr(
        self,
        path: str,
        mode: int | None = None,
        atime: float | None = None,
        mtime: float | None = None,
    ) -> Inode:
        """Sets the permission bits and/or times of the entry at ``path`` (a symlink itself,
        not its target: callers such as the FUSE mount resolve links first); arguments left
        None keep their value, and ctime becomes now. Raises NotFound, InvalidArgument
        (mode outside 0o7777)."""
        check_mode(mode, path)
        path = normalize(path)

        def op(txn: MetaTxn) -> Inode:
            inode = self._resolve(txn, path)
            now = self._clock()
            caller = permissions.current()
            changes: dict[str, float | int] = {"ctime": now}
            if mode is not None:
                changes["mode"] = permissions.chmod_mode(caller, inode, mode, path)
            if atime is not None or mtime is not None:
                # The FUSE kernel sends "now" as a time: one within a second of meta's clock
                # counts as "now", which a writer who is not the owner may set.
                to_now = all(abs(t - now) < 1.0 for t in (atime, mtime) if t is not None)
                permissions.check_utime(caller, inode, to_now, path)
            if atime is not None:
                changes["atime"] = atime
            if mtime is not None:
                changes["mtime"] = mtime
            inode = dataclasses.replace(inode, **changes)  # type: ignore[arg-type]
            txn.put_inode(inode)
            return inode

        return self.store.run(op)

    def chown(self, path: str, uid: int = -1, gid: int = -1) -> Inode:
        """Sets the owner and/or group of the entry at ``path`` (-1 keeps one), by POSIX's
        rules (:func:`fs3.meta.permissions.chown`); ctime becomes now. Raises NotFound,
        NotPermitted."""
        path = normalize(path)

        def op(txn: MetaTxn) -> Inode:
            inode = self._resolve(txn, path)
            inode = permissions.chown(permissions.current(), inode, uid, gid, path)
            inode = dataclasses.replace(inode, ctime=self._clock())
            txn.put_inode(inode)
            return inode

        return self.store.run(op)

    def symlink(self, path: str, target: str) -> Inode:
        """Creates a symlink at ``path`` pointing to ``target``. Raises AlreadyExists,
        InvalidArgument or NameTooLong (a target with NUL or over PATH_MAX, as POSIX says)."""
        path = normalize(path)
        check_length(target)

        def op(txn: MetaTxn) -> Inode:
            parent, name = self._parent(txn, path)
            if txn.lookup(parent.id, name) is not None:
                raise AlreadyExists("file exists", path)
            return self._make(txn, parent, name, SYMLINK, 0o777, path, target=target)

        return self.store.run(op)

    def link(self, src: str, dst: str) -> Inode:
        """Gives the file at ``src`` (a symlink itself, as Linux's link(2)) the further name
        ``dst``: a hard link. Both names are the same inode, which counts its names in
        ``nlink`` and goes with the last of them; quotas count it once.

        Raises NotFound, AlreadyExists, NotADirectory, NotPermitted (``src`` is a directory,
        as POSIX allows).
        """
        src, dst = normalize(src), normalize(dst)

        def op(txn: MetaTxn) -> Inode:
            inode = self._resolve(txn, src)
            dparent, dname = self._parent(txn, dst)
            if txn.lookup(dparent.id, dname) is not None:
                raise AlreadyExists("file exists", dst)
            if inode.is_dir:
                raise NotPermitted("hard links to directories are not allowed", src)
            permissions.check(permissions.current(), dparent, WRITE | EXEC, dst)
            inode = dataclasses.replace(inode, nlink=inode.nlink + 1, ctime=self._clock())
            txn.put_inode(inode)
            txn.link(dparent.id, dname, inode.id)
            self._touch(txn, dparent)
            return inode

        return self.store.run(op)

    def mknod(self, path: str, kind: str, mode: int = 0o644) -> Inode:
        """Creates a named pipe (``FIFO``) or socket (``SOCKET``) entry at ``path``: the
        name, owner, mode and times live in meta, the data never passes through fs3.

        Raises AlreadyExists, NotFound (parent), NotADirectory, NotPermitted (any other
        kind: device nodes are refused, as in an unprivileged container).
        """
        path = normalize(path)
        check_special_kind(kind)

        def op(txn: MetaTxn) -> Inode:
            parent, name = self._parent(txn, path)
            if txn.lookup(parent.id, name) is not None:
                raise AlreadyExists("file exists", path)
            return self._make(txn, parent, name, kind, mode, path)

        return self.store.run(op)

    def readlink(self, path: str) -> str:
        """The target of the symlink at ``path``. Raises NotFound, InvalidArgument."""
        inode = self.stat(path)
        if inode.kind != SYMLINK:
            raise InvalidArgument("not a symbolic link", normalize(path))
        return inode.target

    def set_quota(
        self, path: str, max_bytes: int | None = None, max_inodes: int | None = None
    ) -> Inode:
        """Sets the byte and/or inode limit of the directory at ``path`` (None keeps a limit,
        0 removes it; with both limits 0 the directory has no quota). A new quota measures
        what the directory holds, in the same transaction. A limit below the current usage
        is accepted: growth then fails until enough is deleted.

        Raises NotFound, NotADirectory, InvalidArgument (a negative limit).
        """
        check_quota_limits(max_bytes, max_inodes, path)
        path = normalize(path)

        def op(txn: MetaTxn) -> Inode:
            inode = self._resolve(txn, path)
            permissions.require_admin(permissions.current(), "setting a quota", path)
            if not inode.is_dir:
                raise NotADirectory("quotas are set on directories", path)
            old = inode.quota or Quota()
            new = quota.new_quota(
                txn,
                inode,
                old.max_bytes if max_bytes is None else max_bytes,
                old.max_inodes if max_inodes is None else max_inodes,
            )
            inode = dataclasses.replace(inode, quota=new)
            txn.put_inode(inode)
            return inode

        return self.store.run(op)

    def length_limit(self, inode_id: int) -> int | None:
        """The largest length file ``inode_id`` may grow to now, or None when no quota limits
        it: writers check it before sending bytes, so a write fails early (set_length still
        decides). Raises NotFound."""

        def op(txn: MetaTxn) -> int | None:
            inode = txn.get_inode(inode_id)
            if inode is None:
                raise NotFound(f"file with inode {inode_id} was deleted while open")
            return quota.length_limit(txn, inode)

        return self.store.run(op)

    def inode_status(self, inode_ids: list[int]) -> tuple[dict[int, Inode], dict[int, int]]:
        """For fsck: the inodes among ``inode_ids`` that exist, and for each of them with
        chunks queued for deletion the first such chunk index (one transaction)."""
        wanted = set(inode_ids)
        permissions.require_admin(permissions.current(), "fsck")

        def op(txn: MetaTxn) -> tuple[dict[int, Inode], dict[int, int]]:
            found = {i: inode for i in wanted if (inode := txn.get_inode(i)) is not None}
            pending: dict[int, int] = {}
            for _, item in txn.garbage(1 << 30):
                if item.inode in wanted:
                    pending[item.inode] = min(
                        pending.get(item.inode, item.from_index), item.from_index
                    )
            return found, pending

        return self.store.run(op)

    def take_garbage(self, limit: int = 100) -> list[tuple[int, Garbage]]:
        return self.store.run(lambda txn: txn.garbage(limit))

    def drop_garbage(self, garbage_ids: list[int]) -> None:
        """Forgets queued items whose chunks are gone, in one transaction (a commit each
        would cost the namespace as much as the unlinks that queued them)."""

        def op(txn: MetaTxn) -> None:
            for garbage_id in garbage_ids:
                txn.drop_garbage(garbage_id)

        self.store.run(op)

    def take_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Takes or renews lease ``name`` for ``holder``; True when ``holder`` has it (see
        :meth:`MetaTxn.take_lease`). Meta servers sharing a store elect a collector by it."""
        return self.store.run(lambda txn: txn.take_lease(name, holder, ttl_s))
