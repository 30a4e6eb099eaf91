"""``fs3.FS3FileSystem``: the fsspec filesystem for ``fs3://`` URLs.

The cluster address comes from the URL (``fs3://HOST:PORT/path``), the ``address``
argument, ``FS3_CLUSTER`` or the config file; the token from the ``token`` argument,
``FS3_TOKEN``, the config file, else the admin token a local cluster of this account left
for that address (:func:`local_token_file`). Files are close-to-open: a reader sees what
writers closed (or fsynced) before it opened the file.
"""

from __future__ import annotations

import io
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fsspec.callbacks import DEFAULT_CALLBACK, Callback
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from fs3.client.chunks import ChunkIO
from fs3.client.meta import WRITE, MetaClient
from fs3.client.quota import LengthGuard
from fs3.client.ranges import read_ranges
from fs3.config import load_config
from fs3.errors import (
    AlreadyExists,
    DirectoryNotEmpty,
    Fs3Error,
    InvalidArgument,
    IsADirectory,
    QuotaExceeded,
)
from fs3.meta.trash import TRASH
from fs3.mgmtd.client import MgmtdClient
from fs3.paths import normalize
from fs3.types import DIRECTORY, FILE, SYMLINK, Inode, Quota, TrashEntry
from fs3.wire.client import ConnectionPool

BATCHES_IN_FLIGHT = 16
"""Read batches (and big pieces) of ``cat_ranges`` in flight at once, for all its callers."""

# One mgmtd HOST:PORT, or several separated by commas (a primary and its standbys).
_ADDRESS = re.compile(r"^[\w.\-\[\]:]+:\d+(,[\w.\-\[\]:]+:\d+)*$")


def local_token_file(address: str) -> Path:
    """Where ``hai fs3 up`` leaves its admin token for this account's clients of the
    cluster at ``address`` (0600 in a 0700 folder), so they need no FS3_TOKEN."""
    return Path.home() / ".config" / "fs3" / "tokens" / re.sub(r"[^\w.-]", "_", address)


def _local_token(address: str) -> str:
    try:
        return local_token_file(address).read_text().strip()
    except OSError:  # none, or another account's home (a process that changed uid)
        return ""


@contextmanager
def _no_new_file_on_failure(
    path: Any, exists: Callable[[Any], bool], remove: Callable[[Any], None]
) -> Iterator[None]:
    """Removes ``path`` when the block fails and ``path`` did not exist before it, so a copy
    refused midway (a quota, a lost chunk) leaves no new empty or partial file behind; a
    file that was there before stays as the failure left it. The block's error propagates."""
    existed = exists(path)
    try:
        yield
    except BaseException:
        if not existed:
            with suppress(Fs3Error, OSError):  # the copy's own error is the one to report
                remove(path)
        raise


