"""fs3: a 3FS-like distributed chunk file system.

Cluster manager, metadata service, chain-replicated storage servers and the client that
training scripts reach through fsspec (``fs3://``), pyarrow and a FUSE mount.
"""

__all__: list[str] = []
