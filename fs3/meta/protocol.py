"""Meta requests as frames of :mod:`fs3.storage.wire`: the ``Meta`` service of fs3.proto
without gRPC, whose per-call overhead capped metadata at a few hundred ops/s.

Op ``i + 1`` is the service's i-th method, the request payload its serialised request, the
reply payload its serialised response; errors travel as the wire's error frames.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from fs3.proto import fs3_pb2 as pb


@dataclass(frozen=True)
class Method:
    op: int
    name: str
    request: type[Message]
    reply: type[Message]


METHODS: dict[str, Method] = {
    m.name: Method(i + 1, m.name, getattr(pb, m.input_type.name), getattr(pb, m.output_type.name))
    for i, m in enumerate(pb.DESCRIPTOR.services_by_name["Meta"].methods)
}
BY_OP: dict[int, Method] = {m.op: m for m in METHODS.values()}
