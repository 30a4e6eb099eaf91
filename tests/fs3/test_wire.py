"""The framed protocol's numbers are pinned here, literally: changing one must be a decision,
since a client and a server of different versions agree only on these. Errors survive the
wire by type, message and path; a code this version does not know is a plain Fs3Error."""

from __future__ import annotations

import pytest

import fs3.errors
from fs3.errors import Fs3Error, error_message
from fs3.types import TargetInfo
from fs3.wire import ops
from fs3.wire.codes import ERROR_CODES, error_type
from fs3.wire.framing import RESPONSE, error_frame, raise_error

DATA_OPS = {
    "READ": 1,
    "WRITE": 2,
    "REPLICATE": 3,
    "SYNC": 4,
    "REMOVE": 5,
    "DUMP": 6,
    "LOCAL_INFO": 7,
    "LOCAL_HELLO": 8,
    "LOCAL_OPEN": 9,
    "LOCAL_BAD": 10,
    "VERIFY": 11,
    "REPAIR": 12,
}
META_OPS = {
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
CODES = {
    "Fs3Error": 1,
    "NotFound": 2,
    "AlreadyExists": 3,
    "NotADirectory": 4,
    "IsADirectory": 5,
    "DirectoryNotEmpty": 6,
    "InvalidArgument": 7,
    "ChecksumMismatch": 8,
    "ChunkBusy": 9,
    "StaleRouting": 10,
    "Unavailable": 11,
    "Fs3TimeoutError": 12,
    "ConfigError": 13,
    "DataLost": 14,
    "QuotaExceeded": 15,
    "PermissionDenied": 16,
    "NotPermitted": 17,
    "NameTooLong": 18,
    "CapabilityRefused": 19,
}


def test_data_op_numbers_are_pinned() -> None:
    assert {name: getattr(ops, name) for name in DATA_OPS} == DATA_OPS
    assert len(set(DATA_OPS.values())) == len(DATA_OPS)


def test_every_meta_rpc_has_its_pinned_number() -> None:
    assert {name: m.op for name, m in ops.METHODS.items()} == META_OPS
    assert {op: m.name for op, m in ops.BY_OP.items()} == {v: k for k, v in META_OPS.items()}


def test_error_codes_are_pinned_and_cover_every_error_type() -> None:
    assert {cls.__name__: code for cls, code in ERROR_CODES.items()} == CODES
    assert set(ERROR_CODES) == set(fs3.errors.ERROR_TYPES)


@pytest.mark.parametrize("cls", list(ERROR_CODES), ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("path", ["/data/x", None])
def test_each_error_type_round_trips_through_an_error_frame(
    cls: type[Fs3Error], path: str | None
) -> None:
    header, body = error_frame(cls("it broke", path))
    status, length, _, _ = RESPONSE.unpack(header)
    assert status == CODES[cls.__name__] and length == len(body)
    with pytest.raises(Fs3Error) as caught:
        raise_error(status, body, "server 10.0.0.1:9000")
    assert type(caught.value) is cls
    assert error_message(caught.value) == "it broke (at server 10.0.0.1:9000)"
    assert caught.value.path == path


def test_an_unknown_code_is_a_plain_fs3_error() -> None:
    _, body = error_frame(fs3.errors.NotFound("gone", "/a"))
    assert error_type(200) is Fs3Error
    with pytest.raises(Fs3Error) as caught:
        raise_error(200, body, "a newer server")
    assert type(caught.value) is Fs3Error and caught.value.path == "/a"


def test_a_subclass_without_a_code_is_sent_as_fs3_error() -> None:
    class Local(fs3.errors.NotFound):
        pass

    header, _ = error_frame(Local("gone"))
    assert RESPONSE.unpack(header)[0] == CODES["Fs3Error"]


@pytest.mark.parametrize(
    ("host", "address"),
    [("10.0.0.7", "10.0.0.7:9100"), ("node-3", "node-3:9100"), ("fd00::7", "[fd00::7]:9100")],
)
def test_data_address(host: str, address: str) -> None:
    assert TargetInfo(1, host, 9100, 9101).data_address == address
