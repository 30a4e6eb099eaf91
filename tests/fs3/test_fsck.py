"""fsck on a real cluster: clean when healthy; a flipped byte, a deleted chunk file, an
orphan chunk and a version disagreement each reported with a non-zero exit; --repair fixes
what it can safely, and the next run is clean."""

from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner, Result

from fs3 import capabilities as caps
from fs3.client import FS3FileSystem
from fs3.cluster import LocalCluster
from fs3.fsck import fsck
from fs3.storage.local import HEADER_SIZE
from fs3.types import Layout
from fs3.wire.checksum import crc32c
from fs3.wire.framing import Request
from fs3.wire.ops import REMOVE, SYNC
from hai.cli import main

from .conftest import SMALL_CHUNK


def _fsck(c: LocalCluster, *args: str) -> Result:
    # The cluster folder: its config.yaml names the secret fsck signs its requests with.
    return CliRunner().invoke(main, ["fs3", "fsck", str(c.root), *args])


def _chunk_file(c: LocalCluster, target: int, chain: int, inode: int, index: int) -> Path:
    return c.root / f"storage-{target}" / str(chain) / f"{inode:016x}.{index:08x}"


def test_fsck_finds_and_repairs(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c: LocalCluster = make_cluster()
    config = str(c.root / "config.yaml")  # names the secret fsck needs
    fs = FS3FileSystem(
        c.address, config_path=config, chunk_size=SMALL_CHUNK, skip_instance_cache=True
    )
    data = {f"/data/f{i}": os.urandom(SMALL_CHUNK * 2 + 1000 * i) for i in range(4)}
    for path, content in data.items():
        fs.pipe_file(path, content)
    fs.mkdir("/data/empty")

    clean = _fsck(c)
    assert clean.exit_code == 0, clean.output
    assert "4 files, 2 directories, 11 chunks, 33 replicas (33 checksummed): 0 errors" in (
        clean.output
    )

    # A flipped byte on one replica, a chunk file deleted on another, an orphan chunk.
    f0, f1 = fs.meta.stat("/data/f0"), fs.meta.stat("/data/f1")
    flipped = _chunk_file(c, 1, f0.layout.chain_of(1), f0.id, 1)
    raw = bytearray(flipped.read_bytes())
    raw[HEADER_SIZE + 10] ^= 0x40
    flipped.write_bytes(bytes(raw))
    _chunk_file(c, 3, f1.layout.chain_of(0), f1.id, 0).unlink()
    # An orphan needs a capability for an inode meta never had: made with the secret.
    keys = caps.Keys.from_secret(caps.read_secret(c.root / "secret"))
    orphan = caps.issue(keys.capability, 999_999, caps.WRITE, 60)
    fs.chunks.grants.put(999_999, orphan, renew=lambda: None)
    fs.chunks.write(Layout(SMALL_CHUNK, (2,), 0), 999_999, 0, 0, b"nobody's", True)

    broken = _fsck(c)
    assert broken.exit_code == 1, broken.output
    lines = broken.output.splitlines()
    assert any(
        line.startswith("ERROR bad replica: /data/f0: chunk 1")
        and "target 1" in line
        and "CRC32C" in line
        for line in lines
    ), broken.output
    assert any(
        line.startswith("ERROR bad replica: /data/f1: chunk 0")
        and "target 3" in line
        and "missing" in line
        for line in lines
    ), broken.output
    assert any(
        line.startswith("ERROR orphan: inode 999999: chunk 0 on chain 2") for line in lines
    ), broken.output
    assert "3 errors" in lines[-1]
    for path, content in data.items():  # reads fail over past both bad replicas meanwhile
        assert fs.cat_file(path) == content

    repaired = _fsck(c, "--repair")
    assert repaired.exit_code == 1 and repaired.output.count("REPAIRED ") == 3, repaired.output
    again = _fsck(c)
    assert again.exit_code == 0, again.output
    assert flipped.read_bytes()[HEADER_SIZE + 10] == raw[HEADER_SIZE + 10] ^ 0x40

    # One replica at another version (a resync gone wrong): reported, left alone.
    chain = f0.layout.chain_of(0)
    content = data["/data/f0"][:SMALL_CHUNK]
    table = fs.mgmtd.refresh()
    info = table.targets[table.chains[chain].readers()[-1]]
    fs.pool.request(
        info.data_address,
        Request(
            SYNC,
            chain,
            0,
            f0.id,
            0,
            crc=crc32c(content),
            version=77,
            capability=caps.issue_service(keys.service, 60),  # a service's op
        ),
        content,
    )
    disagree = _fsck(c, "--sample", "0.5")
    assert disagree.exit_code == 1
    assert "ERROR version disagreement: /data/f0: chunk 0" in disagree.output
    assert "v77" in disagree.output
    report = fsck(fs, sample=0.25, seed=1)
    assert 0 < report.verified < 33 and report.replicas == 33

    # A replica its target no longer lists (lost from its index): missing, not repaired.
    f2 = fs.meta.stat("/data/f2")
    chain2 = f2.layout.chain_of(2)
    victim = table.targets[table.chains[chain2].readers()[0]]
    service = caps.issue_service(keys.service, 60)
    fs.pool.request(
        victim.data_address, Request(REMOVE, chain2, 0, f2.id, 2, length=3, capability=service)
    )
    missing = _fsck(c, "--repair")
    assert missing.exit_code == 1
    assert f"ERROR missing replica: /data/f2: chunk 2 (chain {chain2}" in missing.output
