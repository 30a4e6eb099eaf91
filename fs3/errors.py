"""Every error fs3 raises, under one root, each also the builtin a caller would expect.

Callers catch builtins (``FileNotFoundError``, ``TimeoutError``) without importing fs3; the
client retries exactly the types marked ``retryable`` and gives up on the others. Errors cross
process boundaries by name (:func:`error_from_kind`) over gRPC, whose status codes are
mapped in :mod:`fs3.rpc`, and by number over the framed wire (:mod:`fs3.wire.codes`).
"""

from __future__ import annotations

import errno as _errno


class Fs3Error(Exception):
    """Root of fs3 errors. ``retryable`` says whether the same request may succeed later."""

    retryable = False

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class _PathOSError(Fs3Error, OSError):
    """An fs3 error that is also an ``OSError`` with errno set and the path as filename."""

    errno_code = _errno.EIO

    def __init__(self, message: str, path: str | None = None) -> None:
        if path is None:
            OSError.__init__(self, self.errno_code, message)
        else:
            OSError.__init__(self, self.errno_code, message, path)
        self.path = path

    @property
    def message(self) -> str:
        return self.strerror or ""


class NotFound(_PathOSError, FileNotFoundError):
    errno_code = _errno.ENOENT


class AlreadyExists(_PathOSError, FileExistsError):
    errno_code = _errno.EEXIST


class NotADirectory(_PathOSError, NotADirectoryError):
    errno_code = _errno.ENOTDIR


class IsADirectory(_PathOSError, IsADirectoryError):
    errno_code = _errno.EISDIR


class DirectoryNotEmpty(_PathOSError):
    errno_code = _errno.ENOTEMPTY


class InvalidArgument(_PathOSError):
    """A bad path (NUL byte, ``..`` escaping the root) or an impossible operation (EINVAL)."""

    errno_code = _errno.EINVAL


class NameTooLong(_PathOSError):
    """A path component over 255 bytes or a path over 4096 (UTF-8), POSIX's NAME_MAX and
    PATH_MAX on Linux (ENAMETOOLONG)."""

    errno_code = _errno.ENAMETOOLONG


class QuotaExceeded(_PathOSError):
    """A directory quota (bytes or inodes) would be passed; the message names the directory
    and its limit. Deleting below that directory, or a larger quota, makes room."""

    errno_code = _errno.EDQUOT


class PermissionDenied(_PathOSError, PermissionError):
    """The caller lacks a read, write or search permission the file's modes require (EACCES)."""

    errno_code = _errno.EACCES


class NotPermitted(_PathOSError, PermissionError):
    """Only the owner (or an admin) may do this, or the token is not valid (EPERM)."""

    errno_code = _errno.EPERM


class CapabilityRefused(_PathOSError, PermissionError):
    """A storage target refused a chunk request: its capability is missing, forged, expired
    or for another file, chunk or operation (EACCES). The client renews an expired one."""

    errno_code = _errno.EACCES


class ChecksumMismatch(_PathOSError):
    """A replica's stored bytes do not match their CRC32C; another replica may hold good ones."""

    errno_code = _errno.EIO
    retryable = True


class DataLost(_PathOSError):
    """Every replica of a chunk failed its checksum; nothing correct is left to read."""

    errno_code = _errno.EIO


class ChunkBusy(Fs3Error):
    """The replica holds an uncommitted version of the chunk; ask the chain tail or retry."""

    retryable = True


class StaleRouting(Fs3Error):
    """Client and server disagree on the chain table version; refresh it from mgmtd and retry."""

    retryable = True


class Unavailable(Fs3Error, ConnectionError):
    """A server could not be reached or dropped the connection; a chain change may fix it."""

    retryable = True


class Fs3TimeoutError(Fs3Error, TimeoutError):
    """A wait ran past its configured timeout; the message names the wait and the setting."""


class ConfigError(Fs3Error, ValueError):
    """A configuration value is invalid; the message names the field and the value."""


NAMESPACE_ERRORS: tuple[type[Fs3Error], ...] = (
    NotFound,
    AlreadyExists,
    NotADirectory,
    IsADirectory,
    DirectoryNotEmpty,
    InvalidArgument,
    NameTooLong,
    QuotaExceeded,
    PermissionDenied,
    NotPermitted,
)
"""What a namespace operation refuses a request with (POSIX's errnos, in fs3's types)."""

ERROR_TYPES: tuple[type[Fs3Error], ...] = (
    Fs3Error,
    *NAMESPACE_ERRORS,
    ChecksumMismatch,
    ChunkBusy,
    StaleRouting,
    Unavailable,
    Fs3TimeoutError,
    ConfigError,
    DataLost,
    CapabilityRefused,
)
_BY_KIND = {cls.__name__: cls for cls in ERROR_TYPES}


def error_message(err: Fs3Error) -> str:
    """The message an error was built with, without errno or path decoration."""
    return err.message if isinstance(err, _PathOSError) else str(err)


def error_from_kind(kind: str, message: str, path: str | None = None) -> Fs3Error:
    """Rebuilds an error sent by another process; unknown kinds become plain ``Fs3Error``."""
    return _BY_KIND.get(kind, Fs3Error)(message, path or None)
