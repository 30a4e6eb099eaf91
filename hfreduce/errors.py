"""Error types of hfreduce, all under :class:`HfreduceError`.

Each also subclasses the builtin that fits, so callers can catch ``ValueError`` or
``TimeoutError`` without importing hfreduce.
"""

from __future__ import annotations


class HfreduceError(RuntimeError):
    """Root of every hfreduce error."""


class ConfigError(HfreduceError, ValueError):
    """A setting (an ``HFREDUCE_*`` variable or an argument) is invalid; the message names it."""


class NotInitializedError(HfreduceError):
    """An hfreduce call was made before :func:`hfreduce.init`."""


class UnsupportedError(HfreduceError, TypeError):
    """A dtype, device, op or layout hfreduce does not handle."""


class MismatchError(HfreduceError, ValueError):
    """Ranks called the same collective with different sizes, dtypes or ops.

    Every rank raises it for the same call; the communicator stays usable.
    """


class PeerLostError(HfreduceError, ConnectionError):
    """A rank died or closed its connections; the communicator is unusable afterwards."""


class CollectiveTimeoutError(HfreduceError, TimeoutError):
    """A rank made no progress within the timeout; the communicator is unusable afterwards."""
