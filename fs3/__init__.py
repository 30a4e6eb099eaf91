"""fs3: a 3FS-like distributed chunk file system.

Cluster manager, metadata service, chain-replicated storage servers and the client that
training scripts reach through fsspec (``fs3://``), pyarrow, or a FUSE mount (``mount``).
"""

from fs3.client import FS3File, FS3FileSystem
from fs3.config import Fs3Config, load_config
from fs3.errors import Fs3Error
from fs3.fuse import mount

__all__ = ["FS3File", "FS3FileSystem", "Fs3Config", "Fs3Error", "load_config", "mount"]
