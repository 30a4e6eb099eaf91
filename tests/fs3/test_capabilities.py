"""Capabilities on the data plane and signed service calls (issue 18).

The token format is tested as pure code; the attacks run against a real local cluster: raw
frames to storage ports from a second account (uid 65534, a forked child that switched
user: the venv's interpreter lives in a 0700 folder that account cannot exec), forged
mgmtd calls over real gRPC, and capabilities moved between files.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fs3 import capabilities as caps
from fs3.client.chunks import Grants
from fs3.client.filesystem import FS3FileSystem
from fs3.cluster import LocalCluster
from fs3.config import SecurityConfig
from fs3.errors import CapabilityRefused, ConfigError
from fs3.mgmtd.client import MgmtdClient
from fs3.types import TargetInfo
from fs3.wire.codes import ERROR_CODES
from fs3.wire.framing import RESPONSE, Request
from fs3.wire.ops import DUMP, READ, REMOVE, REPLICATE, WRITE

from .conftest import FAST

REFUSED = ERROR_CODES[CapabilityRefused]
KEYS = caps.Keys.from_secret(b"k" * caps.SECRET_BYTES)
NOW = 1_800_000_000.0


# -- the token ---------------------------------------------------------------------------
def _verifier(now: float = NOW, skew: float = 5.0) -> caps.Verifier:
    return caps.Verifier(KEYS, skew, clock=lambda: now)


def test_a_capability_allows_what_it_names() -> None:
    token = caps.issue(KEYS.capability, 7, caps.READ, 60, first=2, end=4, now=NOW)
    got = _verifier().check(token, 7, caps.READ, 2, 4)
    assert (got.inode, got.ops, got.first, got.end) == (7, caps.READ, 2, 4)
    assert len(token) == caps.SIZE


def test_every_altered_byte_is_refused() -> None:
    token = caps.issue(KEYS.capability, 7, caps.ALL_OPS, 60, now=NOW)
    for i in range(caps.SIZE):  # kind, ops, range, inode, expiry, nonce and the MAC itself
        bad = bytearray(token)
        bad[i] ^= 0x01
        with pytest.raises(CapabilityRefused):
            _verifier().check(bytes(bad), 7, caps.READ, 0, 1)


@pytest.mark.parametrize(
    ("inode", "op", "first", "end", "why"),
    [
        (8, caps.READ, 0, 1, "inode 7, not 8"),
        (7, caps.WRITE, 0, 1, "does not allow writing"),
        (7, caps.READ, 4, 5, "outside"),
        (7, caps.READ, 1, caps.WHOLE_FILE, "outside"),
    ],
)
def test_another_inode_op_or_chunk_is_refused(
    inode: int, op: int, first: int, end: int, why: str
) -> None:
    token = caps.issue(KEYS.capability, 7, caps.READ, 60, first=0, end=4, now=NOW)
    with pytest.raises(CapabilityRefused, match=why):
        _verifier().check(token, inode, op, first, end)


def test_expiry_allows_the_clock_skew_and_no_more() -> None:
    token = caps.issue(KEYS.capability, 7, caps.READ, 60, now=NOW)
    _verifier(now=NOW + 64).check(token, 7, caps.READ, 0, 1)  # 60 s + 4 s of 5 s skew
    with pytest.raises(CapabilityRefused, match="expired"):
        _verifier(now=NOW + 66).check(token, 7, caps.READ, 0, 1)


def test_service_ops_need_a_service_capability_signed_with_the_service_key() -> None:
    client = caps.issue(KEYS.capability, 7, caps.ALL_OPS, 60, now=NOW)
    with pytest.raises(CapabilityRefused, match="services only"):
        _verifier().check(client, 7, 0, 0, 0, service_only=True)
    service = caps.issue_service(KEYS.service, 60, now=NOW)
    assert _verifier().check(service, 99, 0, 0, 0, service_only=True).service
    # The client key cannot make a service capability: a leaked client key opens no deletes.
    forged = caps.issue_service(KEYS.capability, 60, now=NOW)
    with pytest.raises(CapabilityRefused, match="signature"):
        _verifier().check(forged, 7, 0, 0, 0, service_only=True)
    assert len({KEYS.capability, KEYS.service, KEYS.mgmtd}) == 3


def test_missing_or_short_capability_is_refused() -> None:
    with pytest.raises(CapabilityRefused, match="no capability"):
        _verifier().check(b"", 7, caps.READ, 0, 1)
    with pytest.raises(CapabilityRefused, match="68 bytes"):
        _verifier().check(b"x" * 10, 7, caps.READ, 0, 1)


def test_signed_calls_bind_method_body_and_time() -> None:
    signature = caps.sign_call(KEYS.mgmtd, "Heartbeat", b"body", now=NOW)
    caps.check_call(KEYS.mgmtd, "Heartbeat", b"body", signature, 30, now=NOW + 39)
    caps.check_call(KEYS.mgmtd, "Heartbeat", b"body", signature, 30, now=NOW - 29)
    refused = [
        ("Heartbeat", b"body!", signature, NOW),
        ("SyncDone", b"body", signature, NOW),
        ("Heartbeat", b"body", signature, NOW + 31 + caps.CALL_TRANSIT_S),
        ("Heartbeat", b"body", signature, NOW - 31),
        ("Heartbeat", b"body", None, NOW),
        ("Heartbeat", b"body", "12.\u00e9", NOW),
        ("Heartbeat", b"body", caps.sign_call(KEYS.service, "Heartbeat", b"body", NOW), NOW),
    ]
    for method, body, value, now in refused:
        with pytest.raises(CapabilityRefused, match=method):
            caps.check_call(KEYS.mgmtd, method, body, value, 30, now=now)


def test_secret_file_must_be_private_and_whole(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    caps.create_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = caps.read_secret(path)
    caps.create_secret(path)  # kept: capabilities issued before stay valid
    assert caps.read_secret(path) == first
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        caps.read_secret(path)
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="5 bytes, not 32"):
        caps.read_secret(path)


def test_grants_renew_at_half_life_and_keep_write_beside_read() -> None:
    clock = [NOW]
    grants = Grants(clock=lambda: clock[0])
    renewed: list[int] = []

    def renew(ops: int) -> Callable[[], None]:
        def again() -> None:
            renewed.append(ops)
            grants.put(5, caps.issue(KEYS.capability, 5, ops, 60, now=clock[0]), again)

        return again

    write = caps.issue(KEYS.capability, 5, caps.WRITE, 60, now=NOW)
    grants.put(5, write, renew(caps.WRITE))
    read = caps.issue(KEYS.capability, 5, caps.READ, 60, now=NOW)
    grants.put(5, read, renew(caps.READ))
    assert grants.get(5, caps.WRITE) == write and grants.get(5, caps.READ) == read
    assert grants.get(6, caps.READ) == b""  # never opened: the target will refuse
    clock[0] = NOW + 31
    fresh = grants.get(5, caps.READ)
    assert renewed == [caps.READ] and fresh != read
    assert caps.parse(fresh).expires == NOW + 91


# -- against a real cluster ----------------------------------------------------------------
@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> LocalCluster:
    # Short capabilities and no skew allowance, so renewal happens within a test.
    settings = {**FAST, "security": {"capability_s": 4.0, "clock_skew_s": 0.0}}
    c = LocalCluster(tmp_path_factory.mktemp("fs3-caps"), settings=settings)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def fs(secured: LocalCluster) -> FS3FileSystem:
    return FS3FileSystem(secured.address, chunk_size=64 * 1024, skip_instance_cache=True)


def _raw(address: str, req: Request, payload: bytes = b"") -> int:
    """Sends one frame as is; returns the reply's status byte."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(req.pack(len(payload)) + payload)
        header = b""
        while len(header) < RESPONSE.size:
            got = sock.recv(RESPONSE.size - len(header))
            assert got, "target closed the connection without a reply"
            header += got
        return RESPONSE.unpack(header)[0]


