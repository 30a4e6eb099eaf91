"""The FUSE operations: kernel requests mapped onto the fs3 client.

Handlers run in pyfuse3's trio loop. Every call that may block (a meta RPC, a chunk
transfer, a wait for one) runs in a worker thread (:meth:`Fs3Operations._blocking`), so a
slow chunk stalls only the requests that need it. The inode table is touched only in the trio
thread. Every failure reaches the kernel as an errno (:func:`errno_of`); none escapes into
pyfuse3, which would end the mount.

Semantics beyond what fs3's meta offers directly:

- Close-to-open: ``open`` fetches the file's attributes afresh; when they changed the
  kernel's page cache and attributes of the file are dropped, and when the name now holds
  another inode (replaced by another client) the mount answers ESTALE, on which the kernel
  looks the name up again and opens the new file.
- Unlinking a file (or renaming over it) while it is open in this mount moves it into the
  hidden ``/.fs3-orphans`` folder instead; the last release deletes it, so open descriptors
  keep working as POSIX says (NFS's "silly rename"). Other clients' open files are not
  tracked: deleting a file another machine has open ends that machine's reads.
- ``chmod`` and ``utime`` are stored by meta (its SetAttr), so other clients and later
  mounts see them; a ``utime`` on a file with unwritten data commits that data first, or
  its commit would set the modification time again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import itertools
import logging
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pyfuse3
import trio

from fs3.client import FS3FileSystem
from fs3.client.meta import READ, WRITE
from fs3.errors import Fs3Error, Fs3TimeoutError, NotFound
from fs3.fuse.batched import ReadBatcher
from fs3.fuse.files import Cursor, OpenFile, set_file_length
from fs3.fuse.inodes import InodeTable
from fs3.fuse.listing import DirStream
from fs3.fuse.options import MountOptions
from fs3.meta.store import ROOT_ID
from fs3.types import DIRECTORY, FIFO, FILE, SOCKET, SYMLINK, Inode, capacity

log = logging.getLogger("fs3.fuse")
T = TypeVar("T")

ORPHANS = ".fs3-orphans"
"""Root folder of files unlinked while open; hidden from listings and lookups."""
NAME_MAX = 255  # as ext4 and most Linux file systems; statfs reports it
BLKSIZE = 1 << 20  # st_blksize: the FUSE request size, so stdio and cp move 1 MiB at a time
RELEASE_WAIT_S = 0.2
"""How long an unlink waits for the release of a file every descriptor of which was closed:
the kernel sends release after close returns, so ``close(); unlink()`` often finds the file
still open, and moving it to the orphans would cost two more meta calls."""
CAPACITY_TTL_S = 1.0
"""How long statfs reuses the capacity mgmtd reported: ``df`` and file managers call it in
bursts, and targets report only every heartbeat anyway."""
_KIND_BITS = {
    FILE: stat.S_IFREG,
    DIRECTORY: stat.S_IFDIR,
    SYMLINK: stat.S_IFLNK,
    FIFO: stat.S_IFIFO,
    SOCKET: stat.S_IFSOCK,
}
_SPECIAL = {stat.S_IFIFO: FIFO, stat.S_IFSOCK: SOCKET}
"""Special files kept as entries; the kernel serves their I/O on each host itself."""
_ACCESS = {os.O_RDONLY: READ, os.O_WRONLY: WRITE}  # O_RDWR: both


def errno_of(err: BaseException) -> int:
    """The errno a failed fs3 call becomes: the builtin's errno where fs3 set one (ENOENT,
    EEXIST, ENOTDIR, EISDIR, ENOTEMPTY, EINVAL), ETIMEDOUT when retries ran out (an
    unreachable cluster), EIO for everything else (lost data, a dropped connection)."""
    if isinstance(err, pyfuse3.FUSEError):
        return err.errno
    if isinstance(err, Fs3TimeoutError):
        return errno.ETIMEDOUT
    if isinstance(err, OSError) and err.errno:
        return err.errno
    return errno.EIO


def groups_of(pid: int) -> list[int]:
    """The supplementary groups of process ``pid`` (the kernel tells a FUSE server only the
    uid, gid and pid of a request); none when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return [int(g) for g in line.split()[1:]]
    except OSError:
        pass
    return []


