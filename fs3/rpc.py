"""gRPC plumbing in one place: servers, channels, and fs3's errors as gRPC statuses.

Servicers wrap each method with :func:`servicer_method`, which turns an :class:`Fs3Error`
into a status whose details carry the error's kind, message and path as JSON; :func:`call`
turns such a status back into the same error type on the client side, and a dead or slow
server into ``Unavailable`` or ``Fs3TimeoutError`` naming the address and the timeout
(both through :mod:`fs3.wire.status`, which hai's servers and clients use too). Every server
:func:`serve` starts also answers the standard ``grpc.health.v1.Health`` service on its own
port, for Kubernetes' gRPC probes. With ``tls.enabled`` (:class:`fs3.config.TlsConfig`)
servers listen with TLS and :func:`channel` verifies them against ``tls.ca_file``; every
fs3 gRPC channel is opened there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fs3.config import TlsConfig
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
from fs3.types import host_port
from fs3.wire.status import ErrorCodec

# 64 MiB: above the largest chunk plus framing, for the comparison ChunkService.
MAX_MESSAGE = 64 << 20
_SERVER_OPTIONS = [
    # gRPC binds with SO_REUSEPORT by default: a second server on a port in use would start
    # and take a share of its calls (answering them UNIMPLEMENTED) instead of failing.
    ("grpc.so_reuseport", 0),
]

ERRORS = ErrorCodec(
    root=Fs3Error,
    statuses={
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
    },
    fields=lambda err: {"message": error_message(err), "path": err.path},
    rebuild=lambda info: error_from_kind(info["kind"], info["message"], info.get("path")),
    unavailable=Unavailable,
    timeout=Fs3TimeoutError,
    timeout_hint=" (raise timeouts.rpc_s if the server is just slow)",
)
"""fs3's errors as gRPC statuses."""


def _limits(max_message: int | None) -> list[tuple[str, int]]:
    if max_message is None:
        return []
    return [
        ("grpc.max_send_message_length", max_message),
        ("grpc.max_receive_message_length", max_message),
    ]


F = TypeVar("F", bound=Callable[..., Any])


def servicer_method(fn: F) -> F:
    """Maps errors raised by a servicer method to gRPC statuses."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as err:
            ERRORS.abort(context, err, fn.__name__)

    return wrapper  # type: ignore[return-value]


def _pem(path: str, field: str) -> bytes:
    """The bytes of the PEM file ``tls.<field>`` names; ConfigError when it cannot be read."""
    if not path:
        raise ConfigError(f"tls.enabled needs tls.{field}")
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"tls.{field} {path}: {err.strerror}") from None


def _credentials(tls: TlsConfig | None) -> grpc.ServerCredentials | None:
    """The server's TLS credentials, None for plaintext."""
    if tls is None or not tls.enabled:
        return None
    pair = (_pem(tls.key_file, "key_file"), _pem(tls.cert_file, "cert_file"))
    return grpc.ssl_server_credentials([pair])


def _listens(
    server: grpc.Server, host: str, port: int, credentials: grpc.ServerCredentials | None
) -> bool:
    """Adds ``host:port`` to ``server``; False when it cannot bind it (in use: gRPC returns
    0 or, in newer releases, raises)."""
    address = host_port(host, port)
    try:
        if credentials is None:
            return server.add_insecure_port(address) != 0
        return server.add_secure_port(address, credentials) != 0
    except RuntimeError:
        return False


def serve(
    register: Callable[[grpc.Server], None],
    host: str,
    port: int,
    *,
    services: Iterable[str],
    workers: int = 16,
    max_message: int | None = MAX_MESSAGE,
    tls: TlsConfig | None = None,
) -> grpc.Server:
    """Starts a gRPC server on ``host:port``; ``register`` adds the servicers.

    The server also serves ``grpc.health.v1.Health``, answering SERVING for the whole
    server (``""``) and for each of ``services`` (the full names ``register`` added, e.g.
    ``fs3.Mgmtd``) once started. ``max_message`` bounds messages both ways (None: gRPC's
    default, 4 MiB received). With ``tls.enabled`` it speaks only TLS, with
    ``tls.cert_file`` and ``tls.key_file``.

    Raises:
        Unavailable: ``host:port`` cannot be bound (in use, or not this machine's address).
        ConfigError: TLS is on and its certificate or key is missing or unreadable.
    """
    credentials = _credentials(tls)
    options = _SERVER_OPTIONS + _limits(max_message)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options)
    register(server)
    checks = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    if not _listens(server, host, port, credentials):
        raise Unavailable(f"cannot listen on {host_port(host, port)}; is the port in use?")
    server.start()
    for name in ("", *services):
        checks.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server


def channel(address: str, tls: TlsConfig | None = None) -> grpc.Channel:
    """A channel to the fs3 gRPC server at ``address``; with ``tls.enabled`` over TLS,
    trusting only the CA in ``tls.ca_file`` (ConfigError when it cannot be read)."""
    options = _limits(MAX_MESSAGE)
    if tls is None or not tls.enabled:
        return grpc.insecure_channel(address, options=options)
    roots = grpc.ssl_channel_credentials(root_certificates=_pem(tls.ca_file, "ca_file"))
    return grpc.secure_channel(address, roots, options=options)


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
        error = ERRORS.error(err, what, address, timeout)
        hint = _tls_hint(err.details() or "")  # type: ignore[attr-defined]
        if hint and isinstance(error, Unavailable):
            error = Unavailable(f"{error}{hint}", error.path)
        raise error from None


def _tls_hint(details: str) -> str:
    """What to check when gRPC's ``details`` of a failed call point at TLS settings."""
    if "andshake failed" in details:  # "Tls handshake failed", older "Ssl handshake failed"
        return "; TLS: is the server a TLS one, and tls.ca_file the CA of its cluster?"
    if details.endswith("Socket closed"):  # a TLS server hangs up on a plaintext hello
        return "; if the server speaks TLS, set tls.enabled and tls.ca_file (its cluster's CA)"
    return ""