def _as_nobody(work: Callable[[], object]) -> object:
    """Runs ``work`` in a forked child that became uid/gid 65534 with no groups; returns
    what it returned (JSON), or raises what it raised as AssertionError."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery from here on, only os._exit
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            result = {"ok": work()}
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            result = {"error": f"{type(err).__name__}: {err}"}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        out = json.loads(f.read() or b'{"error": "child died"}')
    os.waitpid(pid, 0)
    assert "error" not in out, out["error"]
    return out["ok"]


def _where(fs: FS3FileSystem, path: str) -> tuple[int, int, int, list[str]]:
    """inode, chain and table version of chunk 0 of ``path``, and its chain's addresses."""
    inode = fs.meta.open(path)
    table = fs.mgmtd.refresh()
    chain = inode.layout.chain_of(0)
    members = [table.targets[t].data_address for t in table.chains[chain].writers()]
    return inode.id, chain, table.version, members


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid 65534 needs root")


@needs_root
def test_raw_frames_from_another_account_are_refused(fs: FS3FileSystem) -> None:
    data = os.urandom(200_000)
    fs.pipe_file("/caps/victim", data)
    inode, chain, version, members = _where(fs, "/caps/victim")
    forged = os.urandom(caps.SIZE)

    def attack() -> list[int]:
        statuses = []
        for address in members:
            statuses.append(_raw(address, Request(REMOVE, chain, version, inode, 0)))
            statuses.append(_raw(address, Request(REMOVE, chain, 0, inode, 0, capability=forged)))
            statuses.append(_raw(address, Request(DUMP, chain)))
        statuses.append(_raw(members[-1], Request(READ, chain, version, inode, 0, 0, 1000)))
        write = Request(WRITE, chain, version, inode, 0, crc=0, capability=forged)
        statuses.append(_raw(members[0], write, b"evil"))
        replicate = Request(REPLICATE, chain, version, inode, 0, version=99, capability=forged)
        statuses.append(_raw(members[-1], replicate, b"evil"))
        return statuses

    statuses = _as_nobody(attack)
    assert statuses == [REFUSED] * len(statuses)  # type: ignore[operator]
    assert fs.cat_file("/caps/victim") == data


