"""``python -m fs3.local_bench``: zero-copy local reads beside TCP reads and the local disk.

One run starts local clusters of 3 targets at replication 3 and 1 (fsync on, as in
production), writes one file (1 GiB by default) and reads it warm, sequentially, in 4 MiB
reads as ``fs3.bench`` does: through the local path (descriptors passed over each target's
Unix socket, :mod:`fs3.client.local_read`), through the TCP path (the same client with local
reads off), and from a file on the local disk (the roofline). The three run in turns within
each round, so a noisy neighbour slows all of them alike; every ratio is taken within a
round, and the table shows the median and the range over rounds. 4 KiB random reads per
second and the cost of one descriptor hand-off show what a read's round trip costs; CPU
seconds per GB (client and storage processes together) show what each path costs the
machine, which a busy neighbour disturbs less than it disturbs wall time.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from fs3 import capabilities
from fs3.client import FS3FileSystem
from fs3.client.local_read import LocalReads
from fs3.cluster import LocalCluster
from fs3.wire.framing import Request
from fs3.wire.ops import LOCAL_OPEN

MiB = 1 << 20
CHUNK = 4 * MiB  # as fs3.bench: the default chunk size, and the size of each read call
FILE = "/local-bench.bin"  # not fs3.bench's /bench.bin: both may run on one cluster
RATIOS = ("local/tcp", "local/disk", "tcp/disk")  # speed ratios, each within one round


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _cpu_s(processes: list[psutil.Process]) -> float:
    """CPU seconds used so far by this process and ``processes`` (user + system)."""
    total = time.process_time()
    for proc in processes:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


def _read_disk(path: Path) -> None:
    """The roofline, read as fs3.bench reads its local file: unbuffered 4 MiB reads."""
    with open(path, "rb", buffering=0) as f:
        while f.read(CHUNK):
            pass


def _read_fs3(fs: FS3FileSystem, path: str) -> None:
    with fs.open(path, "rb") as f:
        while f.read(CHUNK):
            pass


def _random_reads(fs: FS3FileSystem, path: str, size: int, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    with fs.open(path, "rb") as f:
        while time.perf_counter() - start < seconds:
            f.seek(random.randrange(size - 4096))
            f.read(4096)
            n += 1
    return n / (time.perf_counter() - start)


def _handoff_us(fs: FS3FileSystem, local: LocalReads, path: str, count: int = 2000) -> float:
    """Microseconds per LOCAL_OPEN exchange (the target's checks, open, pass, close)."""
    inode = fs.meta.open(path)
    table = fs.mgmtd.table()
    chain = inode.layout.chain_of(0)
    target = table.chains[chain].readers()[0]
    handle = local._local(table, target)
    if handle is None:
        return float("nan")
    capability = fs.chunks.grants.get(inode.id, capabilities.READ)
    req = Request(LOCAL_OPEN, chain, table.version, inode.id, 0, capability=capability)
    start = time.perf_counter()
    for _ in range(count):
        fd = local._exchange(handle, req)
        if fd is not None:
            os.close(fd)
    return (time.perf_counter() - start) / count * 1e6


def measure(
    cluster: LocalCluster,
    data: bytes,
    disk_file: Path | None = None,
    rounds: int = 3,
    seconds: float = 2.0,
) -> dict[str, list[float]]:
    """Warm sequential reads of ``data`` written to ``cluster``, local path vs TCP path, with
    ``disk_file`` (the same bytes on the local disk; written under the cluster's folder when
    None) read in the same rounds.

    Returns each metric's value per round (:data:`RATIOS` are ratios of speeds). Raises
    AssertionError when the local path served nothing or fell back (it must be measured).
    """
    own_disk_file = disk_file is None
    if disk_file is None:
        disk_file = cluster.root / "local-bench-disk.bin"
        _write_disk(disk_file, data)
    try:
        return _measure(cluster, data, disk_file, rounds, seconds)
    finally:
        if own_disk_file:
            disk_file.unlink(missing_ok=True)


def medians(results: dict[str, list[float]]) -> dict[str, float]:
    """One figure per metric (the median over rounds), named for ``fs3.bench``'s table."""
    return {f"local path {k}": statistics.median(v) for k, v in results.items()}


def _write_disk(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fdatasync(f.fileno())


def _measure(
    cluster: LocalCluster, data: bytes, disk_file: Path, rounds: int, seconds: float
) -> dict[str, list[float]]:
    local_fs = FS3FileSystem(cluster.address, chunk_size=CHUNK, skip_instance_cache=True)
    tcp_fs = FS3FileSystem(cluster.address, chunk_size=CHUNK, skip_instance_cache=True)
    tcp_fs.chunks.local = None
    local = local_fs.chunks.local
    assert local is not None, "local reads are off (client.local_reads in the fs3 config)"
    size = len(data)
    with local_fs.open(FILE, "wb") as f:
        for off in range(0, size, CHUNK):
            f.write(data[off : off + CHUNK])
    for fs in (local_fs, tcp_fs):  # warm: every replica's page cache, each client's buffers
        _read_fs3(fs, FILE)
    _read_disk(disk_file)
    out: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        out.setdefault(key, []).append(value)

    # CPU of the client and the storage processes: what a read costs the machine, which
    # the load of a shared machine moves less than it moves wall time.
    targets = [psutil.Process(p.pid) for n, p in cluster.procs.items() if n.startswith("storage")]
    for i in range(rounds):
        order = [("local", local_fs), ("tcp", tcp_fs)]
        if i % 2:
            order.reverse()  # neither always reads first after the disk
        t = {"disk": _timed(lambda: _read_disk(disk_file))}
        for name, fs in order:
            cpu = _cpu_s(targets)
            t[name] = _timed(lambda fs=fs: _read_fs3(fs, FILE))  # type: ignore[misc]
            add(f"{name} CPU s/GB", (_cpu_s(targets) - cpu) / (size / 1e9))
        for name in ("local", "tcp", "disk"):
            add(f"{name} MB/s", size / t[name] / 1e6)
        add("local/tcp", t["tcp"] / t["local"])
        add("local/disk", t["disk"] / t["local"])
        add("tcp/disk", t["disk"] / t["tcp"])
    add("local 4K reads/s", _random_reads(local_fs, FILE, size, seconds))
    add("tcp 4K reads/s", _random_reads(tcp_fs, FILE, size, seconds))
    add("hand-off us", _handoff_us(local_fs, local, FILE))
    stats = local.stats
    assert stats.reads > 0 and stats.fallbacks == 0, f"local path not measured: {stats}"
    local_fs.rm(FILE)
    local.close()
    return out


def format_table(results: dict[str, dict[str, list[float]]], size_mib: int, rounds: int) -> str:
    """Median over rounds, and the range, per metric and cluster."""
    rows = [
        f"fs3 local reads: {size_mib} MiB file warm, {CHUNK // MiB} MiB reads, 3 targets, "
        f"{rounds} rounds; median [min-max]",
        "local: descriptors passed over the targets' Unix sockets; tcp: the same client "
        "with local reads off; disk: the same bytes in a local file (the roofline)",
        "",
    ]
    names = list(results)
    head = f"{'metric':<18}" + "".join(f"{n:>24}" for n in names)
    rows += [head, "-" * len(head)]
    for metric in results[names[0]]:
        cells = []
        for name in names:
            values = results[name][metric]
            fmt = (lambda v: f"{v:.2f}x") if metric in RATIOS else (lambda v: f"{v:.0f}")
            if "CPU" in metric:
                fmt = lambda v: f"{v:.2f}"  # noqa: E731
            cell = fmt(statistics.median(values))
            if len(values) > 1:
                cell += f" [{fmt(min(values))}-{fmt(max(values))}]"
            cells.append(f"{cell:>24}")
        rows.append(f"{metric:<18}" + "".join(cells))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fs3.local_bench", description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1 GiB)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=2.0, help="duration of random reads")
    parser.add_argument("--replicas", default="3,1", help="replication factors (default 3,1)")
    args = parser.parse_args(argv)
    data = os.urandom(args.size_mib * MiB)
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="fs3-local-bench-") as tmp:
        work = Path(tmp)
        disk_file = work / "local.bin"
        _write_disk(disk_file, data)
        for replicas in (int(r) for r in args.replicas.split(",")):
            cluster = LocalCluster(work / f"r{replicas}", targets=3, replicas=replicas)
            try:
                cluster.start()
                results[f"fs3 r{replicas}"] = measure(
                    cluster, data, disk_file, args.rounds, args.seconds
                )
            finally:
                cluster.stop()
    print(format_table(results, args.size_mib, args.rounds))


if __name__ == "__main__":
    main()
