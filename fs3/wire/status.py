"""Errors across gRPC, one implementation for fs3's services and hai's.

A servicer's error goes back as a status code and, in the details, JSON naming its type
(``kind``), its message and whatever else it carries (fs3's ``path``, hai's ``problems``);
the client raises the same type again. Details are decoded only when they are ours: gRPC
writes details of its own, some of them JSON-like debug strings (``{"created": ...,
"description": "failed to connect to all addresses"}`` while a server is unreachable),
and those must map by status code to the retryable ``Unavailable`` or to a timeout, never
fail to parse. Each package builds one :class:`ErrorCodec` with its own error types.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc

Details = dict[str, Any]


def our_details(details: str) -> Details | None:
    """The error a servicer of ours sent in ``details``, or None for gRPC's own details
    (some of which are JSON-like debug strings too)."""
    if not details.startswith("{"):
        return None
    try:
        info = json.loads(details)
    except ValueError:
        return None
    return info if isinstance(info, dict) and {"kind", "message"} <= info.keys() else None


@dataclass(frozen=True)
class ErrorCodec:
    """How one package's errors cross gRPC.

    Attributes:
        root: the package's root error type; anything else a servicer raises is a bug and
            goes back as INTERNAL.
        statuses: the status code of each type (others: UNKNOWN).
        fields: the details of an error beyond its ``kind`` (at least ``message``).
        rebuild: the error of decoded details, which hold ``kind`` and ``message``.
        unavailable: the package's retryable "cannot reach the server" type.
        timeout: the package's type for a call that got no answer in time.
        server: what the client calls the server in messages ("server", "hai server").
        unavailable_hint: appended to the unavailable message: what to check.
        timeout_hint: appended to the timeout message: which setting to raise.
        logger: where a servicer's unexpected exception is logged with its traceback.
    """

    root: type[Exception]
    statuses: Mapping[type[Exception], grpc.StatusCode]
    fields: Callable[[Any], Details]
    rebuild: Callable[[Details], Exception]
    unavailable: Callable[[str], Exception]
    timeout: Callable[[str], Exception]
    server: str = "server"
    unavailable_hint: str = ""
    timeout_hint: str = ""
    logger: str = "fs3.rpc"

    def abort(self, context: grpc.ServicerContext, err: Exception, method: str) -> NoReturn:
        """Ends the call to ``method`` with the status for ``err``, raised by its servicer."""
        if isinstance(err, self.root):
            details = json.dumps({"kind": type(err).__name__, **self.fields(err)})
            context.abort(self.statuses.get(type(err), grpc.StatusCode.UNKNOWN), details)
        logging.getLogger(self.logger).error("%s failed", method, exc_info=err)
        context.abort(grpc.StatusCode.INTERNAL, f"{method}: {type(err).__name__}: {err}")

    def error(self, err: grpc.RpcError, what: str, address: str, timeout_s: float) -> Exception:
        """The error to raise for a failed call (``what``) to the server at ``address``:
        the server's own error when it sent one, else ``unavailable`` or ``timeout`` by status
        code, else ``root`` naming the code and gRPC's details."""
        code, details = err.code(), err.details() or ""  # type: ignore[attr-defined]
        info = our_details(details)
        if info is not None:
            return self.rebuild(info)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return self.timeout(
                f"{what}: no answer from {address} within {timeout_s:g}s{self.timeout_hint}"
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            return self.unavailable(
                f"{what}: {self.server} at {address} unavailable ({details}){self.unavailable_hint}"
            )
        return self.root(f"{what} at {address} failed: {code.name}: {details}")