@needs_root
def test_chunk_files_and_target_folders_are_private(
    secured: LocalCluster, fs: FS3FileSystem
) -> None:
    fs.pipe_file("/caps/private", b"secret bytes")
    chunk_files = []
    for i in range(1, secured.targets + 1):
        root = secured.root / f"storage-{i}"
        for folder, _, files in os.walk(root):
            assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
            chunk_files += [Path(folder, f) for f in files if f[0].isdigit()]
    assert chunk_files
    assert {stat.S_IMODE(p.stat().st_mode) for p in chunk_files} == {0o600}

    def peek() -> str:
        try:
            chunk_files[0].read_bytes()
        except PermissionError:
            return "refused"
        return "read"

    assert _as_nobody(peek) == "refused"


def test_a_capability_moves_to_no_other_file_op_or_past_its_expiry(
    secured: LocalCluster, fs: FS3FileSystem
) -> None:
    fs.pipe_file("/caps/a", b"A" * 1000)
    fs.pipe_file("/caps/b", b"B" * 1000)
    reader = FS3FileSystem(secured.address, skip_instance_cache=True)  # opens, never creates
    a, chain_a, version, members_a = _where(reader, "/caps/a")
    b, chain_b, _, members_b = _where(reader, "/caps/b")
    read_a = reader.chunks.grants.get(a, caps.READ)
    assert caps.parse(read_a).ops == caps.READ  # the open above asked for reading only
    on_b = Request(READ, chain_b, version, b, 0, 0, 1000, capability=read_a)
    assert _raw(members_b[-1], on_b) == REFUSED
    own = Request(READ, chain_a, version, a, 0, 0, 1000, capability=read_a)
    assert _raw(members_a[-1], own) == 0
    write_a = Request(WRITE, chain_a, version, a, 0, crc=0, capability=read_a)
    assert _raw(members_a[0], write_a, b"x") == REFUSED
    delete_a = Request(REMOVE, chain_a, version, a, 0, capability=read_a)
    assert _raw(members_a[0], delete_a) == REFUSED
    time.sleep(4.5)  # capability_s is 4 and no skew is allowed: read_a is dead now
    assert _raw(members_a[-1], own) == REFUSED
    assert fs.cat_file("/caps/b") == b"B" * 1000


