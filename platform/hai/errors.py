"""Every error the platform raises, under one root so callers can catch ``HaiError``.

Each type also subclasses the builtin that fits, so code that knows nothing about ``hai``
still catches the right thing (``ValueError`` for a bad spec, ``PermissionError`` for a
refused action, ``TimeoutError`` for a wait that ran out). The gRPC status for each type is
chosen in one place, :mod:`hai.rpc`.
"""

from __future__ import annotations


class HaiError(Exception):
    """Root of all platform errors."""


class SpecError(HaiError, ValueError):
    """A job spec is invalid; ``problems`` holds one line per bad field.

    One problem reads as one line; several as a heading and one indented line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            super().__init__(f"invalid job spec: {self.problems[0]}")
        else:
            super().__init__("invalid job spec:\n  " + "\n  ".join(self.problems))


class ConfigError(HaiError, ValueError):
    """A configuration value is out of range or of the wrong type."""


class NotFoundError(HaiError, LookupError):
    """A job, run, node or user does not exist."""


class AuthError(HaiError, PermissionError):
    """A request carried no token or an unknown one."""


class ForbiddenError(HaiError, PermissionError):
    """The caller is known but may not do this (another user's job, an admin action)."""


class QuotaError(HaiError, ValueError):
    """A job can never run under its owner's quota (e.g. zero nodes at that priority)."""


class StateError(HaiError, RuntimeError):
    """The action does not fit the job's current state (resume a running job...)."""


class SchemaError(HaiError, RuntimeError):
    """The state database's schema is one this code cannot open: a newer release made it."""


class Unavailable(HaiError, ConnectionError):
    """A server could not be reached; retrying later may work."""


class HaiTimeoutError(HaiError, TimeoutError):
    """A wait ran past its timeout."""


# Names the RPC layer uses to rebuild the same error type on the client side.
ERRORS_BY_NAME: dict[str, type[HaiError]] = {
    cls.__name__: cls
    for cls in (
        HaiError,
        ConfigError,
        NotFoundError,
        AuthError,
        ForbiddenError,
        QuotaError,
        StateError,
        Unavailable,
        HaiTimeoutError,
    )
}
