"""fs3: a 3FS-like distributed chunk file system.

Cluster manager, metadata service, chain-replicated storage servers and the client that
training scripts reach through fsspec (``fs3://``), pyarrow, or a FUSE mount (``mount``).
"""

import os

# gRPC's core prints INFO lines on stderr (each refused TLS handshake) beside the one-line
# errors fs3 raises for the same failure; it reads this before anything imports grpc.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from fs3.client import FS3File, FS3FileSystem  # noqa: E402
from fs3.config import Fs3Config, load_config  # noqa: E402
from fs3.errors import Fs3Error  # noqa: E402
from fs3.fuse import mount  # noqa: E402

__all__ = ["FS3File", "FS3FileSystem", "Fs3Config", "Fs3Error", "load_config", "mount"]
