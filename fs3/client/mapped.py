"""Chunk file bytes shown in place: read-only mappings of a chunk file, locked in memory.

A caller that only passes chunk bytes on, as the FUSE mount does when it replies to the
kernel from whatever buffer holds them, gains nothing from a copy in its own memory; on a
warm read through the mount that copy was a third of the mount's CPU time. A mapping of the
chunk file shows the page cache's own pages instead.

Why that is safe:

- Committed chunk files are never written in place (:mod:`fs3.storage.local`): a new version
  is a new file renamed over the old one, and removal only unlinks. A mapping keeps showing
  the version that was checked, and its descriptor may be closed at once.
- The mapping is locked (``mlock``) before a byte of it is read. Locking faults every page in
  and fails with an error where a page cannot be read (a disk error) or locked (the caller's
  ``RLIMIT_MEMLOCK``), whereas touching a bad page of an unlocked mapping kills the process
  with SIGBUS. Locked pages stay in memory until unmapped, so no later access goes to disk.

Where mapping or locking fails, :func:`map_file` returns None and the caller preads.
Python's :mod:`mmap` can do neither part (it cannot lock, and it duplicates the
descriptor), hence libc through ctypes.
"""

from __future__ import annotations

import ctypes
import mmap
import weakref

_libc = ctypes.CDLL(None, use_errno=True)  # the libc this process already runs on
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


def map_file(fd: int, offset: int, length: int) -> memoryview | None:
    """A read-only view of ``length`` bytes at ``offset`` (a multiple of the page size) of
    the file open as ``fd``, locked in memory; None where the file could not be mapped or
    locked. The caller must keep within the file's size. The mapping goes when the last view
    of it does."""
    if length <= 0 or offset % mmap.PAGESIZE:
        return None
    address = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, offset)
    if address == _MAP_FAILED:
        return None
    if _libc.mlock(address, length) != 0:
        _libc.munmap(address, length)
        return None
    pages = (ctypes.c_char * length).from_address(address)
    weakref.finalize(pages, _libc.munmap, address, length)
    return memoryview(pages).cast("B").toreadonly()


def is_mapped(data: bytes | memoryview) -> bool:
    """Whether ``data`` is (a view into) a mapping from :func:`map_file`."""
    return isinstance(data, memoryview) and isinstance(data.obj, ctypes.Array)
