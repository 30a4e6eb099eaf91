"""gRPC plumbing in one place: servers, channels, and the error <-> status mapping.

Servicers wrap each method with :func:`servicer_method`, which turns an :class:`Fs3Error`
into a status whose details carry the error's kind, message and path as JSON; :func:`call`
turns such a status back into the same error type on the client side, and a dead or slow
server into ``Unavailable`` or ``Fs3TimeoutError`` naming the address and the timeout.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc

from fs3.errors import (
    AlreadyExists,
    ChecksumMismatch,
    ChunkBusy,
    ConfigError,
    DirectoryNotEmpty,
    Fs3Error,
    Fs3TimeoutError,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotFound,
    QuotaExceeded,
    StaleRouting,
    Unavailable,
    error_from_kind,
    error_message,
)

log = logging.getLogger("fs3.rpc")

# 64 MiB: above the largest chunk plus framing, for the comparison ChunkService.
_MAX_MESSAGE = 64 << 20
_OPTIONS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE),
    ("grpc.max_receive_message_length", _MAX_MESSAGE),
]
SERVER_OPTIONS = [
    # gRPC binds with SO_REUSEPORT by default: a second server on a port in use would start
    # and take a share of its calls (answering them UNIMPLEMENTED) instead of failing.
    ("grpc.so_reuseport", 0),
]

_STATUS: dict[type[Fs3Error], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    NotADirectory: grpc.StatusCode.FAILED_PRECONDITION,
    IsADirectory: grpc.StatusCode.FAILED_PRECONDITION,
    DirectoryNotEmpty: grpc.StatusCode.FAILED_PRECONDITION,
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    QuotaExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ChecksumMismatch: grpc.StatusCode.DATA_LOSS,
    ChunkBusy: grpc.StatusCode.UNAVAILABLE,
    StaleRouting: grpc.StatusCode.ABORTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Fs3TimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
}

F = TypeVar("F", bound=Callable[..., Any])


def servicer_method(fn: F) -> F:
    """Maps errors raised by a servicer method to gRPC statuses."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Fs3Error as err:
            details = {"kind": type(err).__name__, "message": error_message(err), "path": err.path}
            context.abort(_STATUS.get(type(err), grpc.StatusCode.UNKNOWN), json.dumps(details))
        except Exception as err:
            log.exception("%s failed", fn.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{fn.__name__}: {type(err).__name__}: {err}")

    return wrapper  # type: ignore[return-value]


def listens(server: grpc.Server, host: str, port: int) -> bool:
    """Adds ``host:port`` to ``server``; False when it cannot bind it (in use: gRPC returns
    0 or, in newer releases, raises)."""
    try:
        return server.add_insecure_port(f"{host}:{port}") != 0
    except RuntimeError:
        return False


def serve(
    register: Callable[[grpc.Server], None], host: str, port: int, workers: int = 16
) -> grpc.Server:
    """Starts a gRPC server on ``host:port``; ``register`` adds the servicers."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers), options=_OPTIONS + SERVER_OPTIONS
    )
    register(server)
    if not listens(server, host, port):
        raise Unavailable(f"cannot listen on {host}:{port}; is the port in use?")
    server.start()
    return server


def channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=_OPTIONS)


def call(method: Callable[..., Any], request: Any, timeout: float, what: str, address: str) -> Any:
    """Calls a stub method, turning gRPC failures into fs3 errors.

    Raises:
        Unavailable: the server at ``address`` cannot be reached (retryable).
        Fs3TimeoutError: no answer within ``timeout`` seconds.
        Fs3Error subclass: the error the server raised.
    """
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""  # type: ignore[attr-defined]
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and not details.startswith("{"):
            raise Fs3TimeoutError(
                f"{what}: no answer from {address} within {timeout:g}s "
                "(raise timeouts.rpc_s if the server is just slow)"
            ) from None
        if details.startswith("{"):
            info = json.loads(details)
            raise error_from_kind(info["kind"], info["message"], info.get("path")) from None
        if code == grpc.StatusCode.UNAVAILABLE:
            raise Unavailable(f"{what}: server {address} unavailable: {details}") from None
        raise Fs3Error(f"{what} at {address} failed: {code.name}: {details}") from None
