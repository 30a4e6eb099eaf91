"""Telling the C library to keep freed memory in a process that recycles large buffers.

glibc serves a block above its mmap threshold with a fresh mapping and unmaps it on free,
and hands freed memory at the top of a heap back to the kernel once it passes the trim
threshold; either way the next block of that size page-faults in (and is zeroed) again.
A process that allocates a chunk-sized buffer per transfer, as the FUSE mount does for
every chunk it reads ahead, paid a quarter of its page faults and a fifth of its system
time for that. Setting both thresholds above the largest block (what
``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` do, and what jemalloc or tcmalloc do
anyway) keeps the memory in the process; its resident size stays at its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(largest_block: int = 1 << 30) -> bool:
    """Keeps freed blocks up to ``largest_block`` bytes in this process (see the module
    doc). Returns False, changing nothing, on a C library without ``mallopt`` or one that
    refuses the values."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, largest_block)) and bool(
        mallopt(_M_TRIM_THRESHOLD, largest_block)
    )
