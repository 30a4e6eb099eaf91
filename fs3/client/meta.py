"""Client of the meta service; finds it through mgmtd and retries while it restarts."""

from __future__ import annotations

from typing import Any

from fs3.client.chunks import ChunkIO
from fs3.errors import Unavailable
from fs3.proto import fs3_pb2 as pb
from fs3.proto.convert import entry_from_pb, inode_from_pb, trash_from_pb
from fs3.types import DirEntry, Inode, RoutingTable, TrashEntry
from fs3.wire.client import ConnectionPool
from fs3.wire.framing import Request
from fs3.wire.ops import METHODS


class MetaClient:
    def __init__(self, chunks: ChunkIO, pool: ConnectionPool) -> None:
        self._chunks = chunks
        self._pool = pool

    def _rpc(self, name: str, request: Any) -> Any:
        method = METHODS[name]
        payload = request.SerializeToString()
        req = Request(method.op, length=len(payload))

        def attempt(table: RoutingTable) -> Any:
            if not table.meta_address:
                raise Unavailable("no meta server registered with mgmtd")
            _, _, body = self._pool.request(table.meta_address, req, payload)
            return method.reply.FromString(bytes(body))

        return self._chunks.retry(f"meta {name}", attempt)

    def stat(self, path: str) -> Inode:
        return inode_from_pb(self._rpc("Stat", pb.PathRequest(path=path)))

    def open(self, path: str) -> Inode:
        return inode_from_pb(self._rpc("Open", pb.PathRequest(path=path)))

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
        return inode_from_pb(self._rpc("Create", req))

    def listdir(self, path: str) -> list[DirEntry]:
        return [entry_from_pb(e) for e in self._rpc("List", pb.PathRequest(path=path)).entries]

    def rename(self, src: str, dst: str) -> Inode:
        return inode_from_pb(self._rpc("Rename", pb.RenameRequest(src=src, dst=dst)))

    def unlink(self, path: str) -> None:
        self._rpc("Unlink", pb.PathRequest(path=path))

    def rmdir(self, path: str) -> None:
        self._rpc("Rmdir", pb.PathRequest(path=path))

    def truncate(self, path: str, length: int) -> Inode:
        return inode_from_pb(self._rpc("Truncate", pb.TruncateRequest(path=path, length=length)))

    def set_length(self, inode_id: int, length: int) -> Inode:
        req = pb.SetLengthRequest(inode_id=inode_id, length=length)
        return inode_from_pb(self._rpc("SetLength", req))

    def symlink(self, path: str, target: str) -> Inode:
        return inode_from_pb(self._rpc("Symlink", pb.SymlinkRequest(path=path, target=target)))

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
