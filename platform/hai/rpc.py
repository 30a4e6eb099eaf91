"""gRPC plumbing: JSON-encoded unary methods, the token header, and error <-> status mapping.

Messages are the core's dataclasses as JSON (``json.dumps(dataclasses.asdict(...))``),
carried by gRPC's generic handlers, so the wire format and the cores cannot drift apart
and no generated code is needed. Errors travel as a JSON status detail naming the error
type, and :meth:`ApiClient.call` raises the same :mod:`hai.errors` type on the client; the
mapping is fs3's (:mod:`fs3.wire.status`) with hai's types. Servers also answer
``grpc.health.v1.Health`` on their port (:func:`fs3.rpc.serve`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import grpc

import fs3.errors
import fs3.rpc
from fs3.wire.status import Details, ErrorCodec
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

SERVICE = "hai.Platform"
TOKEN_HEADER = "x-hai-token"


def _fields(err: HaiError) -> Details:
    if isinstance(err, SpecError):
        return {"message": str(err), "problems": err.problems}
    return {"message": str(err)}


def _rebuild(info: Details) -> HaiError:
    if info["kind"] == "SpecError":
        return SpecError(info["problems"])
    return ERRORS_BY_NAME.get(info["kind"], HaiError)(info["message"])


ERRORS = ErrorCodec(
    root=HaiError,
    statuses={
        SpecError: grpc.StatusCode.INVALID_ARGUMENT,
        ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
        QuotaError: grpc.StatusCode.FAILED_PRECONDITION,
        StateError: grpc.StatusCode.FAILED_PRECONDITION,
        NotFoundError: grpc.StatusCode.NOT_FOUND,
        AuthError: grpc.StatusCode.UNAUTHENTICATED,
        ForbiddenError: grpc.StatusCode.PERMISSION_DENIED,
        Unavailable: grpc.StatusCode.UNAVAILABLE,
        HaiTimeoutError: grpc.StatusCode.DEADLINE_EXCEEDED,
    },
    fields=_fields,
    rebuild=_rebuild,
    unavailable=Unavailable,
    timeout=HaiTimeoutError,
    server="hai server",
    unavailable_hint="; is it running? (`hai up` starts a local cluster)",
    logger="hai.rpc",
)
"""hai's errors as gRPC statuses."""

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
        except Exception as err:
            ERRORS.abort(context, err, name)

    return grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=json.loads, response_serializer=to_json
    )


def serve(handlers: dict[str, Handler], host: str, port: int, workers: int = 8) -> grpc.Server:
    """Starts a server for ``handlers`` (method name -> function) on ``host:port``.

    Raises:
        Unavailable: ``host:port`` cannot be bound (in use, or not this machine's address).
    """
    generic = grpc.method_handlers_generic_handler(
        SERVICE, {name: _wrap(name, h) for name, h in handlers.items()}
    )
    try:
        return fs3.rpc.serve(
            lambda server: server.add_generic_rpc_handlers((generic,)),
            host,
            port,
            services=[SERVICE],
            workers=workers,
            max_message=None,  # gRPC's defaults: hai's messages are small JSON
        )
    except fs3.errors.Unavailable as err:
        raise Unavailable(str(err)) from None


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
            raise ERRORS.error(err, method, self.address, timeout) from None
