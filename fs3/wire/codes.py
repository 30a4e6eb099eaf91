"""Error codes of fs3's framed protocol: the status byte of a reply names the error type.

Each type has its number written out here, so that adding, removing or reordering error
types in :mod:`fs3.errors` cannot change what a number means between versions. 0 is
success. A code this version does not know (a newer peer's error) decodes as plain
:class:`Fs3Error`, which the client does not retry.
"""

from __future__ import annotations

from fs3.errors import (
    AlreadyExists,
    CapabilityRefused,
    ChecksumMismatch,
    ChunkBusy,
    ConfigError,
    DataLost,
    DirectoryNotEmpty,
    Fs3Error,
    Fs3TimeoutError,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotFound,
    NotPermitted,
    PermissionDenied,
    QuotaExceeded,
    StaleRouting,
    Unavailable,
)

OK = 0
ERROR_CODES: dict[type[Fs3Error], int] = {
    # The numbers these types had when they were 1 + their index in a list, so peers from
    # before this table still understand each other. New types take new numbers.
    Fs3Error: 1,
    NotFound: 2,
    AlreadyExists: 3,
    NotADirectory: 4,
    IsADirectory: 5,
    DirectoryNotEmpty: 6,
    InvalidArgument: 7,
    ChecksumMismatch: 8,
    ChunkBusy: 9,
    StaleRouting: 10,
    Unavailable: 11,
    Fs3TimeoutError: 12,
    ConfigError: 13,
    DataLost: 14,
    QuotaExceeded: 15,
    PermissionDenied: 16,
    NotPermitted: 17,
    NameTooLong: 18,
    CapabilityRefused: 19,
}
_BY_CODE = {code: cls for cls, code in ERROR_CODES.items()}
if len(_BY_CODE) != len(ERROR_CODES) or OK in _BY_CODE:
    raise ImportError("fs3.wire.codes.ERROR_CODES must give each error type its own number > 0")


def error_code(err: Fs3Error) -> int:
    """The code of ``err``'s type; a type without one (a subclass defined elsewhere) is sent
    as plain ``Fs3Error``."""
    return ERROR_CODES.get(type(err), ERROR_CODES[Fs3Error])


def error_type(code: int) -> type[Fs3Error]:
    """The error type of a nonzero ``code``; unknown codes give plain ``Fs3Error``."""
    return _BY_CODE.get(code, Fs3Error)
