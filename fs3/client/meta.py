"""Client of the meta service; finds it through mgmtd and retries while it restarts.

Every request carries the client's token (:mod:`fs3.meta.users`); a FUSE mount whose token
may act for others says, per request, which process it serves (:meth:`MetaClient.acting_for`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from fs3.client.chunks import ChunkIO
from fs3.errors import CapabilityRefused, Unavailable
from fs3.proto import fs3_pb2 as pb
from fs3.proto.convert import entry_from_pb, inode_from_pb, trash_from_pb, user_from_pb, user_to_pb
from fs3.types import DIRECTORY, DirEntry, Inode, RoutingTable, TrashEntry, User
from fs3.wire.client import ConnectionPool
from fs3.wire.framing import Request
from fs3.wire.ops import METHODS

_CALLER_LEN = struct.Struct("!H")  # fs3.meta.service.CALLER_LEN
READ, WRITE = 4, 2  # open access, as fs3.meta.permissions spells them
LIST_PAGE = 1000
"""Entries per List request of a listing: one round trip per ~100 KiB of entries."""
_ACTING: ContextVar[pb.Caller | None] = ContextVar("fs3_meta_acting", default=None)


def caller_prefix(caller: pb.Caller) -> bytes:
    """What every meta request's payload starts with: who calls (fs3.meta.service reads it)."""
    raw = caller.SerializeToString()
    return _CALLER_LEN.pack(len(raw)) + raw


