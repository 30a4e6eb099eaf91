"""The most a pyfuse3 mount reads here: one file served from memory, no fs3 work at all.

``python -m fs3.bench`` mounts it beside the fs3 mount, with the same pyfuse3 options and
kernel read-ahead, and reads its file the same way (page cache dropped first). What that
costs is FUSE's own share: a kernel round trip per 1 MiB request and two copies, into the
mount's page cache and out to the reader. The fs3 mount adds to it the chunk transfers, the
CRC checks and its read-ahead bookkeeping.

``python -m fs3.fuse.ceiling MOUNTPOINT SIZE_BYTES PARENT_PID`` serves until unmounted or
until the process ``PARENT_PID`` is gone; :func:`memory_mount` runs it for a ``with`` block.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyfuse3
import trio

from fs3.fuse.options import MountOptions
from fs3.fuse.process import FSTYPE, serving
from fs3.fuse.serve import serve_until_stopped

FILE_NAME = b"file.bin"
_FILE_INODE = pyfuse3.ROOT_INODE + 1


class MemoryFile(pyfuse3.Operations):
    """A read-only root folder holding one file whose bytes live in this process."""

    def __init__(self, size: int) -> None:
        super().__init__()
        # Every page written, so the reads copy real memory, not the shared zero page.
        self.data = memoryview(b"\xa5" * size)
        self.options = MountOptions()
        self.initialised = trio.Event()

    def init(self) -> None:
        self.initialised.set()

    async def getattr(
        self, inode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        if inode == pyfuse3.ROOT_INODE:
            attr.st_mode, attr.st_size = stat.S_IFDIR | 0o555, 0
        elif inode == _FILE_INODE:
            attr.st_mode, attr.st_size = stat.S_IFREG | 0o444, len(self.data)
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attr.st_ino, attr.st_blksize = inode, 1 << 20
        attr.attr_timeout = attr.entry_timeout = 3600
        return attr

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if parent_inode != pyfuse3.ROOT_INODE or name != FILE_NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(_FILE_INODE)

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if inode != _FILE_INODE:
            raise pyfuse3.FUSEError(errno.EISDIR)
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, off: int, size: int) -> memoryview:
        return self.data[off : off + size]


@contextmanager
def memory_mount(
    mountpoint: str | os.PathLike[str], size: int, timeout: float = 60.0
) -> Iterator[Path]:
    """Serves a :class:`MemoryFile` of ``size`` bytes at ``mountpoint`` for the ``with``
    block; yields the path of its file."""
    command = [
        sys.executable,
        "-m",
        "fs3.fuse.ceiling",
        str(mountpoint),
        str(size),
        str(os.getpid()),
    ]
    with serving(command, mountpoint, timeout) as mounted:
        yield mounted / FILE_NAME.decode()


def main(argv: list[str]) -> None:
    mountpoint, size, parent_pid = argv[0], int(argv[1]), int(argv[2])
    ops = MemoryFile(size)
    target = Path(os.path.realpath(mountpoint))
    # subtype fs3, as the fs3 mount, so that the same mount helpers find and stop it
    pyfuse3.init(
        ops,
        str(target),
        set(pyfuse3.default_options) | {"fsname=fs3-ceiling", f"subtype={FSTYPE[5:]}"},
    )
    try:
        trio.run(serve_until_stopped, pyfuse3, trio, ops, target, parent_pid)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main(sys.argv[1:])
