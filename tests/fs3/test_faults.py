"""Failures from the issue, each against real processes: nothing acknowledged is lost."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
import yaml

from fs3.client import FS3FileSystem
from fs3.client.chunks import read_order
from fs3.cluster import LocalCluster
from fs3.storage.local import HEADER_SIZE

from ..waiting import wait_for
from .conftest import SMALL_CHUNK

MiB = 1 << 20


def _wait_offline(fs: FS3FileSystem, target_ids: set[int]) -> None:
    wait_for(
        f"mgmtd to declare targets {sorted(target_ids)} offline",
        lambda: not any(fs.mgmtd.refresh().targets[t].alive for t in target_ids),
        timeout=15,
    )


@pytest.mark.slow
def test_kill_target_during_write_then_it_resyncs(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c: LocalCluster = make_cluster()
    fs = FS3FileSystem(c.address, chunk_size=SMALL_CHUNK, skip_instance_cache=True)
    data = os.urandom(256 * MiB)  # "several hundred MB", killed a third of the way in
    third = threading.Event()

    def write() -> None:
        with fs.open("/big", "wb") as f:
            for off in range(0, len(data), MiB):
                f.write(data[off : off + MiB])
                if off >= len(data) // 3:
                    third.set()

    writer = threading.Thread(target=write)
    writer.start()
    assert third.wait(60)
    c.kill("storage-2")
    writer.join(120)
    assert not writer.is_alive()
    assert fs.cat_file("/big") == data
    assert not fs.mgmtd.refresh().targets[2].alive

    # The restarted target resyncs before it serves; then it alone must hold every byte.
    c.start_process("storage-2")
    c.wait_ready(60)
    c.kill("storage-1")
    c.kill("storage-3")
    _wait_offline(fs, {1, 3})
    assert fs.cat_file("/big") == data


def test_flipped_byte_is_detected_and_served_from_another_replica(
    cluster: LocalCluster, fs3fs: FS3FileSystem
) -> None:
    data = os.urandom(8 * SMALL_CHUNK)
    fs3fs.pipe_file("/flip", data)
    inode = fs3fs.info("/flip")["inode"]
    # Corrupt chunk 0 on the replica a read tries first, so the read must meet it.
    table = fs3fs.mgmtd.refresh()
    chain = fs3fs.meta.stat("/flip").layout.chain_of(0)
    first = read_order(table, chain, inode, 0)[0]
    file = cluster.root / f"storage-{first}" / str(chain) / f"{inode:016x}.{0:08x}"
    raw = bytearray(file.read_bytes())
    raw[HEADER_SIZE + 1000] ^= 0x01
    file.write_bytes(bytes(raw))
    for _ in range(5):
        assert fs3fs.cat_file("/flip") == data
    assert (first, chain, inode, 0) in fs3fs.chunks.bad_replicas
    fs3fs.rm("/flip")


@pytest.mark.slow
def test_restarts_and_bounded_error_when_cluster_is_gone(make_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c: LocalCluster = make_cluster(replicas=1)
    fs = FS3FileSystem(c.address, chunk_size=SMALL_CHUNK, skip_instance_cache=True)
    fs.pipe_file("/keep/a", b"alpha" * 100_000)
    c.kill("meta")
    c.start_process("meta")
    assert fs.cat_file("/keep/a") == b"alpha" * 100_000  # client retries until meta is back
    assert fs.ls("/keep", detail=False) == ["/keep/a"]

    c.kill("mgmtd")
    c.start_process("mgmtd")
    c.wait_ready(30)
    fs.pipe_file("/keep/b", b"beta")
    assert fs.cat_file("/keep/b") == b"beta"
    assert fs.cat_file("/keep/a") == b"alpha" * 100_000

    config = tmp_path / "short.yaml"
    config.write_text(
        yaml.safe_dump({"timeouts": {"rpc_s": 1.0, "connect_s": 0.5, "retry_s": 2.0}})
    )
    impatient = FS3FileSystem(c.address, config_path=str(config), skip_instance_cache=True)
    impatient.info("/keep/a")
    c.stop()
    start = time.monotonic()
    with pytest.raises(OSError):  # ConnectionError or TimeoutError, both OSError
        impatient.info("/keep/a")
    assert time.monotonic() - start < 10
