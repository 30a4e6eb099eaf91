"""The FUSE mount of fs3: ``hai fs3 mount`` and :func:`fs3.mount` (pyfuse3, libfuse 3)."""

from fs3.fuse.options import MountOptions
from fs3.fuse.process import is_mounted, mount, unmount

__all__ = ["MountOptions", "is_mounted", "mount", "unmount"]