class MetaClient:
    """Meta's methods. ``token`` says who calls (empty: meta refuses every request)."""

    def __init__(self, chunks: ChunkIO, pool: ConnectionPool, token: str = "") -> None:
        self._chunks = chunks
        self._pool = pool
        self._token = token
        self._own = caller_prefix(pb.Caller(token=token))

    @contextmanager
    def acting_for(self, uid: int, gid: int, groups: Iterable[int] = ()) -> Iterator[None]:
        """The block's requests (in this thread or task, and threads it starts with a copy
        of its context, as trio's do) act for ``uid``/``gid``/``groups``: meta accepts it
        from a mount user's or an admin's token only."""
        caller = pb.Caller(token=self._token, act=True, uid=uid, gid=gid, groups=list(groups))
        reset = _ACTING.set(caller)
        try:
            yield
        finally:
            _ACTING.reset(reset)

    @contextmanager
    def as_self(self) -> Iterator[None]:
        """The block's requests act for this client's own token again (a mount's own
        bookkeeping inside a request it serves for a process)."""
        reset = _ACTING.set(None)
        try:
            yield
        finally:
            _ACTING.reset(reset)

    def _rpc(self, name: str, request: Any) -> Any:
        method = METHODS[name]
        acting = _ACTING.get()
        prefix = self._own if acting is None else caller_prefix(acting)
        payload = prefix + request.SerializeToString()
        req = Request(method.op, length=len(payload))

        def attempt(table: RoutingTable) -> Any:
            if not table.meta_address:
                raise Unavailable("no meta server registered with mgmtd")
            _, _, body = self._pool.request(table.meta_address, req, payload)
            return method.reply.FromString(bytes(body))

        return self._chunks.retry(f"meta {name}", attempt)

    def _granted(self, reply: pb.Inode, path: str, access: int) -> Inode:
        """The inode of an Open, Create or Truncate reply; its capability goes to the chunk
        client, renewed by opening ``path`` again for ``access`` as the same caller."""
        inode = inode_from_pb(reply)
        if reply.capability:
            acting = _ACTING.get()

            def renew() -> None:
                reset = _ACTING.set(acting)
                try:
                    again = self.open(path, access)
                finally:
                    _ACTING.reset(reset)
                if again.id != inode.id:
                    raise CapabilityRefused(f"{path} names another file now; reopen it", path)

            self._chunks.grants.put(inode.id, reply.capability, renew)
        return inode

    def stat(self, path: str) -> Inode:
        return inode_from_pb(self._rpc("Stat", pb.PathRequest(path=path)))

    def open(self, path: str, access: int = READ) -> Inode:
        """The file at ``path`` (symlinks followed), checked for ``access``: READ and/or
        WRITE. Raises PermissionError (fs3.errors.PermissionDenied) without it."""
        reply = self._rpc("Open", pb.PathRequest(path=path, access=access))
        return self._granted(reply, path, access)

    def mkdir(self, path: str, parents: bool, mode: int = 0) -> Inode:
        """``mode`` 0 means the meta default (0o755)."""
        req = pb.MkdirRequest(path=path, parents=parents, mode=mode)
        return inode_from_pb(self._rpc("Mkdir", req))

    def create(
        self, path: str, exclusive: bool, chunk_size: int, stripe: int, mode: int = 0
    ) -> Inode:
        """``mode`` 0 means the meta default (0o644)."""
        req = pb.CreateRequest(
            path=path, exclusive=exclusive, chunk_size=chunk_size, stripe=stripe, mode=mode
        )
        return self._granted(self._rpc("Create", req), path, READ | WRITE)

    def list_page(
        self, path: str, after: str = "", limit: int = LIST_PAGE
    ) -> tuple[list[DirEntry], bool]:
        """One page of directory ``path``: up to ``limit`` entries whose names sort after
        ``after`` (meta may send fewer), and whether more may follow the last of them."""
        reply = self._rpc("List", pb.ListRequest(path=path, after=after, limit=limit))
        return [entry_from_pb(e) for e in reply.entries], reply.more

    def iter_listdir(self, path: str, page: int = LIST_PAGE) -> Iterator[DirEntry]:
        """The entries of directory ``path`` sorted by name, ``page`` per request: a huge
        directory streams without being held whole. Each page starts after the last name
        of the one before, so an entry present throughout comes exactly once however
        others come and go meanwhile."""
        after = ""
        while True:
            entries, more = self.list_page(path, after, page)
            yield from entries
            if not more or not entries:
                return
            after = entries[-1].name

    def walk(self, top: str, page: int = LIST_PAGE) -> Iterator[tuple[str, Inode]]:
        """(path, inode) of everything below directory ``top`` (not ``top`` itself), one
        directory at a time, each read ``page`` entries per request: it holds one page and
        the paths of the directories still to visit, whatever the tree's size. Symlinks
        are not followed."""
        todo = [top]
        while todo:
            folder = todo.pop()
            base = folder.rstrip("/")
            for entry in self.iter_listdir(folder, page):
                path = f"{base}/{entry.name}"
                if entry.inode.kind == DIRECTORY:
                    todo.append(path)
                yield path, entry.inode

    def listdir(self, path: str) -> list[DirEntry]:
        """Every entry of directory ``path``, sorted by name (:meth:`iter_listdir`)."""
        return list(self.iter_listdir(path))

    def rename(self, src: str, dst: str) -> Inode:
        return inode_from_pb(self._rpc("Rename", pb.RenameRequest(src=src, dst=dst)))

    def unlink(self, path: str) -> None:
        self._rpc("Unlink", pb.PathRequest(path=path))

    def rmdir(self, path: str) -> None:
        self._rpc("Rmdir", pb.PathRequest(path=path))

    def truncate(self, path: str, length: int) -> Inode:
        reply = self._rpc("Truncate", pb.TruncateRequest(path=path, length=length))
        return self._granted(reply, path, WRITE)

    def set_length(self, inode_id: int, length: int) -> Inode:
        req = pb.SetLengthRequest(inode_id=inode_id, length=length)
        return inode_from_pb(self._rpc("SetLength", req))

    def symlink(self, path: str, target: str) -> Inode:
        return inode_from_pb(self._rpc("Symlink", pb.SymlinkRequest(path=path, target=target)))

    def link(self, src: str, dst: str) -> Inode:
        """Makes ``dst`` a further name of the file at ``src`` (a hard link)."""
        return inode_from_pb(self._rpc("Link", pb.LinkRequest(src=src, dst=dst)))

    def mknod(self, path: str, kind: str, mode: int = 0o644) -> Inode:
        """Creates a fifo or socket entry (``fs3.types.FIFO`` / ``SOCKET``)."""
        return inode_from_pb(self._rpc("Mknod", pb.MknodRequest(path=path, kind=kind, mode=mode)))

    def readlink(self, path: str) -> str:
        return self._rpc("Readlink", pb.PathRequest(path=path)).target

    def set_attr(
        self,
        path: str,
        mode: int | None = None,
        atime: float | None = None,
        mtime: float | None = None,
    ) -> Inode:
        """Sets mode and/or times of the entry at ``path``; None keeps a value."""
        req = pb.SetAttrRequest(
            path=path,
            set_mode=mode is not None,
            mode=mode or 0,
            set_atime=atime is not None,
            atime=atime or 0.0,
            set_mtime=mtime is not None,
            mtime=mtime or 0.0,
        )
        return inode_from_pb(self._rpc("SetAttr", req))

    def set_quota(
        self, path: str, max_bytes: int | None = None, max_inodes: int | None = None
    ) -> Inode:
        """Sets the limits of directory ``path``'s quota; None keeps one, 0 removes it."""
        req = pb.SetQuotaRequest(
            path=path,
            set_bytes=max_bytes is not None,
            max_bytes=max_bytes or 0,
            set_inodes=max_inodes is not None,
            max_inodes=max_inodes or 0,
        )
        return inode_from_pb(self._rpc("SetQuota", req))

    def length_limit(self, inode_id: int) -> int | None:
        """The length file ``inode_id`` may grow to now, None when no quota limits it."""
        reply = self._rpc("GetLengthLimit", pb.InodeRequest(inode_id=inode_id))
        return reply.length if reply.limited else None

    def trash(self, path: str, expire_s: float) -> TrashEntry:
        """Moves ``path`` (a file or a whole tree) into the trash for ``expire_s`` seconds."""
        req = pb.TrashRequest(path=path, expire_s=expire_s)
        return trash_from_pb(self._rpc("Trash", req))

    def list_trash(self) -> list[TrashEntry]:
        return [trash_from_pb(e) for e in self._rpc("ListTrash", pb.Empty()).entries]

    def restore_trash(self, name: str, to: str | None = None) -> Inode:
        req = pb.RestoreRequest(name=name, to=to or "")
        return inode_from_pb(self._rpc("RestoreTrash", req))

    def inode_status(self, inode_ids: list[int]) -> tuple[dict[int, Inode], dict[int, int]]:
        """Which of ``inode_ids`` exist, and the first chunk index queued for deletion of
        each that has some (fsck)."""
        reply = self._rpc("GetInodeStatus", pb.InodesRequest(inode_ids=inode_ids))
        found = {m.id: inode_from_pb(m) for m in reply.found}
        return found, dict(zip(reply.pending, reply.pending_from, strict=True))

    def chown(self, path: str, uid: int = -1, gid: int = -1) -> Inode:
        """Sets owner and/or group (-1 keeps one), by POSIX's rules."""
        return inode_from_pb(self._rpc("Chown", pb.ChownRequest(path=path, uid=uid, gid=gid)))

    def whoami(self) -> User:
        """Who meta takes this client for (name empty when acting for a process)."""
        return user_from_pb(self._rpc("WhoAmI", pb.Empty()))

    def add_user(self, user: User) -> str:
        """Adds ``user`` (admin only); returns its token, which only this reply carries."""
        return self._rpc("AddUser", pb.AddUserRequest(user=user_to_pb(user))).token

    def list_users(self) -> list[User]:
        return [user_from_pb(u) for u in self._rpc("ListUsers", pb.Empty()).users]

    def remove_user(self, name: str) -> None:
        self._rpc("RemoveUser", pb.NameRequest(name=name))

    def rotate_user(self, name: str) -> str:
        """A new token for user ``name`` (admin only); the old one stops working."""
        return self._rpc("RotateUser", pb.NameRequest(name=name)).token