class FS3FileSystem(AbstractFileSystem):
    """An fsspec filesystem over an fs3 cluster.

    Args:
        address: mgmtd ``HOST:PORT``; overrides URL, ``FS3_CLUSTER`` and the config file.
        config_path: fs3 YAML config file.
        chunk_size: chunk size for new files (default from config, 4 MiB).
        token: who calls (default ``FS3_TOKEN``, the config, a local cluster's admin token).
    """

    protocol = "fs3"
    root_marker = "/"

    def __init__(
        self,
        address: str | None = None,
        config_path: str | None = None,
        chunk_size: int | None = None,
        token: str | None = None,
        **storage_options: Any,
    ) -> None:
        super().__init__(**storage_options)
        self.url_address = address
        """The cluster address the URL or caller named (None: from config or environment)."""
        client: dict[str, Any] = {}
        if address:
            client["address"] = address
        if token:
            client["token"] = token
        if chunk_size:
            client["chunk_size"] = chunk_size
        self.config = load_config(config_path, overrides={"client": client})
        t = self.config.timeouts
        self.mgmtd = MgmtdClient(self.config.client.address, t.rpc_s, self.config.tls)
        self.pool = ConnectionPool(t.connect_s, t.rpc_s)
        c = self.config.client
        self.chunks = ChunkIO(self.mgmtd, self.pool, t, c.local_reads, self.config.host.id)
        self.meta = MetaClient(self.chunks, self.pool, c.token or _local_token(c.address))
        self.executor = ThreadPoolExecutor(self.config.client.parallel * 2, "fs3-io")  # writes
        self.read_executor = ThreadPoolExecutor(self.config.client.read_pool_size(), "fs3-read")
        # Read batches wait on their targets, not on this CPU: one thread per batch in flight.
        self.batch_executor = ThreadPoolExecutor(BATCHES_IN_FLIGHT, "fs3-batch")

    # -- paths -------------------------------------------------------------------------
    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]  # type: ignore[return-value]
        path = str(path)
        if path.startswith("fs3://"):
            path = path[len("fs3://") :]
            first = path.split("/", 1)[0]
            if _ADDRESS.match(first):
                path = path[len(first) :]
        return normalize(path) if path not in ("", "/") else "/"

    def unstrip_protocol(self, name: str) -> str:
        """The URL of `name` on this cluster, naming its address when the URL that made
        this file system did, so that glob results and rebuilt paths reach it again."""
        path = self._strip_protocol(name)
        return f"fs3://{self.url_address or ''}{path if path.startswith('/') else '/' + path}"

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        if path.startswith("fs3://"):
            first = path[len("fs3://") :].split("/", 1)[0]
            if _ADDRESS.match(first):
                return {"address": first}
        return {}

    # -- metadata ----------------------------------------------------------------------
    def _info(self, path: str, inode: Inode) -> dict[str, Any]:
        kind = {FILE: "file", DIRECTORY: "directory", SYMLINK: "link"}.get(inode.kind, "other")
        info = {
            "name": path,
            "size": inode.length if inode.kind == FILE else 0,
            "type": kind,
            "mode": inode.mode,
            "mtime": inode.mtime,
            "ctime": inode.ctime,
            "atime": inode.atime or inode.mtime,
            "inode": inode.id,
            "nlink": inode.nlink,
            "uid": inode.uid,
            "gid": inode.gid,
        }
        if inode.target:
            info["destination"] = inode.target
        return info

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        return self._info(path, self.meta.stat(path))

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        inode = self.meta.stat(path)
        if inode.kind != DIRECTORY:
            entries = [self._info(path, inode)]
        else:
            base = path.rstrip("/")
            entries = [self._info(f"{base}/{e.name}", e.inode) for e in self.meta.listdir(path)]
        return entries if detail else [e["name"] for e in entries]

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if create_parents and self.exists(path):
            raise AlreadyExists("file exists", path)
        self.meta.mkdir(path, parents=create_parents)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        path = self._strip_protocol(path)
        if not exist_ok and self.exists(path):
            raise AlreadyExists("file exists", path)
        self.meta.mkdir(path, parents=True)

    def rmdir(self, path: str) -> None:
        self.meta.rmdir(self._strip_protocol(path))

    def _rm(self, path: str) -> None:
        path = self._strip_protocol(path)
        if self.meta.stat(path).kind == DIRECTORY:
            self.meta.rmdir(path)
        else:
            self.meta.unlink(path)

    def rm_file(self, path: str) -> None:
        """Removes a file, or an empty directory (fsspec's ``rm`` passes both here)."""
        self._rm(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Removes ``path`` (a path, a glob, or a list of them): see :meth:`remove`. With
        ``maxdepth`` a recursive delete keeps what lies deeper, so it goes file by file as
        fsspec's does."""
        if maxdepth is not None:
            super().rm(path, recursive=recursive, maxdepth=maxdepth)
        else:
            self.remove(self.expand_path(path), recursive)

    def remove(self, paths: list[str], recursive: bool = False) -> None:
        """Removes the files and directories ``paths`` (taken literally, no globs); a
        directory with entries needs ``recursive``.

        Every path is checked before anything goes, so a refused call removes nothing. A
        directory tree leaves the namespace in one meta transaction (no client sees part
        of it) and its inodes are deleted before this returns, its chunks soon after.

        Raises FileNotFoundError, OSError (EINVAL: the root or the trash folder, ENOTEMPTY:
        a directory with entries without ``recursive``).
        """
        paths = [self._strip_protocol(p) for p in paths]
        if recursive:  # what is below another path goes with it
            paths = [p for p in paths if not any(p.startswith(q + "/") for q in paths)]
        kinds = {}
        for path in paths:
            if path == "/":
                raise InvalidArgument("refusing to remove the root", path)
            if path == TRASH:
                raise InvalidArgument("refusing to remove the trash; its entries may go", path)
            kinds[path] = self.meta.stat(path).kind
            if kinds[path] == DIRECTORY and not recursive:
                entries = (f"{path}/{e.name}" for e in self.meta.iter_listdir(path))
                if any(entry not in paths for entry in entries):
                    raise DirectoryNotEmpty("directory not empty (remove it recursively)", path)
        for path in reversed(sorted(paths)):  # without recursive: a folder after its entries
            if kinds[path] == DIRECTORY and recursive:
                self.meta.trash(path, 0)  # expired at once: rm -r, see fs3.meta.trash
            else:
                self._rm(path)

    def created(self, path: str) -> datetime:
        return datetime.fromtimestamp(self.info(path)["ctime"], tz=timezone.utc)

    def modified(self, path: str) -> datetime:
        return datetime.fromtimestamp(self.info(path)["mtime"], tz=timezone.utc)

    def rename(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Atomically moves ``path1`` to ``path2`` (replacing a file there)."""
        self.meta.rename(self._strip_protocol(path1), self._strip_protocol(path2))

    def mv(
        self, path1: Any, path2: Any, recursive: bool = False, maxdepth: Any = None, **kwargs: Any
    ) -> None:
        if isinstance(path1, str) and isinstance(path2, str) and not any(c in path1 for c in "*?["):
            self.rename(path1, path2)
        else:
            super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    def link(self, target: str, path: str) -> None:
        """Makes ``path`` a further name (a hard link) of the file at ``target``; fsspec has
        no such call, this one takes its arguments in ``symlink``'s order."""
        self.meta.link(self._strip_protocol(target), self._strip_protocol(path))

    def symlink(self, target: str, path: str) -> None:
        """Creates a symlink at ``path`` pointing to ``target``."""
        self.meta.symlink(self._strip_protocol(path), target)

    def readlink(self, path: str) -> str:
        return self.meta.readlink(self._strip_protocol(path))

    def truncate(self, path: str, length: int) -> None:
        """Sets the file's length; bytes past the old end read as zeros."""
        path = self._strip_protocol(path)
        inode = self.meta.open(path, WRITE)  # checked before the chunks are cut
        if length != inode.length:
            # Past the shorter length every byte must read as zeros, also chunks a failed
            # writer left past the old end.
            self.chunks.cut(inode.layout, inode.id, min(length, inode.length))
        self.meta.truncate(path, length)

    def set_quota(
        self, path: str, max_bytes: int | None = None, max_inodes: int | None = None
    ) -> Quota | None:
        """Limits the bytes (file lengths) and/or inodes below directory ``path``; None
        keeps a limit, 0 removes it. Creating or growing a file past a limit then raises
        ``OSError(EDQUOT)`` naming the path. Returns the quota (None once both limits are
        0). Raises FileNotFoundError, NotADirectoryError."""
        return self.meta.set_quota(self._strip_protocol(path), max_bytes, max_inodes).quota

    def trash(self, path: str, expire_s: float) -> TrashEntry:
        """Moves the file or tree at ``path`` into the trash in one atomic rename; it can
        be restored (:meth:`restore`) for ``expire_s`` seconds, then it is deleted with its
        chunks. Its bytes leave the quotas it was under. ``expire_s`` 0 deletes it now, as
        ``rm(path, recursive=True)`` does. Raises FileNotFoundError."""
        return self.meta.trash(self._strip_protocol(path), expire_s)

    def trash_list(self) -> list[TrashEntry]:
        """What the trash holds, soonest to expire first."""
        return self.meta.list_trash()

    def restore(self, name: str, to: str | None = None) -> str:
        """Moves trash entry ``name`` back where it was, or to ``to``; returns the path.
        Raises FileNotFoundError (no such entry, or expired), FileExistsError."""
        entry = next((e for e in self.trash_list() if e.name == name), None)
        dst = self._strip_protocol(to) if to else (entry.path if entry else "")
        self.meta.restore_trash(name, dst or None)
        return dst

    def quota(self, path: str) -> Quota | None:
        """The quota of directory ``path`` (limits and usage), or None when it has none."""
        return self.meta.stat(self._strip_protocol(path)).quota

    def touch(
        self,
        path: str,
        truncate: bool = True,
        atime: float | None = None,
        mtime: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Creates an empty file (replacing a file there when ``truncate``); an existing
        one kept (``truncate=False``) gets its times set to now, as touch(1) does.
        ``atime``/``mtime`` (seconds since the epoch) set those times instead of now."""
        path = self._strip_protocol(path)
        if truncate or not self.exists(path):
            self._create(path, exclusive=False)
            if atime is None and mtime is None:
                return
        now = time.time()
        self.meta.set_attr(
            path, atime=now if atime is None else atime, mtime=now if mtime is None else mtime
        )

    def chmod(self, path: str, mode: int) -> None:
        """Sets the permission bits (``mode & 0o7777``) of ``path``; every client and
        mount sees them. Raises FileNotFoundError."""
        self.meta.set_attr(self._strip_protocol(path), mode=mode & 0o7777)

    def utime(self, path: str, atime: float | None = None, mtime: float | None = None) -> None:
        """Sets the access and/or modification time of ``path`` (seconds since the epoch);
        None keeps one. Raises FileNotFoundError."""
        self.meta.set_attr(self._strip_protocol(path), atime=atime, mtime=mtime)

    def _create(self, path: str, exclusive: bool) -> Inode:
        """Creates a file, and its missing parent directories as object stores imply them."""
        c = self.config.client
        try:
            return self.meta.create(path, exclusive, c.chunk_size, c.stripe)
        except FileNotFoundError:
            self.meta.mkdir(self._parent(path), parents=True)
            return self.meta.create(path, exclusive, c.chunk_size, c.stripe)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        with self.open(path, "xb" if mode == "create" else "wb", **kwargs) as f:
            f.write(value)

    def cp_file(
        self, path1: str, path2: str, callback: Callback = DEFAULT_CALLBACK, **kwargs: Any
    ) -> None:
        """Copies file ``path1`` to ``path2`` (a directory: makes directory ``path2``),
        telling ``callback`` each block's bytes (``relative_update``; ``copy`` hands one
        callback to every file, so it counts the whole copy). A copy that fails leaves no
        new file at ``path2``. Raises FileNotFoundError."""
        path1, path2 = self._strip_protocol(path1), self._strip_protocol(path2)
        if self.isdir(path1):
            self.makedirs(path2, exist_ok=True)
            return
        with (
            _no_new_file_on_failure(path2, self.exists, self.rm_file),
            self.open(path1, "rb") as src,
            self.open(path2, "wb") as dst,
        ):
            while block := src.read(self.config.client.chunk_size):
                dst.write(block)
                callback.relative_update(len(block))

    def put_file(
        self,
        lpath: Any,
        rpath: str,
        callback: Callback = DEFAULT_CALLBACK,
        mode: str = "overwrite",
        **kwargs: Any,
    ) -> None:
        """fsspec's ``put_file`` (local ``lpath`` to ``rpath``); a copy that fails (e.g.
        QuotaExceeded midway) leaves no new file at ``rpath``."""
        rpath = self._strip_protocol(rpath)
        with _no_new_file_on_failure(rpath, self.exists, self.rm_file):
            super().put_file(lpath, rpath, callback=callback, mode=mode, **kwargs)

    def get_file(
        self,
        rpath: str,
        lpath: Any = None,
        callback: Callback = DEFAULT_CALLBACK,
        outfile: Any = None,
        **kwargs: Any,
    ) -> None:
        """fsspec's ``get_file`` (``rpath`` to local ``lpath``); a copy that fails (e.g. a
        chunk no replica can serve) leaves no new file at ``lpath``."""
        if outfile is not None or not isinstance(lpath, str | os.PathLike):  # not a path
            return super().get_file(rpath, lpath, callback=callback, outfile=outfile, **kwargs)
        with _no_new_file_on_failure(lpath, os.path.lexists, os.remove):
            return super().get_file(rpath, lpath, callback=callback, **kwargs)

    # -- many reads at once --------------------------------------------------------------
    def cat_ranges(
        self,
        paths: list[str],
        starts: int | None | list[int | None],
        ends: int | None | list[int | None],
        max_gap: int | None = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list[bytes | Exception]:
        """Bytes ``[start, end)`` of each path (None: the file's start or end, negative:
        from its end, as ``cat_file``), all read at once: the files are opened in parallel,
        then the small pieces travel in one batch per storage target
        (:meth:`fs3.client.chunks.ChunkIO.read_many`), so a data loader's random samples
        cost a round trip per batch, not per sample. Holes read as zeros; a range past the
        end is cut there.

        Returns:
            Per range its bytes; with ``on_error="return"`` a range that failed holds its
            exception (FileNotFoundError, PermissionError, ...), else the first is raised.
        """
        if max_gap is not None:
            raise NotImplementedError("fs3 cat_ranges reads each range as is (no max_gap)")
        if not isinstance(paths, list):
            raise TypeError("cat_ranges takes a list of paths")
        starts = starts if isinstance(starts, list) else [starts] * len(paths)
        ends = ends if isinstance(ends, list) else [ends] * len(paths)
        if not len(starts) == len(ends) == len(paths):
            raise ValueError("cat_ranges needs as many starts and ends as paths")
        stripped = [self._strip_protocol(p) for p in paths]
        files = self._open_many(stripped)
        out = read_ranges(
            self.chunks,
            self.batch_executor,
            [(p, files[p], s, e) for p, s, e in zip(stripped, starts, ends, strict=True)],
        )
        if on_error != "return":
            first = next((r for r in out if isinstance(r, Exception)), None)
            if first is not None:
                raise first
        return out

    def cat(
        self, path: Any, recursive: bool = False, on_error: str = "raise", **kwargs: Any
    ) -> bytes | dict[str, bytes | Exception]:
        """fsspec's ``cat``: many paths are read at once through :meth:`cat_ranges`."""
        paths = self.expand_path(path, recursive=recursive)
        if (
            len(paths) == 1
            and not isinstance(path, list)
            and paths[0] == self._strip_protocol(path)
        ):
            return self.cat_file(paths[0], **kwargs)
        out: dict[str, bytes | Exception] = {}
        for p, got in zip(paths, self.cat_ranges(paths, None, None), strict=True):
            if isinstance(got, Exception) and on_error == "raise":
                raise got
            if not isinstance(got, Exception) or on_error == "return":
                out[p] = got
        return out

    def _open_many(self, paths: list[str]) -> dict[str, Inode | Fs3Error]:
        """Each distinct path opened for reading (its capability granted), in parallel: a
        file's inode, or the error opening it raised."""

        def open_one(path: str) -> Inode | Fs3Error:
            try:
                inode = self.meta.open(path)
            except Fs3Error as err:
                return err
            if inode.kind != FILE:
                return IsADirectory("not a file", path)
            return inode

        distinct = list(dict.fromkeys(paths))
        if len(distinct) == 1:  # here: a hop to another thread costs as much as the call
            return {distinct[0]: open_one(distinct[0])}
        return dict(zip(distinct, self.batch_executor.map(open_one, distinct), strict=True))

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: Any = None,
        autocommit: bool = True,
        cache_options: Any = None,
        **kwargs: Any,
    ) -> FS3File:
        path = self._strip_protocol(path)
        if mode == "rb":
            inode = self.meta.open(path)
        elif mode in ("wb", "xb"):
            inode = self._create(path, exclusive=mode == "xb")
        elif mode == "ab":
            try:
                inode = self.meta.open(path, WRITE)
            except FileNotFoundError:
                inode = self._create(path, exclusive=False)
        else:
            raise InvalidArgument(f"unsupported mode {mode!r}; use rb, wb, xb or ab", path)
        return FS3File(self, path, mode, inode)


