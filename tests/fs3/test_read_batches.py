"""Many small reads in flight (issue 22): READ_BATCH on the storage data port, cat_ranges and
cat over it, the submit/complete read ring, and the storage server's bounds and capability
checks on a batch. Against real LocalCluster processes; the raw frames go to a real data port.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator

import pytest

from fs3 import capabilities as caps
from fs3.client import FS3FileSystem
from fs3.client.ring import ReadRing
from fs3.cluster import LocalCluster
from fs3.errors import CapabilityRefused, Fs3Error, InvalidArgument, PermissionDenied
from fs3.reads_bench import format_table, measure
from fs3.types import User
from fs3.wire import batch
from fs3.wire.client import Connection
from fs3.wire.framing import RESPONSE, Request, error_of, recv_exact, send_frame
from fs3.wire.ops import READ_BATCH

from .conftest import SMALL_CHUNK

CS = SMALL_CHUNK


@pytest.fixture(scope="module")
def files(cluster: LocalCluster) -> Iterator[tuple[FS3FileSystem, dict[str, bytes]]]:
    """A multi-chunk file, a sparse one (100 bytes, then holes to 3.5 chunks), a tiny one."""
    fs = FS3FileSystem(cluster.address, chunk_size=CS, skip_instance_cache=True)
    content = {
        "/batches/big": os.urandom(5 * CS + 1234),
        "/batches/tiny": b"hello",
        "/batches/sparse": b"s" * 100 + bytes(3 * CS + CS // 2 - 100),
    }
    fs.pipe_file("/batches/big", content["/batches/big"])
    fs.pipe_file("/batches/tiny", content["/batches/tiny"])
    fs.pipe_file("/batches/sparse", b"s" * 100)
    fs.truncate("/batches/sparse", len(content["/batches/sparse"]))
    yield fs, content
    fs.rm("/batches", recursive=True)


def _ranges(content: dict[str, bytes], count: int) -> list[tuple[str, int | None, int | None]]:
    rng = random.Random(22)
    out: list[tuple[str, int | None, int | None]] = [
        ("/batches/big", CS - 10, CS + 10),  # across a chunk boundary
        ("/batches/big", 0, 3 * CS + 5),  # several whole chunks
        ("/batches/big", 5 * CS, 10 * CS),  # past the end: cut there
        ("/batches/big", 6 * CS, 7 * CS),  # wholly past the end: empty
        ("/batches/big", -100, None),  # from the end
        ("/batches/sparse", 50, 2 * CS),  # data, then holes
        ("/batches/sparse", CS + 3, 3 * CS + 7),  # holes only, across chunks
        ("/batches/tiny", None, None),
    ]
    paths = sorted(content)
    for _ in range(count):
        path = rng.choice(paths)
        size = len(content[path])
        start = rng.randrange(size + 10)
        out.append((path, start, start + rng.choice([1, 4096, 65536, CS + 17])))
    return out


def test_cat_ranges_equals_single_reads(files: tuple[FS3FileSystem, dict[str, bytes]]) -> None:
    fs, content = files
    ranges = _ranges(content, 200)
    got = fs.cat_ranges(
        [p for p, _, _ in ranges], [s for _, s, _ in ranges], [e for *_, e in ranges]
    )
    for (path, start, end), data in zip(ranges, got, strict=True):
        assert data == fs.cat_file(path, start, end), (path, start, end)
        assert data == content[path][start:end], (path, start, end)


def test_cat_ranges_reports_each_failure_in_its_place(
    files: tuple[FS3FileSystem, dict[str, bytes]],
) -> None:
    fs, content = files
    got = fs.cat_ranges(["/batches/tiny", "/batches/missing", "/batches"], [1, 0, 0], [4, 5, 5])
    assert got[0] == b"ell"
    assert isinstance(got[1], FileNotFoundError)
    assert isinstance(got[2], IsADirectoryError)
    with pytest.raises(FileNotFoundError):
        fs.cat_ranges(["/batches/tiny", "/batches/missing"], 0, 5, on_error="raise")
    whole = fs.cat(["/batches/big", "/batches/tiny", "/batches/sparse"])
    assert whole == content
    assert fs.cat("/batches/tiny") == b"hello"
    assert fs.cat(["/batches/tiny", "/batches/missing"], on_error="omit") == {
        "/batches/tiny": b"hello"
    }


def test_ring_puts_the_right_bytes_in_the_right_slots_under_concurrency(
    files: tuple[FS3FileSystem, dict[str, bytes]],
) -> None:
    fs, content = files
    big = content["/batches/big"]
    expected: dict[int, bytes] = {}
    recorded = threading.Condition()
    done: dict[int, bytes] = {}

    with ReadRing(fs, slots=48, slot_bytes=CS + 64, batches_in_flight=3) as ring:

        def submitter(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(40):
                offset, length = rng.randrange(len(big)), rng.choice([1, 4096, 70000, CS + 64])
                slot = ring.submit("/batches/big", offset, length, timeout=60)
                with recorded:
                    expected[slot] = big[offset : offset + length]
                    recorded.notify_all()

        def reaper(total: int) -> None:
            seen = 0
            while seen < total:  # a completion's bytes stay until the next complete()
                for c in ring.complete(1, timeout=60):
                    with recorded:  # its submitter may not have recorded it yet
                        assert recorded.wait_for(lambda c=c: c.slot in expected, 60)
                        want = expected.pop(c.slot)
                    done[c.slot] = bytes(ring.data(c)) if c.error is None else b"error"
                    assert done[c.slot] == want, (c.slot, c.error)
                    seen += 1

        workers = [threading.Thread(target=submitter, args=(s,)) for s in range(4)]
        reaping = threading.Thread(target=reaper, args=(160,))
        for t in [*workers, reaping]:
            t.start()
        for t in [*workers, reaping]:
            t.join(timeout=120)
        assert not reaping.is_alive() and not expected
    assert len(done) == 48  # every slot was used, each reused as it freed


def test_ring_reports_a_bad_read_as_its_own_slots_error(
    cluster: LocalCluster, files: tuple[FS3FileSystem, dict[str, bytes]]
) -> None:
    fs, content = files
    token = fs.meta.add_user(User("ringreader", 4242, 4242))
    try:
        fs.pipe_file("/batches/closed", b"not for ringreader")
        fs.chmod("/batches/closed", 0o600)
        reader = FS3FileSystem(cluster.address, token=token, skip_instance_cache=True)
        with ReadRing(reader, slots=8, slot_bytes=4096) as ring:
            good = ring.submit("/batches/big", 10, 100)
            missing = ring.submit("/batches/nothing", 0, 10)
            refused = ring.submit("/batches/closed", 0, 10)
            past_end = ring.submit("/batches/tiny", 5, 10)
            results = {}
            while len(results) < 4:
                results.update({c.slot: c for c in ring.complete(4, timeout=60)})
            assert bytes(ring.data(results[good])) == content["/batches/big"][10:110]
            assert isinstance(results[missing].error, FileNotFoundError)
            assert isinstance(results[refused].error, PermissionDenied)
            assert results[past_end].error is None and results[past_end].length == 0
            with pytest.raises(InvalidArgument, match="slot_bytes"):
                ring.submit("/batches/big", 0, 4097)
        with pytest.raises(Fs3Error, match="closed"):
            ring.submit("/batches/big", 0, 1)
    finally:
        fs.meta.remove_user("ringreader")


def test_a_full_ring_says_so_instead_of_waiting_for_ever(
    files: tuple[FS3FileSystem, dict[str, bytes]],
) -> None:
    fs, _ = files
    with ReadRing(fs, slots=2, slot_bytes=16) as ring:
        ring.submit("/batches/tiny", 0, 5)
        ring.submit("/batches/tiny", 1, 5)
        # Waits while those are in flight; once both completed (not taken) no slot can free.
        with pytest.raises(Fs3Error, match="call complete"):
            ring.submit("/batches/tiny", 0, 5)
        assert sorted(c.length for c in ring.complete(2, timeout=60)) == [4, 5]
        assert ring.complete(0, timeout=0) == []  # frees the two slots
        ring.submit("/batches/tiny", 0, 5)


def test_closing_the_ring_answers_every_read_once(
    files: tuple[FS3FileSystem, dict[str, bytes]],
) -> None:
    fs, content = files
    big = content["/batches/big"]
    ring = ReadRing(fs, slots=64, slot_bytes=4096, batches_in_flight=1)
    offsets = {ring.submit("/batches/big", 4096 * i, 4096): 4096 * i for i in range(64)}
    ring.close(cancel=True)  # those not sent yet are cancelled, the rest waited for
    completions = ring.complete(64, timeout=60)
    assert sorted(c.slot for c in completions) == sorted(offsets)
    for c in completions:
        if c.error is None:
            assert bytes(ring.data(c)) == big[offsets[c.slot] :][:4096]
        else:
            assert "cancelled" in str(c.error)


# -- the storage server's side ---------------------------------------------------------------
def _data_conn(fs: FS3FileSystem, path: str) -> tuple[Connection, int, int, int]:
    """A connection to the serving tail of chunk 0 of ``path``'s chain; the chain, the
    table version and the inode."""
    inode = fs.meta.open(path)
    table = fs.mgmtd.refresh()
    chain = inode.layout.chain_of(0)
    tail = table.chains[chain].readers()[-1]
    return Connection(table.targets[tail].data_address, 5, 30), chain, table.version, inode.id


def test_a_hostile_batch_gets_one_clear_error(
    files: tuple[FS3FileSystem, dict[str, bytes]],
) -> None:
    fs, _ = files
    conn, chain, version, inode = _data_conn(fs, "/batches/big")
    cap = fs.chunks.grants.get(inode, caps.READ)
    header = Request(READ_BATCH, table_version=version)
    many = [batch.BatchPiece(chain, inode, 0, 0, 1, cap)] * (batch.MAX_PIECES + 1)
    big = [batch.BatchPiece(chain, inode, 0, 0, CS, cap)] * (batch.MAX_BYTES // CS + 1)
    past_chunk = [batch.BatchPiece(chain, inode, 0, 2**32 - 10, 100, cap)]
    try:
        for pieces, why in (
            (many, "MAX_PIECES"),
            (big, "MAX_BYTES"),
            (past_chunk, "limits.chunk_bytes"),
        ):
            with pytest.raises(InvalidArgument, match=why):
                conn.request(header, batch.encode_request(pieces))
        with pytest.raises(InvalidArgument, match="does not hold"):
            conn.request(header, batch.encode_request(past_chunk)[:-3])
    finally:
        conn.close()
    # A header announcing more than any batch: refused before the payload is received.
    huge = Connection(conn.address, 5, 30)
    try:
        send_frame(huge.sock, header.pack(batch.MAX_PAYLOAD + 1))
        reply = bytearray(RESPONSE.size)
        recv_exact(huge.sock, memoryview(reply))
        status, length, _, _ = RESPONSE.unpack(reply)
        body = memoryview(bytearray(length))
        recv_exact(huge.sock, body)
        assert isinstance(error_of(status, body, "test"), InvalidArgument)
        assert "MAX_PIECES" in bytes(body).decode()
    finally:
        huge.close()
    assert fs.cat_ranges(["/batches/tiny"], 0, 5) == [b"hello"]  # the server serves on


def test_a_batch_piece_without_its_capability_is_refused_alone(
    files: tuple[FS3FileSystem, dict[str, bytes]],
) -> None:
    fs, content = files
    conn, chain, version, inode = _data_conn(fs, "/batches/big")
    other = fs.meta.open("/batches/tiny")
    mine = fs.chunks.grants.get(inode, caps.READ)
    assert mine, "the session cluster runs with capabilities on"
    pieces = [
        batch.BatchPiece(chain, inode, 0, 0, 64, mine),
        # another file's chunk with this file's capability, and with none at all
        batch.BatchPiece(other.layout.chain_of(0), other.id, 0, 0, 5, mine),
        batch.BatchPiece(other.layout.chain_of(0), other.id, 0, 0, 5, b""),
        batch.BatchPiece(chain, inode, 0, 64, 64, mine),
    ]
    try:
        _, _, body = conn.request(
            Request(READ_BATCH, table_version=version), batch.encode_request(pieces)
        )
        answers = batch.decode_reply(body, len(pieces), "test")
    finally:
        conn.close()
    data = content["/batches/big"]
    assert not isinstance(answers[0], Fs3Error) and bytes(answers[0][1]) == data[:64]
    assert isinstance(answers[1], CapabilityRefused) and "not" in str(answers[1])
    assert isinstance(answers[2], CapabilityRefused) and "no capability" in str(answers[2])
    assert not isinstance(answers[3], Fs3Error) and bytes(answers[3][1]) == data[64:128]
    assert b"hello" not in bytes(body)  # nothing of the refused file travelled


def test_a_batch_with_two_capabilities_refuses_only_the_expired_ones_pieces(
    cluster: LocalCluster, files: tuple[FS3FileSystem, dict[str, bytes]]
) -> None:
    """The target checks each distinct capability once per batch (signature, expiry), then
    each piece's use of it: pieces under an expired capability, signed with the cluster's
    real key and interleaved with live ones, are refused alone."""
    fs, content = files
    conn, chain, version, inode = _data_conn(fs, "/batches/big")
    live = fs.chunks.grants.get(inode, caps.READ)
    keys = caps.Keys.from_secret(caps.read_secret(cluster.root / "secret"))
    expired = caps.issue(keys.capability, inode, caps.READ, 60, now=time.time() - 3600)
    pieces = [
        batch.BatchPiece(chain, inode, 0, 0, 64, live),
        batch.BatchPiece(chain, inode, 0, 64, 64, expired),
        batch.BatchPiece(chain, inode, 0, 128, 64, live),
        batch.BatchPiece(chain, inode, 0, 192, 64, expired),
        batch.BatchPiece(chain, inode + 1, 0, 0, 64, live),  # live, but for another inode
    ]
    try:
        _, _, body = conn.request(
            Request(READ_BATCH, table_version=version), batch.encode_request(pieces)
        )
        answers = batch.decode_reply(body, len(pieces), "test")
    finally:
        conn.close()
    data = content["/batches/big"]
    for i in (0, 2):
        answer = answers[i]
        assert not isinstance(answer, Fs3Error) and bytes(answer[1]) == data[i * 64 : i * 64 + 64]
    for i in (1, 3):
        assert isinstance(answers[i], CapabilityRefused) and "expired" in str(answers[i])
    assert isinstance(answers[4], CapabilityRefused) and f"not {inode + 1}" in str(answers[4])
    assert data[64:128] not in bytes(body)  # nothing under the expired capability travelled


def test_a_batch_survives_a_chain_member_going_down(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c = make_cluster(targets=3, replicas=3)
    fs = FS3FileSystem(c.address, chunk_size=CS, skip_instance_cache=True)
    data = os.urandom(6 * CS)
    fs.pipe_file("/f", data)
    starts = [random.randrange(len(data) - 4096) for _ in range(64)]
    ends = [s + 4096 for s in starts]
    want = [data[s:e] for s, e in zip(starts, ends, strict=True)]
    assert fs.cat_ranges(["/f"] * 64, starts, ends) == want
    c.kill("storage-2")  # the first replica of some of those pieces, before mgmtd notices
    assert fs.cat_ranges(["/f"] * 64, starts, ends, on_error="raise") == want


def test_reads_bench_runs_every_way(cluster: LocalCluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    results = measure(cluster, tmp_path, file_mib=1, seconds=0.05, mount_ok=False, depths=(1, 8))
    table = format_table(results, 1, "not tried in this test")
    assert all(results[w] for w in ("one at a time", "cat_ranges", "ring"))
    assert "target: 4 KiB random reads at 32 in flight" in table
    assert "no FUSE column: not tried in this test" in table