def test_an_open_file_outlives_its_capability(fs: FS3FileSystem) -> None:
    fs.pipe_file("/caps/long", b"L" * 1_000_000)  # 16 chunks: more than read ahead at once
    with fs.open("/caps/long", "rb") as f, fs.open("/caps/long-copy", "wb") as out:
        first = f.read(100_000)
        out.write(first)
        time.sleep(4.5)  # past the capabilities both files opened with: renewed from meta
        rest = f.read()
        out.write(rest)
    assert first + rest == b"L" * 1_000_000
    assert fs.cat_file("/caps/long-copy") == b"L" * 1_000_000
    fs.truncate("/caps/long-copy", 10)  # REMOVE with the client's own write capability
    assert fs.cat_file("/caps/long-copy") == b"L" * 10


def test_forged_mgmtd_calls_change_nothing(secured: LocalCluster, fs: FS3FileSystem) -> None:
    client = MgmtdClient(secured.address, 5.0)
    try:
        before = client.refresh()
        real = before.targets[1]
        moved = TargetInfo(1, real.host, real.data_port + 1, real.grpc_port)
        with pytest.raises(CapabilityRefused, match="Heartbeat: not signed"):
            client.heartbeat(moved)
        wrong_key = caps.Keys.from_secret(os.urandom(caps.SECRET_BYTES))
        forger = MgmtdClient(secured.address, 5.0, service_keys=wrong_key)
        try:
            with pytest.raises(CapabilityRefused, match="Heartbeat"):
                forger.heartbeat(moved)
            with pytest.raises(CapabilityRefused, match="RegisterMeta"):
                forger.register_meta("127.0.0.1:1")
            with pytest.raises(CapabilityRefused, match="SyncDone"):
                forger.sync_done(1, 1)
        finally:
            forger.close()
        after = client.refresh()
        assert after.targets[1].data_address == real.data_address
        assert "127.0.0.1:1" not in after.meta_addresses
    finally:
        client.close()
    fs.pipe_file("/caps/after-forgery", b"still here")
    assert fs.cat_file("/caps/after-forgery") == b"still here"


def test_services_refuse_to_start_without_the_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="security.secret_file is not set"):
        caps.service_keys(SecurityConfig())
    assert caps.service_keys(SecurityConfig(capabilities=False)) is None


def test_a_batch_checks_each_capability_once_and_each_use_alone() -> None:
    """A READ_BATCH's checks (BatchChecks): the signature and expiry of each distinct
    capability once, its inode/op/range at every use; an expired or forged one fails only
    its own uses, with the same reasons Verifier.check gives."""
    clock_reads: list[float] = []

    def clock() -> float:
        clock_reads.append(NOW)
        return NOW

    checks = caps.Verifier(KEYS, 5.0, clock=clock).batch()
    live = caps.issue(KEYS.capability, 7, caps.READ, 60, first=0, end=4, now=NOW)
    expired = caps.issue(KEYS.capability, 8, caps.READ, 60, now=NOW - 70)
    forged = bytearray(caps.issue(KEYS.capability, 9, caps.READ, 60, now=NOW))
    forged[-1] ^= 1
    for _ in range(3):  # interleaved uses, as the pieces of one batch come
        assert checks.check(live, 7, caps.READ, 2, 3).inode == 7
        with pytest.raises(CapabilityRefused, match="expired"):
            checks.check(expired, 8, caps.READ, 0, 1)
        with pytest.raises(CapabilityRefused, match="signature"):
            checks.check(bytes(forged), 9, caps.READ, 0, 1)
        with pytest.raises(CapabilityRefused, match="inode 7, not 8"):
            checks.check(live, 8, caps.READ, 0, 1)
        with pytest.raises(CapabilityRefused, match="outside"):
            checks.check(live, 7, caps.READ, 4, 5)
        with pytest.raises(CapabilityRefused, match="does not allow writing"):
            checks.check(live, 7, caps.WRITE, 0, 1)
        with pytest.raises(CapabilityRefused, match="no capability"):
            checks.check(b"", 7, caps.READ, 0, 1)
    assert len(clock_reads) == 2  # the expiry of live and of expired, once each
    with pytest.raises(CapabilityRefused, match="services only"):  # a batch reads no service op
        caps.allows(caps.parse(live), 7, caps.READ, 0, 1, service_only=True)