def _handler(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(self: Fs3Operations, *args: Any) -> T:
        try:
            with self._acting(args):
                return await fn(self, *args)
        except pyfuse3.FUSEError:
            raise
        except (Fs3Error, OSError) as err:
            code = errno_of(err)
            if code in (errno.EIO, errno.ETIMEDOUT):
                log.warning("%s: %s", fn.__name__, err)
            raise pyfuse3.FUSEError(code) from None
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _fuse_error(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


class Fs3Operations(pyfuse3.Operations):
    """pyfuse3 handlers over one :class:`FS3FileSystem`."""

    supports_dot_lookup = False
    enable_writeback_cache = False  # the kernel would own sizes and times; close-to-open is ours

    def __init__(self, fs: FS3FileSystem, options: MountOptions) -> None:
        super().__init__()
        self.fs = fs
        self.meta = fs.meta
        self.options = options
        self.table = InodeTable(fs.meta.stat("/"), options.attr_timeout)
        self.files: dict[int, OpenFile] = {}
        self._handles: dict[int, OpenFile] = {}
        self._cursors: dict[int, Cursor] = {}
        self._flushed: set[int] = set()  # handles flushed (closed once) and idle since
        self._released: dict[int, trio.Event] = {}  # set when an inode's last handle goes
        self._dirs: dict[int, tuple[int, DirStream]] = {}
        self._next_fh = itertools.count(1)
        self._limiter: trio.CapacityLimiter | None = None
        self.initialised = trio.Event()
        """Set once the kernel's INIT request has been answered."""
        self._executor = ThreadPoolExecutor(options.io_threads, "fs3-fuse-io")
        self._batcher = ReadBatcher(fs.chunks, fs.batch_executor, options.read_batches)
        self._capacity_seen: tuple[float, int, int] | None = None  # when, total, free
        me = f"{socket.gethostname()}-{os.getpid()}"
        self._orphan_names = (f"{me}-{n}" for n in itertools.count())
        self.uid, self.gid = os.getuid(), os.getgid()
        self._act = self._may_act()
        self._opener: dict[int, pyfuse3.RequestContext] = {}  # file handle -> who opened it

    def _may_act(self) -> bool:
        """Whether this mount's token may act for the processes calling it (a mount user's
        or an admin's): then meta checks each request as its process; else as the token's
        own user, whoever calls."""
        try:
            with self.meta.acting_for(self.uid, self.gid):
                self.meta.whoami()
        except PermissionError:
            return False
        return True

    def _acting(self, args: tuple) -> contextlib.AbstractContextManager[None]:
        """Acts for the process a request came from: its context, or for a request on an
        open file (no context given) the process that opened it."""
        ctx = next((a for a in args if isinstance(a, pyfuse3.RequestContext)), None)
        if ctx is None and args and isinstance(args[0], int):
            ctx = self._opener.get(args[0])
        if not self._act or ctx is None:
            return contextlib.nullcontext()
        return self.meta.acting_for(ctx.uid, ctx.gid, groups_of(ctx.pid))

    def init(self) -> None:
        self.initialised.set()  # the reply follows in the same step of the loop

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        if self._limiter is None:
            self._limiter = trio.CapacityLimiter(self.options.threads)
        return await trio.to_thread.run_sync(functools.partial(fn, *args), limiter=self._limiter)

    # -- attributes --------------------------------------------------------------------
    def _attr(self, inode: Inode, ttl: float | None = None) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        opened = self.files.get(inode.id)
        if opened is not None:
            inode = opened.inode
        a.st_ino = inode.id
        a.entry_timeout = self.options.entry_timeout
        a.attr_timeout = self.options.attr_timeout if ttl is None else ttl
        a.st_mode = _KIND_BITS[inode.kind] | (inode.mode & 0o7777)
        if inode.kind == FILE:
            a.st_size = opened.size if opened is not None else inode.length
        elif inode.kind == SYMLINK:
            a.st_size = len(inode.target.encode())
        # An open file unlinked here lives on under its orphan name, which is no name of it.
        a.st_nlink = max(inode.nlink - (1 if opened is not None and opened.orphan else 0), 0)
        a.st_uid, a.st_gid = inode.uid, inode.gid
        a.st_blksize = BLKSIZE
        a.st_blocks = -(-a.st_size // 512)
        a.st_mtime_ns = round(inode.mtime * 1e9)
        a.st_atime_ns = round((inode.atime or inode.mtime) * 1e9)
        a.st_ctime_ns = int(inode.ctime * 1e9)
        return a

    @staticmethod
    def _name(name: bytes) -> str:
        if len(name) > NAME_MAX:
            raise _fuse_error(errno.ENAMETOOLONG)
        try:
            return name.decode()
        except UnicodeDecodeError:
            raise _fuse_error(errno.EINVAL) from None  # fs3 names are UTF-8

    def _child(self, parent: int, name: bytes) -> tuple[str, str]:
        """(name, fs3 path) of ``name`` in ``parent``; the orphan folder does not exist."""
        text = self._name(name)
        if parent == ROOT_ID and text == ORPHANS:
            raise _fuse_error(errno.ENOENT)
        return text, self.table.child_path(parent, text)

    async def _stat_known(self, ino: int, access: int = 0) -> Inode:
        """Fresh attributes of a known inode, checked for ``access`` (READ/WRITE, 0: none);
        ESTALE when its name now holds another."""
        path = self.table.path(ino)
        try:
            if access:
                inode = await self._blocking(self.meta.open, path, access)
            else:
                inode = await self._blocking(self.meta.stat, path)
        except NotFound:
            raise _fuse_error(errno.ESTALE) from None
        if inode.id != ino:
            raise _fuse_error(errno.ESTALE)
        self.table.update(inode)
        return inode

    # -- lookups -----------------------------------------------------------------------
    @_handler
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if name in (b".", b".."):  # only NFS export asks; the kernel resolves them itself
            node = self.table.node(parent_inode)
            if name == b"..":
                node = self.table.node(node.parent)
            node.lookups += 1
            return self._attr(node.inode)
        text, path = self._child(parent_inode, name)
        inode = await self._blocking(self.meta.stat, path)
        self.table.remember(parent_inode, text, inode)
        return self._attr(inode)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.table.forget(ino, count)

    @_handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        opened = self.files.get(inode)
        if opened is not None:
            return self._attr(opened.inode)
        node = self.table.node(inode)
        fresh = self.table.fresh_for(inode)
        if node.detached or fresh:
            return self._attr(node.inode, fresh)
        return self._attr(await self._stat_known(inode))

    @_handler
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            self.table.update(
                await self._blocking(self.meta.chown, self.table.path(inode), uid, gid)
            )
        if fields.update_size:
            opened = self._handles.get(fh) if fh is not None else self.files.get(inode)
            if opened is not None:
                await self._truncate(opened, attr.st_size)
            else:
                current = await self._stat_known(inode)
                if current.kind != FILE:
                    raise _fuse_error(errno.EISDIR if current.is_dir else errno.EINVAL)
                new = await self._blocking(
                    set_file_length, self.fs, current, current.length, attr.st_size
                )
                self.table.update(new)
        if fields.update_mode or fields.update_mtime or fields.update_atime:
            await self._set_attr(
                inode,
                attr.st_mode & 0o7777 if fields.update_mode else None,
                attr.st_atime_ns / 1e9 if fields.update_atime else None,
                attr.st_mtime_ns / 1e9 if fields.update_mtime else None,
            )
        return await self.getattr(inode, ctx)

    async def _set_attr(
        self, ino: int, mode: int | None, atime: float | None, mtime: float | None
    ) -> Inode:
        """Stores mode and/or times of ``ino`` in meta; ESTALE when its name now holds
        another inode (the change then went to that one, as it would over NFS)."""
        opened = self.files.get(ino)
        if opened is not None and mtime is not None and not opened.idle():
            await self._commit_file(opened)  # its commit would set mtime after ours
        new = await self._blocking(self.meta.set_attr, self.table.path(ino), mode, atime, mtime)
        if new.id != ino:
            raise _fuse_error(errno.ESTALE)
        self.table.update(new)
        if opened is not None:
            opened.inode = dataclasses.replace(
                opened.inode, mode=new.mode, mtime=new.mtime, atime=new.atime, ctime=new.ctime
            )
        return new

    @_handler
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self.table.node(inode)
        if node.inode.kind == SYMLINK and node.inode.target:
            return node.inode.target.encode()  # a symlink's target never changes
        return (await self._blocking(self.meta.readlink, self.table.path(inode))).encode()

    @_handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        total, free = await self._blocking(self._capacity)
        s = pyfuse3.StatvfsData()
        s.f_bsize = BLKSIZE
        s.f_frsize = 4096
        s.f_blocks = total // s.f_frsize
        s.f_bfree = s.f_bavail = free // s.f_frsize
        s.f_files = s.f_ffree = s.f_favail = 1 << 32
        s.f_namemax = NAME_MAX
        return s

    def _capacity(self) -> tuple[int, int]:
        """(total, free) bytes of the file systems under the targets, each counted once,
        as the targets last reported them to mgmtd (raw bytes: a file takes its length
        once per replica)."""
        now = time.monotonic()
        if self._capacity_seen is None or now - self._capacity_seen[0] > CAPACITY_TTL_S:
            self._capacity_seen = (now, *capacity(self.fs.mgmtd.stats()))
        return self._capacity_seen[1], self._capacity_seen[2]

    # -- directories -------------------------------------------------------------------
    @_handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self.table.path(inode)  # ESTALE for a directory that lost its place
        fh = next(self._next_fh)
        hidden = ORPHANS if inode == ROOT_ID else None
        self._dirs[fh] = (inode, DirStream(self.meta.list_page, hidden))
        self._opener[fh] = ctx  # readdir lists as this process
        return fh

    @_handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        ino, stream = self._dirs[fh]
        # A page of meta's listing at a time, resumed by keyset (fs3.fuse.listing).
        path = self.table.path(ino)
        for cookie, entry in await self._blocking(stream.from_cookie, path, start_id):
            if not pyfuse3.readdir_reply(
                token, entry.name.encode(), self._attr(entry.inode), cookie
            ):
                break
            self.table.remember(ino, entry.name, entry.inode)

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)
        self._opener.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        """Nothing to do: every namespace change is committed by meta before it returns."""

    @_handler
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text, path = self._child(parent_inode, name)
        inode = await self._blocking(self.meta.mkdir, path, False, mode & 0o7777)
        if not mode & 0o7777:  # meta reads mode 0 as its default
            inode = await self._blocking(self.meta.set_attr, path, 0)
        self.table.remember(parent_inode, text, inode)
        self.table.touched(parent_inode, subdirs=1)
        return self._attr(inode)

    @_handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        text, path = self._child(parent_inode, name)
        await self._blocking(self.meta.rmdir, path)
        self._forget_name(parent_inode, text)
        self.table.touched(parent_inode, subdirs=-1)

    @_handler
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text, path = self._child(parent_inode, name)
        try:
            target_text = target.decode()
        except UnicodeDecodeError:
            raise _fuse_error(errno.EINVAL) from None
        inode = await self._blocking(self.meta.symlink, path, target_text)
        self.table.remember(parent_inode, text, inode)
        self.table.touched(parent_inode)
        return self._attr(inode)

    @_handler
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text, path = self._child(new_parent_inode, new_name)
        opened = self.files.get(inode)
        linked = await self._blocking(self.meta.link, self.table.path(inode), path)
        if linked.id != inode:
            raise _fuse_error(errno.ESTALE)  # its name now holds another file
        self.table.remember(new_parent_inode, text, linked)
        self.table.touched(new_parent_inode)
        if opened is not None:
            opened.inode = dataclasses.replace(opened.inode, nlink=linked.nlink, ctime=linked.ctime)
        return self._attr(linked)

    @_handler
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        kind = _SPECIAL.get(stat.S_IFMT(mode))
        if kind is None:
            raise _fuse_error(errno.EPERM)  # device nodes: refused, as in a container
        text, path = self._child(parent_inode, name)
        perm = mode & 0o7777
        inode = await self._blocking(self.meta.mknod, path, kind, perm)
        if not perm:  # meta reads mode 0 as its default
            inode = await self._blocking(self.meta.set_attr, path, 0)
        self.table.remember(parent_inode, text, inode)
        self.table.touched(parent_inode)
        return self._attr(inode)

    @_handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        text, path = self._child(parent_inode, name)
        ino = self.table.child(parent_inode, text)
        if ino is not None and await self._still_open(ino):
            await self._orphan(ino, path, parent_inode, text)
        else:
            await self._blocking(self.meta.unlink, path)
            self.table.unlinked(parent_inode, text)
            opened = self.files.get(ino) if ino is not None else None
            if opened is not None:  # another name of a file open here (a hard link)
                opened.inode = dataclasses.replace(opened.inode, nlink=opened.inode.nlink - 1)
        self.table.touched(parent_inode)

    def _forget_name(self, parent: int, name: str) -> None:
        ino = self.table.child(parent, name)
        if ino is not None:
            self.table.detach(ino)

    async def _orphan(self, ino: int, path: str, parent: int, name: str) -> None:
        """Moves an open file's name ``name`` in ``parent`` (at ``path``) out of the
        namespace; its last release deletes it (and the file, unless it has other names)."""
        orphan = f"/{ORPHANS}/{next(self._orphan_names)}"

        def move() -> None:
            # As the caller, who needs the right to delete ``path``; the folder is sticky
            # and everyone's, like /tmp, and the mount's own.
            try:
                self.meta.rename(path, orphan)
            except NotFound:
                with self.meta.as_self():
                    self.meta.mkdir(f"/{ORPHANS}", True, 0o1777)
                self.meta.rename(path, orphan)

        await self._blocking(move)
        self.table.unlinked(parent, name)
        if self._is_open(ino):
            self.files[ino].orphan = orphan
        else:  # released while it moved (the kernel sends release after close returns)
            await self._blocking(self._unlink_orphan, orphan)

    def _unlink_orphan(self, orphan: str) -> None:
        with self.meta.as_self():
            self.meta.unlink(orphan)

    def _is_open(self, ino: int) -> bool:
        opened = self.files.get(ino)
        return opened is not None and opened.handles > 0

    async def _still_open(self, ino: int) -> bool:
        """Whether ``ino`` is open, after waiting a little for a release on its way, and
        has no orphan name yet (which keeps it alive however many other names go)."""
        if not self._is_open(ino) or self.files[ino].orphan:
            return False
        opened = self.files[ino]
        if all(fh in self._flushed for fh, f in self._handles.items() if f is opened):
            released = self._released.setdefault(ino, trio.Event())
            with trio.move_on_after(RELEASE_WAIT_S):
                await released.wait()
        return self._is_open(ino)

    @_handler
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise _fuse_error(errno.EINVAL)  # fs3 has no atomic exchange; Linux's "unsupported"
        old_text, src = self._child(parent_inode_old, name_old)
        new_text, dst = self._child(parent_inode_new, name_new)
        if flags & pyfuse3.RENAME_NOREPLACE:
            # Checked, then renamed: not atomic against another client creating dst between.
            if await self._blocking(self._exists, dst):
                raise _fuse_error(errno.EEXIST)
        moving = self.table.child(parent_inode_old, old_text)
        victim = self.table.child(parent_inode_new, new_text)
        if victim is not None and victim != moving and await self._still_open(victim):
            if moving is not None and self.table.is_dir(moving):
                raise _fuse_error(errno.ENOTDIR)  # a directory cannot replace a file
            await self._orphan(victim, dst, parent_inode_new, new_text)
        await self._blocking(self.meta.rename, src, dst)
        # Directory link counts as meta keeps them: a moved directory's ".." changes parent,
        # a replaced one's goes.
        moved_dir = int(
            moving is not None
            and self.table.is_dir(moving)
            and parent_inode_old != parent_inode_new
        )
        replaced_dir = int(victim is not None and victim != moving and self.table.is_dir(victim))
        self.table.touched(parent_inode_old, subdirs=-moved_dir)
        self.table.touched(parent_inode_new, subdirs=moved_dir - replaced_dir)
        if moving is not None:
            self.table.moved(moving, parent_inode_new, new_text)

    def _exists(self, path: str) -> bool:
        try:
            self.meta.stat(path)
        except NotFound:
            return False
        return True

    # -- files -------------------------------------------------------------------------
    def _new_handle(self, opened: OpenFile, ctx: pyfuse3.RequestContext) -> int:
        fh = next(self._next_fh)
        self._opener[fh] = ctx
        opened.handles += 1
        self._handles[fh] = opened
        self._cursors[fh] = Cursor()
        return fh

    async def _drop_handle(self, fh: int) -> None:
        self._opener.pop(fh, None)
        opened = self._handles.pop(fh)
        del self._cursors[fh]
        self._flushed.discard(fh)
        opened.handles -= 1
        if opened.handles:
            return
        released = self._released.pop(opened.inode.id, None)
        if released is not None:
            released.set()
        try:
            if not opened.idle():
                committed = await self._blocking(opened.commit)
                if committed is not None:
                    self.table.update(committed)
        finally:
            if opened.handles == 0 and self.files.get(opened.inode.id) is opened:
                del self.files[opened.inode.id]
                opened.close()
                if opened.orphan:
                    await self._blocking(self._unlink_orphan, opened.orphan)

    @_handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        keep_cache = True
        opened = self.files.get(inode)
        access = _ACCESS.get(flags & os.O_ACCMODE, READ | WRITE)
        if opened is None:
            seen = self.table.node(inode).inode
            fresh = await self._stat_known(inode, access)  # close-to-open: revalidate
            if fresh.kind != FILE:
                raise _fuse_error(errno.EISDIR if fresh.is_dir else errno.EINVAL)
            if (fresh.length, fresh.mtime) != (seen.length, seen.mtime):
                keep_cache = False  # drops the kernel's pages of the file
                await self._blocking(pyfuse3.invalidate_inode, inode, True)  # and its size
            opened = self.files[inode] = OpenFile(self.fs, fresh, self._executor)
        else:
            await self._blocking(self.meta.open, self.table.path(inode), access)
        fh = self._new_handle(opened, ctx)
        try:
            if flags & os.O_TRUNC and flags & os.O_ACCMODE != os.O_RDONLY:
                await self._truncate(opened, 0)
        except BaseException:
            await self._drop_handle(fh)
            raise
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache, direct_io=bool(flags & os.O_DIRECT))

    @_handler
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        text, path = self._child(parent_inode, name)
        c = self.fs.config.client
        perm = mode & 0o7777
        try:
            inode = await self._blocking(self.meta.create, path, True, c.chunk_size, c.stripe, perm)
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            # Created by another client since the kernel looked: open that one.
            access = _ACCESS.get(flags & os.O_ACCMODE, READ | WRITE)
            inode = await self._blocking(self.meta.open, path, access)
        else:
            if not perm:  # meta reads mode 0 as its default
                inode = await self._blocking(self.meta.set_attr, path, 0)
        self.table.remember(parent_inode, text, inode)
        self.table.touched(parent_inode)
        opened = self.files.get(inode.id)
        if opened is None:
            opened = self.files[inode.id] = OpenFile(self.fs, inode, self._executor)
        fh = self._new_handle(opened, ctx)
        try:
            if flags & os.O_TRUNC and opened.size:
                await self._truncate(opened, 0)
        except BaseException:
            await self._drop_handle(fh)
            raise
        info = pyfuse3.FileInfo(fh=fh, direct_io=bool(flags & os.O_DIRECT))
        return info, self._attr(inode)

    @_handler
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        self._flushed.discard(fh)
        opened, cursor = self._handles[fh], self._cursors[fh]
        span = opened.random_span(cursor, off, size)
        if span is not None:  # random: batched with the other readers' (fs3.fuse.batched)
            alone = functools.partial(self._blocking, opened.read_span, *span)
            return await self._batcher.read(opened.inode, *span, alone)
        data = opened.read(cursor, off, size, block=False)  # read ahead already: no thread
        if data is not None:
            return data
        return await self._blocking(opened.read, cursor, off, size)

    @_handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        self._flushed.discard(fh)
        opened = self._handles[fh]
        written = opened.write(off, buf, block=False)  # only buffered: no thread
        if written is None:
            written = await self._blocking(opened.write, off, buf)
        return written

    @_handler
    async def flush(self, fh: int) -> None:
        self._flushed.add(fh)  # a descriptor of it was closed
        await self._commit(fh)

    @_handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self._commit(fh)

    async def _commit(self, fh: int) -> None:
        opened = self._handles[fh]
        if not opened.idle():
            await self._commit_file(opened)

    async def _truncate(self, opened: OpenFile, length: int) -> None:
        # The table must learn the new length too: a getattr after the last release answers
        # from it, and the kernel appends at the size it answers (issue 18: a stale length 4
        # after ": > f" made "echo x >> f" write at offset 4).
        self.table.update(await self._blocking(opened.truncate, length))

    async def _commit_file(self, opened: OpenFile) -> None:
        committed = await self._blocking(opened.commit)
        if committed is not None:
            self.table.update(committed)

    @_handler
    async def release(self, fh: int) -> None:
        await self._drop_handle(fh)

    # -- end of the mount --------------------------------------------------------------
    def shutdown(self) -> None:
        """Commits what open files still buffer and deletes orphans; called after the loop
        ended (the kernel sends no release for files still open at unmount)."""
        for opened in list(self.files.values()):
            try:
                opened.commit()
                if opened.orphan:
                    self.meta.unlink(opened.orphan)
            except Fs3Error as err:
                log.error("inode %d: data not committed at unmount: %s", opened.inode.id, err)
        self.files.clear()
        self._executor.shutdown(wait=True)
