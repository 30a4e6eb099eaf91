"""gRPC plumbing: JSON-encoded unary methods, the token header, and error <-> status mapping.

Messages are the core's dataclasses as JSON (``json.dumps(dataclasses.asdict(...))``),
carried by gRPC's generic handlers, so the wire format and the cores cannot drift apart
and no generated code is needed. Errors travel as a JSON status detail naming the error
type, and :meth:`ApiClient.call` raises the same :mod:`hai.errors` type on the client.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

from fs3.rpc import SERVER_OPTIONS, listens
from hai.errors import (
    ERRORS_BY_NAME,
    AuthError,
    ConfigError,
    ForbiddenError,
    HaiError,
    HaiTimeoutError,
    NotFoundError,
    QuotaError,
    SpecError,
    StateError,
    Unavailable,
)

log = logging.getLogger("hai.rpc")
SERVICE = "hai.Platform"
TOKEN_HEADER = "x-hai-token"

_STATUS: dict[type[HaiError], grpc.StatusCode] = {
    SpecError: grpc.StatusCode.INVALID_ARGUMENT,
    ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    QuotaError: grpc.StatusCode.FAILED_PRECONDITION,
    StateError: grpc.StatusCode.FAILED_PRECONDITION,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    AuthError: grpc.StatusCode.UNAUTHENTICATED,
    ForbiddenError: grpc.StatusCode.PERMISSION_DENIED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    HaiTimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
}

Handler = Callable[[dict[str, Any], str | None], Any]
"""Takes the request body and the caller's token; returns a dataclass, list or scalar."""


def to_json(value: Any) -> bytes:
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return dataclasses.asdict(v)
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    return json.dumps(plain(value)).encode()


def _wrap(name: str, handler: Handler) -> grpc.RpcMethodHandler:
    def call(request: dict[str, Any], context: grpc.ServicerContext) -> Any:
        token = dict(context.invocation_metadata()).get(TOKEN_HEADER)
        try:
            return handler(request, token)
        except HaiError as err:
            detail = {"kind": type(err).__name__, "message": str(err)}
            if isinstance(err, SpecError):
                detail["problems"] = err.problems
            context.abort(_STATUS.get(type(err), grpc.StatusCode.UNKNOWN), json.dumps(detail))
        except Exception as err:
            log.exception("%s failed", name)
            context.abort(grpc.StatusCode.INTERNAL, f"{name}: {type(err).__name__}: {err}")

    return grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=json.loads, response_serializer=to_json
    )


def serve(handlers: dict[str, Handler], host: str, port: int, workers: int = 8) -> grpc.Server:
    """Starts a server for ``handlers`` (method name -> function) on ``host:port``."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=SERVER_OPTIONS)
    generic = grpc.method_handlers_generic_handler(
        SERVICE, {name: _wrap(name, h) for name, h in handlers.items()}
    )
    server.add_generic_rpc_handlers((generic,))
    if not listens(server, host, port):
        raise Unavailable(f"cannot listen on {host}:{port}; is the port in use?")
    server.start()
    return server


def _our_error(details: str) -> dict[str, Any] | None:
    """The error detail our servicer sent, or None for gRPC's own details (some of which
    are JSON-like debug strings too, e.g. while the server is unreachable)."""
    if not details.startswith("{"):
        return None
    try:
        info = json.loads(details)
    except ValueError:
        return None
    return info if isinstance(info, dict) and {"kind", "message"} <= info.keys() else None


class ApiClient:
    """Calls the platform's methods; every call has a timeout."""

    def __init__(self, address: str, token: str | None, timeout_s: float = 10.0) -> None:
        self.address = address
        self.token = token
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(address)

    def close(self) -> None:
        self._channel.close()

    def call(self, method: str, timeout_s: float | None = None, **body: Any) -> Any:
        """Calls ``method`` with ``body`` as its request.

        Raises:
            Unavailable: the server cannot be reached (retryable).
            HaiTimeoutError: no answer within the timeout.
            HaiError subclass: the error the server raised.
        """
        stub = self._channel.unary_unary(
            f"/{SERVICE}/{method}", request_serializer=to_json, response_deserializer=json.loads
        )
        timeout = self.timeout_s if timeout_s is None else timeout_s
        metadata = ((TOKEN_HEADER, self.token),) if self.token else ()
        try:
            return stub(body, timeout=timeout, metadata=metadata)
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""  # type: ignore[attr-defined]
            info = _our_error(details)
            if info is not None:
                if info["kind"] == "SpecError":
                    raise SpecError(info["problems"]) from None
                raise ERRORS_BY_NAME.get(info["kind"], HaiError)(info["message"]) from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise HaiTimeoutError(
                    f"{method}: no answer from {self.address} within {timeout:g}s"
                ) from None
            if code == grpc.StatusCode.UNAVAILABLE:
                raise Unavailable(
                    f"{method}: hai server at {self.address} unavailable ({details}); "
                    "is it running? (`hai up` starts a local cluster)"
                ) from None
            raise HaiError(f"{method} at {self.address} failed: {code.name}: {details}") from None