def _as_bytes(view: memoryview) -> bytes:
    """``view`` as bytes: the object it views when that is bytes and the view covers all of
    it (a whole chunk read locally, see :func:`fs3.client.local_read.read_chunk_file`),
    otherwise a copy."""
    whole = view.obj
    if isinstance(whole, bytes) and view.nbytes == len(whole):
        return whole
    return bytes(view)


class FS3File(AbstractBufferedFile):
    """An open fs3 file. Writes ship whole chunks in parallel as they fill; reads fetch
    chunks in parallel and read ahead once access looks sequential."""

    fs: FS3FileSystem

    def __init__(self, fs: FS3FileSystem, path: str, mode: str, inode: Inode) -> None:
        self.inode = inode
        self.layout = inode.layout
        self.chunk_size = inode.layout.chunk_size
        super().__init__(
            fs, path, mode, block_size=self.chunk_size, size=inode.length, cache_type="none"
        )
        self._inflight: list[Future[None]] = []
        self._ahead: dict[int, Future[bytearray]] = {}
        self._next_sequential = 0
        if mode != "rb":
            self.offset = inode.length if mode == "ab" else 0
            self.loc = self.offset
            self._recorded = inode.length  # what meta holds as the file's length
            self._guard = LengthGuard(fs.meta, inode.id, path, inode.length)

    # -- writing -----------------------------------------------------------------------
    def write(self, data: Any) -> int:
        if not self.writable():
            raise ValueError("file not in write mode")
        if self.closed:
            raise ValueError("I/O operation on closed file")
        size = memoryview(data).nbytes
        if self.buffer.tell() + size >= self.chunk_size:  # chunks ship: a quota may object
            self._guard.check(self.loc + size)
        n = self.buffer.write(data)
        self.loc += n
        if self.buffer.tell() >= self.chunk_size:
            self._ship(final=False)
        return n

    def _ship(self, final: bool) -> None:
        """Sends buffered bytes: whole chunks only, or everything when ``final``."""
        buf = self.buffer.getvalue()
        pos, cs, shipped = self.offset, self.chunk_size, 0
        while shipped < len(buf):
            index, within = divmod(pos, cs)
            piece = buf[shipped : shipped + cs - within]
            if within + len(piece) < cs and not final:
                break
            # A chunk written from its start in a fresh file replaces it; others patch.
            self._submit(index, within, piece)
            shipped += len(piece)
            pos += len(piece)
        self.offset = pos
        self.buffer = io.BytesIO()
        self.buffer.write(buf[shipped:])

    def _submit(self, index: int, within: int, piece: bytes) -> None:
        truncate = within == 0 and self.mode != "ab"
        args = (self.layout, self.inode.id, index, within, piece, truncate)
        self._inflight.append(self.fs.executor.submit(self.fs.chunks.write, *args))
        while len(self._inflight) >= self.fs.config.client.parallel:
            self._inflight.pop(0).result()

    def _drain(self) -> None:
        inflight, self._inflight = self._inflight, []
        for f in inflight:
            f.result()

    def fsync(self) -> None:
        """Returns once every byte written so far is on every replica and the length is set.

        Raises QuotaExceeded (naming the path) when the new length would pass a directory
        quota: the file keeps the length it had, the bytes past it are dropped.
        """
        self._ship(final=True)
        self._drain()
        length = max(self.loc, self.inode.length)
        try:
            self.fs.meta.set_length(self.inode.id, length)
        except QuotaExceeded as err:
            self.fs.chunks.cut(self.layout, self.inode.id, self._recorded)
            self.loc = self.offset = self._recorded
            raise QuotaExceeded(err.message, self.path) from None
        self._recorded = length

    def flush(self, force: bool = False) -> None:
        if self.closed or self.mode == "rb" or not force:
            return
        self.fsync()
        self.forced = True

    # -- reading -----------------------------------------------------------------------
    def _chunk(self, index: int, start: int, end: int) -> memoryview:
        data = self.fs.chunks.read(
            self.layout, self.inode.id, index, start, end - start, path=self.path
        )
        if len(data) < end - start:  # holes and short chunks read as zeros
            return memoryview(bytes(data) + bytes(end - start - len(data)))
        return data

    def _fetch_range(self, start: int, end: int) -> bytes:
        cs = self.chunk_size
        parts = []
        for index in range(start // cs, (end - 1) // cs + 1):
            lo, hi = max(start, index * cs), min(end, (index + 1) * cs)
            parts.append(
                self.fs.read_executor.submit(self._chunk, index, lo - index * cs, hi - index * cs)
            )
        return b"".join(p.result() for p in parts)  # type: ignore[misc]

    def _whole_chunk(self, index: int) -> Future[memoryview]:
        if index not in self._ahead:
            end = min(self.chunk_size, self.size - index * self.chunk_size)
            self._ahead[index] = self.fs.read_executor.submit(self._chunk, index, 0, end)
        return self._ahead[index]

    def read(self, length: int = -1) -> bytes:
        if self.mode != "rb":
            raise ValueError("file not in read mode")
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if length is None or length < 0:
            length = self.size - self.loc
        end = min(self.loc + length, self.size)
        if end <= self.loc:
            return b""
        cs = self.chunk_size
        if self.loc == self._next_sequential:
            first, last = self.loc // cs, (end - 1) // cs
            chunks_total = -(-self.size // cs)
            ahead = self.fs.config.client.readahead_chunks
            for index in range(first, min(last + 1 + ahead, chunks_total)):
                self._whole_chunk(index)
            parts = [self._ahead[i].result() for i in range(first, last + 1)]
            for index in [i for i in self._ahead if i < last or (i == last and end % cs == 0)]:
                del self._ahead[index]
            # One chunk (the usual case for chunk-sized reads) is sliced without a join copy.
            data = memoryview(parts[0]) if len(parts) == 1 else memoryview(b"".join(parts))
            out = _as_bytes(data[self.loc - first * cs : end - first * cs])
        else:
            self._ahead.clear()
            out = self._fetch_range(self.loc, end)
        self.loc = self._next_sequential = end
        return out

    def close(self) -> None:
        try:
            if not self.closed and self.mode != "rb" and not self.forced:
                self.forced = True  # once: a failed commit is not tried again by close
                self.fsync()
        finally:
            self._ahead.clear()
            super().close()
