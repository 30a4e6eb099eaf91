"""Settings of one FUSE mount: kernel cache lifetimes, read-ahead, worker threads.

The cluster address, chunk size and timeouts come from the fs3 config (:mod:`fs3.config`)
as for every client; these are only what a mount adds on top.
"""

from __future__ import annotations

from dataclasses import dataclass

from fs3.errors import ConfigError


@dataclass
class MountOptions:
    attr_timeout: float = 5.0
    """Seconds the kernel keeps a file's attributes before asking again. 3FS uses 30 s
    (``src/fuse/FuseConfig.h``); ours is shorter because ``stat`` of a file another client
    is writing shows its size at most this old. Opening a file always revalidates (the
    close-to-open rule), whatever this is."""
    entry_timeout: float = 30.0
    """Seconds the kernel trusts a name -> inode lookup (3FS: 30 s). A name another client
    replaced is still revalidated at open: the mount answers ESTALE and the kernel looks
    the name up again."""
    readahead_kib: int = 16384
    """Kernel read-ahead of the mount (``/sys/class/bdi/*/read_ahead_kb``): 16 MiB keeps
    several 1 MiB reads in flight; the kernel's default of 128 KiB splits a sequential read
    into 8x as many requests. The mount also prefetches whole chunks itself."""
    max_background: int = 64
    """Read-ahead requests the kernel keeps in flight (fusectl ``max_background``; the
    kernel's default is 12). 48-64 doubled sequential reads on a 2-core machine."""
    threads: int = 64
    """Blocking fs3 calls (meta RPCs, chunk waits) running at once, each in a worker thread
    so that one slow chunk never stalls the other requests."""
    io_threads: int = 32
    """Chunk writes in flight for all open files together (write-behind); reads run on the
    client's read pool (``client.read_threads``)."""
    allow_other: bool = False
    """Let users other than the one who mounted use the mount (FUSE ``allow_other``)."""
    debug: bool = False
    """Log every FUSE request (libfuse ``debug``) and fs3 client calls."""
    # Last: hai fs3 mount passes the fields above by position.
    read_batches: int = 4
    """Batches of random reads in flight (:mod:`fs3.fuse.batched`): reads that parallel
    readers issue meanwhile wait and travel together in the next batch."""

    def __post_init__(self) -> None:
        for name in ("attr_timeout", "entry_timeout"):
            if getattr(self, name) < 0:
                raise ConfigError(f"mount {name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_background", "threads", "io_threads", "read_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"mount {name} must be >= 1, got {getattr(self, name)}")
        if self.readahead_kib < 0:
            raise ConfigError(f"mount readahead_kib must be >= 0, got {self.readahead_kib}")
