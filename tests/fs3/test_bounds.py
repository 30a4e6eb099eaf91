"""Bounds on every message (issue 18): no frame makes a server allocate past its configured
limits, a bad frame closes only its own connection, and names keep POSIX's limits.

The wire tests run against a private cluster (fuzzed frames may write or delete chunks)
whose limits are lowered to 1 MiB, so a server that allocated what a header announced
(4 GiB before these checks) fails the RSS bound at once.
"""

from __future__ import annotations

import errno
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fs3.client import FS3FileSystem
from fs3.cluster import LocalCluster
from fs3.proto import fs3_pb2 as pb
from fs3.proto import fs3_pb2_grpc as pbg
from fs3.rpc import channel
from fs3.wire.framing import LOCAL_MESSAGE_MAX, REQUEST, RESPONSE, Request
from fs3.wire.ops import (
    DUMP,
    LOCAL_BAD,
    LOCAL_HELLO,
    LOCAL_INFO,
    LOCAL_OPEN,
    META_OPS,
    READ,
    REMOVE,
    REPAIR,
    REPLICATE,
    SYNC,
    VERIFY,
    WITH_PAYLOAD,
    WRITE,
)
from hai.cli import main

from ..waiting import wait_for
from .conftest import FAST, SMALL_CHUNK

MiB = 1 << 20
LIMIT = 1 * MiB
RSS_GROWTH = 64 * MiB  # threads and caches; one frame honoured as announced would be 4 GiB
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    limits = {"limits": {"chunk_bytes": LIMIT, "meta_request_bytes": LIMIT}}
    c = LocalCluster(tmp_path_factory.mktemp("fs3-bounds"), settings={**FAST, **limits})
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def other(bounded: LocalCluster) -> FS3FileSystem:
    """A well-behaved client whose pooled connections stay open through the fuzzing."""
    return FS3FileSystem(bounded.address, chunk_size=SMALL_CHUNK, skip_instance_cache=True)


def _data_port(c: LocalCluster) -> int:
    return c.ports["storage-1"][0]


