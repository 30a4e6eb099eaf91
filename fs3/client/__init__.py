"""The fs3 client: the fsspec filesystem and its open-file type."""

from fs3.client.filesystem import FS3File, FS3FileSystem

__all__ = ["FS3File", "FS3FileSystem"]
