"""Message ids of fs3's framed protocol, each written out once and never derived.

A frame's ``op`` byte names what a request asks for. Data-path ops go to a storage target's
data port, meta ops to a meta server's port, so the two tables may reuse numbers, but within
a table a number, once released, means one thing forever: a client and a server of
different versions agree only on what is spelled here, never on the order of a list or of
the methods in fs3.proto. New ops take new numbers; retired numbers are not reused.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import Message

from fs3.proto import fs3_pb2 as pb

# Data path (fs3.storage.server).
READ, WRITE, REPLICATE, SYNC, REMOVE, DUMP = 1, 2, 3, 4, 5, 6
# Local reads (fs3.storage.local_read): LOCAL_INFO on TCP answers where the target's Unix
# socket is and which machine it runs on; HELLO, OPEN and BAD travel on that Unix socket.
LOCAL_INFO, LOCAL_HELLO, LOCAL_OPEN, LOCAL_BAD = 7, 8, 9, 10
# fsck (fs3.fsck): VERIFY checks one replica's chunk on the target itself; REPAIR replaces a
# bad replica with a good copy if the replica still holds the version fsck saw.
VERIFY, REPAIR = 11, 12
# Many small reads in one round trip (fs3.wire.batch): the pieces travel in the payload.
READ_BATCH = 13
WITH_PAYLOAD = (WRITE, REPLICATE, SYNC, REPAIR, READ_BATCH)
"""Ops whose request carries a payload (``length`` is its size): chunk bytes, or a batch's
pieces."""

META_OPS: dict[str, int] = {
    # The numbers these methods had when they were counted by position in fs3.proto, so
    # clients and servers from before this table still understand each other.
    "Stat": 1,
    "Open": 2,
    "Mkdir": 3,
    "Create": 4,
    "List": 5,
    "Rename": 6,
    "Unlink": 7,
    "Rmdir": 8,
    "Truncate": 9,
    "SetLength": 10,
    "Symlink": 11,
    "Readlink": 12,
    "SetAttr": 13,
    "SetQuota": 14,
    "GetLengthLimit": 15,
    "Trash": 16,
    "ListTrash": 17,
    "RestoreTrash": 18,
    "GetInodeStatus": 19,
    "Chown": 20,
    "AddUser": 21,
    "ListUsers": 22,
    "RemoveUser": 23,
    "RotateUser": 24,
    "WhoAmI": 25,
    "Link": 30,
    "Mknod": 31,
}
"""The op of each method of fs3.proto's ``Meta`` service on the framed meta port."""


@dataclass(frozen=True)
class Method:
    """One meta method: its op, and the protobuf messages of its request and reply payloads."""

    op: int
    name: str
    request: type[Message]
    reply: type[Message]


def _meta_methods() -> dict[str, Method]:
    service = pb.DESCRIPTOR.services_by_name["Meta"]
    names = {m.name for m in service.methods}
    ops = list(META_OPS.values())
    twice = sorted({op for op in ops if ops.count(op) > 1})
    # A method added to fs3.proto without a number here, or a number given twice, would
    # otherwise surface as a KeyError on the first call or as one method answering another.
    if names != META_OPS.keys() or twice:
        raise ImportError(
            "fs3.wire.ops.META_OPS must give each Meta rpc of fs3.proto its own number: "
            f"unnumbered {sorted(names - META_OPS.keys())}, "
            f"not in fs3.proto {sorted(META_OPS.keys() - names)}, used twice {twice}"
        )
    return {
        m.name: Method(
            META_OPS[m.name],
            m.name,
            getattr(pb, m.input_type.name),
            getattr(pb, m.output_type.name),
        )
        for m in service.methods
    }


METHODS: dict[str, Method] = _meta_methods()
BY_OP: dict[int, Method] = {m.op: m for m in METHODS.values()}