def _rss(c: LocalCluster, name: str) -> int:
    """The process's peak resident memory (VmHWM), so a buffer allocated and freed at once
    still counts."""
    status = Path(f"/proc/{c.procs[name].pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def _exchange(sock: socket.socket, raw: bytes, half_close: bool) -> bytes:
    """Sends ``raw``, optionally ends our side, and returns all the server sent until it
    closed. A server that neither answers nor closes fails on the socket timeout."""
    sock.settimeout(20.0)
    try:
        sock.sendall(raw)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
    except OSError:  # reset: the server closed while we were still sending
        return b""
    got = bytearray()
    while True:
        try:
            part = sock.recv(65536)
        except ConnectionResetError:
            return bytes(got)
        if not part:
            return bytes(got)
        got += part


def _tcp(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10.0)


def _refusal(got: bytes) -> str:
    """The message of the single error frame a refused header gets before the close."""
    status, length, _, _ = RESPONSE.unpack_from(got)
    assert status != 0 and len(got) == RESPONSE.size + length, got
    return json.loads(got[RESPONSE.size :])["message"]


def _still_serves(fs: FS3FileSystem, c: LocalCluster, key: int) -> None:
    for name, proc in c.procs.items():
        assert proc.poll() is None, f"{name} exited with {proc.returncode}"
    data = key.to_bytes(8, "big") * (SMALL_CHUNK // 4)  # two chunks
    fs.pipe_file(f"/other/{key % 7}", data)
    assert fs.cat_file(f"/other/{key % 7}") == data


def test_a_48_byte_frame_announcing_4_gib_is_refused_before_allocating(
    bounded: LocalCluster, other: FS3FileSystem
) -> None:
    _still_serves(other, bounded, 1)
    before = _rss(bounded, "storage-1")
    _, header = _announcing(WRITE, 2**32 - 1)
    assert len(header) == 48
    with _tcp(_data_port(bounded)) as sock:
        peer_port = sock.getsockname()[1]
        message = _refusal(_exchange(sock, header, half_close=False))
    assert "4294967295" in message and "limits.chunk_bytes (1048576)" in message
    assert _rss(bounded, "storage-1") - before < RSS_GROWTH
    log = bounded.root / "storage-1.log"
    wait_for(
        "the refusal logged with its peer",
        lambda: f"closing connection from 127.0.0.1:{peer_port}:" in log.read_text(),
    )
    _still_serves(other, bounded, 2)


def test_a_write_reaching_past_the_chunk_limit_is_refused(bounded: LocalCluster) -> None:
    # 10 bytes at offset 4 GiB - 1 would have been patched over 4 GiB of zeros.
    header = _header(Request(WRITE, chain=1, table_version=1, offset=2**32 - 1, length=10))
    with _tcp(_data_port(bounded)) as sock:
        message = _refusal(_exchange(sock, header + b"x" * 10, half_close=False))
    assert "offset 4294967295, length 10" in message


def test_an_oversized_meta_request_is_refused(bounded: LocalCluster, other: FS3FileSystem) -> None:
    _, header = _announcing(META_OPS["Stat"], LIMIT + 1)
    with _tcp(bounded.ports["meta"]) as sock:
        message = _refusal(_exchange(sock, header, half_close=False))
    assert "limits.meta_request_bytes (1048576)" in message
    _still_serves(other, bounded, 3)


def test_the_grpc_chunk_service_checks_the_same_bounds(bounded: LocalCluster) -> None:
    stub = pbg.ChunkServiceStub(channel(f"127.0.0.1:{bounded.ports['storage-1'][1]}"))
    far = pb.ChunkRequest(chain_id=1, table_version=1, offset=2**32 - 1, data=b"x")
    for call in (stub.Read, stub.Write):
        with pytest.raises(grpc.RpcError) as caught:
            call(far, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "limits.chunk_bytes" in caught.value.details()


def _local_socket(c: LocalCluster) -> str:
    with _tcp(_data_port(c)) as sock:
        got = _exchange(sock, Request(LOCAL_INFO).pack(0), half_close=True)
    return json.loads(got[RESPONSE.size :])["socket"]


def test_an_oversized_local_read_message_closes_that_connection(
    bounded: LocalCluster, other: FS3FileSystem
) -> None:
    before = _rss(bounded, "storage-1")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(_local_socket(bounded))
        _, header = _announcing(LOCAL_BAD, 2**32 - 1)
        assert _exchange(sock, header, half_close=False) == b""
    assert _rss(bounded, "storage-1") - before < RSS_GROWTH
    log = bounded.root / "storage-1.log"
    wait_for("the refusal logged", lambda: "a message of 4294967295 bytes" in log.read_text())
    _still_serves(other, bounded, 4)


u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
# Small lengths are whole frames; the limit's edges and the largest values probe the checks.
sizes = st.one_of(st.integers(0, 300), st.sampled_from([LIMIT, LIMIT + 1, 2**31, 2**32 - 1]), u32)


def _header(req: Request) -> bytes:
    """``req`` packed as is (``Request.pack`` would put the real payload size in length)."""
    fields = (req.chain, req.table_version, req.inode, req.index, req.offset, req.length)
    return REQUEST.pack(req.op, int(req.truncate), *fields, req.crc, req.version)


def _announcing(op: int, length: int) -> tuple[Request, bytes]:
    """A lone header announcing ``length`` bytes of body: the issue's 48-byte message."""
    req = Request(op, chain=1, table_version=1, inode=2**40, length=length)
    return req, _header(req)


@st.composite
def frames(draw: st.DrawFn, ops: list[int]) -> tuple[Request, bytes]:
    """A request header with any field values (the op mostly one of ``ops``, else one no
    server knows), then up to 300 bytes of body, cut anywhere: whole frames, truncated ones,
    and plain garbage."""
    if draw(st.integers(0, 9)) == 0:
        garbage = draw(st.binary(max_size=300))
        return Request(op=-1), garbage
    req = Request(
        op=draw(st.one_of(st.sampled_from(ops), st.integers(100, 255))),
        chain=draw(u32),
        table_version=draw(u32),
        # Inode ids no file has (they count up from 1): a fuzzed write or delete that
        # passes every check lands beside the other client's files, never on them.
        inode=draw(st.integers(2**40, 2**64 - 1)),
        index=draw(u32),
        offset=draw(sizes),
        length=draw(sizes),
        crc=draw(u32),
        version=draw(u64),
        truncate=draw(st.booleans()),
    )
    header = _header(req)
    raw = header + draw(st.binary(max_size=min(req.length, 300)))
    return req, raw[: draw(st.one_of(st.just(len(raw)), st.integers(0, len(raw))))]


def _fuzz(
    connect: socket.socket, raw: bytes, refused: bool, fs: FS3FileSystem, c: LocalCluster
) -> None:
    with connect as sock:
        got = _exchange(sock, raw, half_close=not refused)
    if refused:  # the header alone closes the connection, after the reason
        assert "limits." in _refusal(got)
    _still_serves(fs, c, len(raw))


DATA = [READ, WRITE, REPLICATE, SYNC, REMOVE, DUMP, LOCAL_INFO, VERIFY, REPAIR]


def test_fuzzed_data_path_frames(bounded: LocalCluster, other: FS3FileSystem) -> None:
    _still_serves(other, bounded, 5)
    before = _rss(bounded, "storage-1")

    @FUZZ
    @given(frame=frames(DATA))
    @example(frame=_announcing(WRITE, 2**32 - 1))
    def run(frame: tuple[Request, bytes]) -> None:
        req, raw = frame
        whole = len(raw) >= REQUEST.size
        over = req.op in (READ, *WITH_PAYLOAD) and req.offset + req.length > LIMIT
        _fuzz(_tcp(_data_port(bounded)), raw, whole and over, other, bounded)

    run()
    assert _rss(bounded, "storage-1") - before < RSS_GROWTH


# Requests that only read: a random SetQuota on "/" would refuse the other client's writes
# for a reason that has nothing to do with framing.
READ_ONLY_META = ["Stat", "Open", "List", "Readlink", "GetLengthLimit", "ListTrash"]


def test_fuzzed_meta_frames(bounded: LocalCluster, other: FS3FileSystem) -> None:
    _still_serves(other, bounded, 6)
    before = _rss(bounded, "meta")

    @FUZZ
    @given(frame=frames([META_OPS[name] for name in READ_ONLY_META]))
    @example(frame=_announcing(META_OPS["List"], 2**32 - 1))
    def run(frame: tuple[Request, bytes]) -> None:
        req, raw = frame
        refused = len(raw) >= REQUEST.size and req.length > LIMIT
        _fuzz(_tcp(bounded.ports["meta"]), raw, refused, other, bounded)

    run()
    assert _rss(bounded, "meta") - before < RSS_GROWTH


def test_fuzzed_local_read_frames(bounded: LocalCluster, other: FS3FileSystem) -> None:
    path = _local_socket(bounded)
    before = _rss(bounded, "storage-1")

    def unix() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        return sock

    @FUZZ
    @given(frame=frames([LOCAL_HELLO, LOCAL_OPEN, LOCAL_BAD]))
    @example(frame=_announcing(LOCAL_BAD, 2**32 - 1))
    def run(frame: tuple[Request, bytes]) -> None:
        req, raw = frame
        over = len(raw) >= REQUEST.size and req.op == LOCAL_BAD
        over = over and req.length > LOCAL_MESSAGE_MAX
        with unix() as sock:
            got = _exchange(sock, raw, half_close=not over)
        if over:  # closed without a word: the socket speaks only to our own client
            assert got == b""
        _still_serves(other, bounded, len(raw))

    run()
    assert _rss(bounded, "storage-1") - before < RSS_GROWTH


# -- names ------------------------------------------------------------------------------


def test_name_limits_through_fsspec(fs3fs: FS3FileSystem) -> None:
    longest = "n" * 251 + "é" * 2  # 255 bytes of UTF-8, 253 characters
    fs3fs.mkdir("/names")
    fs3fs.pipe_file(f"/names/{longest}", b"ok")
    assert fs3fs.cat_file(f"/names/{longest}") == b"ok"
    for bad, code in [
        ("n" * 254 + "é", errno.ENAMETOOLONG),  # 256 bytes, 255 characters
        ("/".join(["d" * 200] * 21), errno.ENAMETOOLONG),  # every name fits, the path not
        ("a\x00b", errno.EINVAL),
    ]:
        with pytest.raises(OSError) as caught:
            fs3fs.pipe_file(f"/names/{bad}", b"no")
        assert caught.value.errno == code, caught.value
    # Meta checks on its own: a client that skips the check is refused the same way.
    for name, message in [
        ("x" * 256, "name of 256 bytes exceeds 255"),
        ("x" * 100_000, "path of 100007 bytes exceeds 4096"),
    ]:
        with pytest.raises(OSError) as caught:
            fs3fs.meta.mkdir(f"/names/{name}", parents=True)
        assert caught.value.errno == errno.ENAMETOOLONG
        assert message in str(caught.value) and len(str(caught.value)) < 300
    with pytest.raises(OSError) as caught:
        fs3fs.meta.symlink("/names/link", "/t" * 3000)
    assert caught.value.errno == errno.ENAMETOOLONG
    assert fs3fs.ls("/names", detail=False) == [f"/names/{longest}"]


def test_cli_refuses_a_long_name_in_one_line(cluster: LocalCluster, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    put = CliRunner().invoke(
        main, ["fs3", "put", f"--address={cluster.address}", str(src), "/" + "y" * 300]
    )
    assert put.exit_code == 1
    assert "name of 300 bytes exceeds 255" in put.output
    assert len(put.output.strip().splitlines()) == 1 and "Traceback" not in put.output


def test_ls_escapes_control_characters(cluster: LocalCluster, fs3fs: FS3FileSystem) -> None:
    names = {
        "two\nlines": "two\\nlines",
        "esc\x1b[31mred": "esc\\033[31mred",
        "back\\slash": "back\\\\slash",
        "tab\there": "tab\\there",
        "plain é": "plain é",
    }
    for name in names:
        fs3fs.pipe_file(f"/escaped/{name}", b"")
    out = CliRunner().invoke(main, ["fs3", "ls", f"--address={cluster.address}", "/escaped"])
    assert out.exit_code == 0, out.output
    assert sorted(out.stdout.splitlines()) == sorted(f"/escaped/{v}" for v in names.values())
    long = CliRunner().invoke(main, ["fs3", "ls", "-l", f"--address={cluster.address}", "/escaped"])
    assert len(long.stdout.splitlines()) == len(names)
