"""``python -m fs3.bench``: fs3 beside the local file system and a gRPC-unary data path.

One run starts local clusters of 3 targets at replication 3 and 1 (fsync on, as in
production) and measures sequential write/read of one file (cold cache, the median of 3
reads, then warm: the median of 5), 4 parallel readers, 4 KiB random reads, and
create+stat+unlink of small files. The same work on the local disk is the roofline; the
same chunks moved by gRPC unary calls show what the framed TCP path buys. Ratios are
printed beside the figures.

Where a FUSE mount works (pyfuse3, /dev/fuse), the same POSIX work as on the local disk runs
again through ``fs3.mount`` of each cluster, in a second table beside the fsspec client.
Its reads come from the fs3 servers, as the fsspec client's do: the mount's page cache is
dropped before each read (warm = the servers' caches warm), and the 4 KiB random reads use
O_DIRECT. Its 4 parallel readers of one file share the mount's page cache, so each byte
crosses FUSE once, where the fsspec client's readers fetch it 4 times. Below the table, the
FUSE ceiling: the same reads of a file that a pyfuse3 mount serves from memory
(:mod:`fs3.fuse.ceiling`), what FUSE alone costs here.

A cluster at replication 3 with ``security.capabilities`` off runs the fsspec work again,
printed beside the default (capabilities on): what signing and checking them costs.

Then two more tables: warm reads on the client's zero-copy local path (descriptors passed
by the targets on this machine) against the same client over TCP and the local disk
(:mod:`fs3.local_bench`), and metadata operations on the SQLite store against PostgreSQL
(:mod:`fs3.meta.bench`; PostgreSQL rows only where its server binaries are installed).

Last, small random reads in flight (:mod:`fs3.reads_bench`, alone with ``--reads``): 4 KiB
and 64 KiB reads at 1 to 128 in flight through ``cat_ranges``, the read ring and the mount,
each beside the one-at-a-time rate of the same run.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fs3 import capabilities as caps
from fs3 import local_bench, reads_bench
from fs3.client import FS3FileSystem
from fs3.cluster import LocalCluster
from fs3.config import load_config
from fs3.errors import Fs3Error
from fs3.meta.bench import bench_meta_stores, format_meta_table
from fs3.proto import fs3_pb2 as pb
from fs3.proto import fs3_pb2_grpc as pbg
from fs3.rpc import channel
from fs3.wire.checksum import crc32c

MiB = 1 << 20
CHUNK = 4 * MiB
COLD_ROUNDS = 3
READS_FILE_MIB = 256
"""File of the reads-in-flight table (:mod:`fs3.reads_bench`): random reads of a file
larger than a few chunks measure the same; a smaller one is written faster."""
"""Cold reads are a median too: one decided the FUSE/fsspec ratio by a fifth either way."""


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _timed_write(write: Callable[[], object]) -> float:
    """Seconds of ``write``, started with nothing dirty on the disks: each column's write
    then pays for its own flushes only, not for those of the column measured before it
    (the FUSE column's write came right after the fsspec column's 1 GiB and small files)."""
    os.sync()
    return _timed(write)


def _median_mb_s(
    size: int, read: Callable[[], None], before: Callable[[], None] | None = None, rounds: int = 5
) -> float:
    """MB/s of the median of ``rounds`` timed calls of ``read`` (``size`` bytes each), each
    after ``before``: one warm read on this shared machine varies by a third, and the first
    after a cold read is slower still (the kernel moves each page to its active list)."""
    speeds = []
    for _ in range(rounds):
        if before is not None:
            before()
        speeds.append(size / _timed(read) / 1e6)
    return statistics.median(speeds)


def _drop_cache(root: Path) -> None:
    """Evicts files under ``root`` from the page cache (no root needed, unlike drop_caches)."""
    for path in [root] if root.is_file() else root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def bench_local(
    work: Path,
    data: bytes,
    files: int,
    seconds: float,
    cold: Callable[[], None] | None = None,
    random_flags: int = 0,
) -> dict[str, float]:
    """POSIX calls on ``work``: the local disk, or a mount. Before each cold read the file's
    own pages are evicted, and ``cold`` evicts the rest (a mount's servers' caches);
    ``random_flags`` are added for random reads."""
    path = work / "local.bin"
    size = len(data)
    out: dict[str, float] = {}
    mounted = cold is not None  # then every read comes from the servers, not the page cache

    def evict() -> None:
        if cold is not None:
            cold()
        _drop_cache(path)

    def write() -> None:
        with open(path, "wb") as f:
            for off in range(0, size, CHUNK):
                f.write(data[off : off + CHUNK])
            f.flush()
            os.fdatasync(f.fileno())

    def read() -> None:
        _read_all(path)

    out["seq write MB/s"] = size / _timed_write(write) / 1e6
    out["cold read MB/s"] = _median_mb_s(size, read, evict, COLD_ROUNDS)
    out["warm read MB/s"] = _median_mb_s(
        size, read, (lambda: _drop_cache(path)) if mounted else None
    )
    if mounted:
        _drop_cache(path)
    with ThreadPoolExecutor(4) as pool:
        out["4 readers MB/s"] = (
            4 * size / _timed(lambda: list(pool.map(lambda _: read(), range(4)))) / 1e6
        )
    fd = os.open(path, os.O_RDONLY | random_flags)
    n, deadline = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        os.pread(fd, 4096, random.randrange(size - 4096))
        n += 1
    out["4K random reads/s"] = n / (time.perf_counter() - start)
    os.close(fd)
    meta = work / "meta"
    meta.mkdir()

    def meta_ops() -> None:
        for i in range(files):
            p = meta / f"f{i}"
            os.close(os.open(p, os.O_CREAT | os.O_WRONLY))
            os.stat(p)
            os.unlink(p)

    out["meta ops/s"] = 3 * files / _timed(meta_ops)
    path.unlink()
    return out


def bench_fs3(cluster: LocalCluster, data: bytes, files: int, seconds: float) -> dict[str, float]:
    fs = FS3FileSystem(cluster.address, chunk_size=CHUNK, skip_instance_cache=True)
    size = len(data)
    out: dict[str, float] = {}

    def write() -> None:
        with fs.open("/bench.bin", "wb") as f:
            for off in range(0, size, CHUNK):
                f.write(data[off : off + CHUNK])

    def read() -> None:
        with fs.open("/bench.bin", "rb") as f:
            while f.read(CHUNK):
                pass

    out["seq write MB/s"] = size / _timed_write(write) / 1e6
    out["cold read MB/s"] = _median_mb_s(size, read, lambda: _drop_cache(cluster.root), COLD_ROUNDS)
    out["warm read MB/s"] = _median_mb_s(size, read)
    with ThreadPoolExecutor(4) as pool:
        out["4 readers MB/s"] = (
            4 * size / _timed(lambda: list(pool.map(lambda _: read(), range(4)))) / 1e6
        )
    n, deadline = 0, time.perf_counter() + seconds
    start = time.perf_counter()
    with fs.open("/bench.bin", "rb") as f:
        while time.perf_counter() < deadline:
            f.seek(random.randrange(size - 4096))
            f.read(4096)
            n += 1
    out["4K random reads/s"] = n / (time.perf_counter() - start)

    def meta_ops() -> None:
        for i in range(files):
            p = f"/meta/f{i}"
            fs.meta.create(p, False, CHUNK, 0) if i else fs.touch(p)
            fs.meta.stat(p)
            fs.meta.unlink(p)

    out["meta ops/s"] = 3 * files / _timed(meta_ops)
    out.update(bench_grpc(fs, data, _grpc_capability(cluster)))
    fs.rm("/bench.bin")
    return out


GRPC_INODE = 1 << 40
"""The inode of bench_grpc's chunks: far above meta's ids, so they belong to no file."""


def _grpc_capability(cluster: LocalCluster) -> bytes:
    """A capability for :data:`GRPC_INODE`, signed with the cluster's secret as meta would
    sign one (no file is opened for those chunks); empty with capabilities off."""
    keys = caps.service_keys(load_config(cluster.root / "config.yaml").security)
    return caps.issue(keys.capability, GRPC_INODE, caps.ALL_OPS, 3600) if keys else b""


def bench_grpc(fs: FS3FileSystem, data: bytes, capability: bytes = b"") -> dict[str, float]:
    """The same 4 MiB chunks through the storage servers' gRPC ChunkService (unary calls),
    each carrying ``capability`` as the framed path's requests do."""
    table = fs.mgmtd.refresh()
    stubs = {
        t.target_id: pbg.ChunkServiceStub(channel(f"{t.host}:{t.grpc_port}", fs.config.tls))
        for t in table.targets.values()
    }
    chains = sorted(table.chains)
    inode = GRPC_INODE
    size = len(data)

    def write(index: int) -> None:
        chain = table.chains[chains[index % len(chains)]]
        piece = data[index * CHUNK : (index + 1) * CHUNK]
        req = pb.ChunkRequest(
            chain_id=chain.chain_id,
            inode=inode,
            index=index,
            offset=0,
            table_version=table.version,
            data=piece,
            truncate=True,
            crc=crc32c(piece),
            capability=capability,
        )
        stubs[chain.writers()[0]].Write(req, timeout=60)

    def read(index: int) -> None:
        chain = table.chains[chains[index % len(chains)]]
        req = pb.ChunkRequest(
            chain_id=chain.chain_id,
            inode=inode,
            index=index,
            offset=0,
            length=CHUNK,
            table_version=table.version,
            capability=capability,
        )
        stubs[chain.readers()[index % len(chain.readers())]].Read(req, timeout=60)

    count = -(-size // CHUNK)
    parallel = fs.config.client.parallel
    with ThreadPoolExecutor(parallel) as pool:
        w = _timed_write(lambda: list(pool.map(write, range(count))))
        list(pool.map(read, range(count)))  # warm
        r = _timed(lambda: list(pool.map(read, range(count))))
    return {"grpc seq write MB/s": size / w / 1e6, "grpc warm read MB/s": size / r / 1e6}


def fuse_missing() -> str | None:
    """Why no FUSE mount can work here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is absent"
    if shutil.which("fusermount3") is None and os.geteuid() != 0:
        return "fusermount3 not installed (Debian: apt-get install fuse3)"
    try:
        import pyfuse3  # noqa: F401
    except ImportError as err:
        return f"pyfuse3 not importable ({err}); pip install 'pyfuse3>=3.3'"
    return None


def bench_mount(
    cluster: LocalCluster, work: Path, data: bytes, files: int, seconds: float
) -> dict[str, float]:
    """The local-disk work again, through a FUSE mount of ``cluster``."""
    from fs3.fuse import mount

    with mount(work / "mnt", cluster.address, chunk_size=CHUNK) as mnt:
        (mnt / "fuse").mkdir()
        return bench_local(
            mnt / "fuse",
            data,
            files,
            seconds,
            cold=lambda: _drop_cache(cluster.root),
            random_flags=os.O_DIRECT,
        )


def bench_fuse_ceiling(work: Path, size: int, rounds: int = 5) -> float:
    """MB/s of sequential reads of a ``size``-byte file that a pyfuse3 mount serves from
    memory (:mod:`fs3.fuse.ceiling`), page cache dropped before each; the median round."""
    from fs3.fuse.ceiling import memory_mount

    with memory_mount(work / "ceiling", size) as path:
        return _median_mb_s(size, lambda: _read_all(path), lambda: _drop_cache(path), rounds)


def _read_all(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(CHUNK):
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fs3.bench", description=__doc__)
    parser.add_argument(
        "--size-mib", type=int, default=None, help="file size (default 1 GiB; --hosts 256 MiB)"
    )
    parser.add_argument("--files", type=int, default=10_000, help="small files for meta ops")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of random reads")
    parser.add_argument(
        "--security-only",
        action="store_true",
        help="only the capabilities on-vs-off comparison (two clusters at replication 3)",
    )
    parser.add_argument(
        "--hosts",
        action="store_true",
        help="only fs3 from a client test host over a tbf-shaped link (root; fs3.hosts_bench)",
    )
    parser.add_argument(
        "--link", default="500mbit,2gbit", help="--hosts: link rates, comma-separated"
    )
    parser.add_argument("--replicas", type=int, default=3, help="--hosts: replication")
    parser.add_argument(
        "--reads",
        action="store_true",
        help="only small random reads in flight: cat_ranges, the read ring, FUSE threads",
    )
    args = parser.parse_args(argv)
    if args.hosts:
        from fs3 import hosts_bench

        hosts_bench.main(args.link.split(","), args.size_mib or 256, args.replicas)
        return
    args.size_mib = args.size_mib or 1024
    reads_mib = min(args.size_mib, READS_FILE_MIB)
    if args.reads:
        print(_bench_reads(reads_mib, args.seconds))
        return
    data = os.urandom(args.size_mib * MiB)
    if args.security_only:
        with tempfile.TemporaryDirectory(prefix="fs3-bench-") as tmp:
            results = {
                name: _bench_r3(Path(tmp) / name, data, args, capabilities=name == "fs3 r3")
                for name in ("fs3 r3", "fs3 r3 off")
            }
        print(format_security_table(results))
        return
    results: dict[str, dict[str, float]] = {}
    no_fuse = fuse_missing()
    local_paths: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="fs3-bench-") as tmp:
        work = Path(tmp)
        results["local"] = bench_local(work, data, args.files, args.seconds)
        for replicas in (3, 1):
            cluster = LocalCluster(work / f"r{replicas}", targets=3, replicas=replicas)
            try:
                cluster.start()
                results[f"fs3 r{replicas}"] = bench_fs3(cluster, data, args.files, args.seconds)
                if replicas == 3:
                    reads = reads_bench.measure(
                        cluster, work, reads_mib, args.seconds, no_fuse is None
                    )
                if no_fuse is None:
                    try:
                        results[f"fuse r{replicas}"] = bench_mount(
                            cluster, work, data, args.files, args.seconds
                        )
                    except Fs3Error as err:
                        no_fuse = f"mounting failed: {err}"
                local_paths[f"fs3 r{replicas}"] = local_bench.measure(cluster, data)
            finally:
                cluster.stop()
        if no_fuse is None:
            results["fuse ceiling"] = {"warm read MB/s": bench_fuse_ceiling(work, len(data))}
        # Issue 18: the same r3 work with capabilities and signed service calls off.
        results["fs3 r3 off"] = _bench_r3(work / "r3-off", data, args, capabilities=False)
    print(format_table(results, args.size_mib, args.files))
    print()
    print(format_security_table(results))
    print()
    if no_fuse is None:
        print(format_mount_table(results))
    else:
        print(f"no FUSE rows: {no_fuse}")
    print()
    print(local_bench.format_table(local_paths, args.size_mib, rounds=3))
    print()
    print(format_meta_table(bench_meta_stores(files=min(args.files, 1000))))
    print()
    print(reads_bench.format_table(reads, reads_mib, no_fuse))


def _bench_reads(file_mib: int, seconds: float) -> str:
    """``--reads``: the reads-in-flight table alone, on a cluster of its own (r3)."""
    no_fuse = fuse_missing()
    with tempfile.TemporaryDirectory(prefix="fs3-bench-") as tmp:
        cluster = LocalCluster(Path(tmp) / "r3", targets=3, replicas=3)
        try:
            cluster.start()
            reads = reads_bench.measure(cluster, Path(tmp), file_mib, seconds, no_fuse is None)
        finally:
            cluster.stop()
    return reads_bench.format_table(reads, file_mib, no_fuse)


def format_table(results: dict[str, dict[str, float]], size_mib: int, files: int) -> str:
    local, r3, r1 = results["local"], results["fs3 r3"], results["fs3 r1"]
    rows = [
        f"fs3 bench: {size_mib} MiB file, {CHUNK // MiB} MiB chunks, 3 targets, "
        f"{files} files for meta ops; fsync on everywhere",
        "",
    ]
    head = f"{'metric':<20}{'local':>10}{'fs3 r3':>10}{'fs3 r1':>10}{'gRPC r3':>10}{'gRPC r1':>10}"
    head += f"{'r3/local':>10}{'r1/local':>10}{'r1/gRPC':>10}"
    rows += [head, "-" * len(head)]
    for metric in local:
        grpc_key = f"grpc {metric}"
        g3, g1 = r3.get(grpc_key), r1.get(grpc_key)
        cells = [local[metric], r3[metric], r1[metric]]
        line = f"{metric:<20}" + "".join(f"{v:>10.0f}" for v in cells)
        line += "".join(f"{v:>10.0f}" if v else f"{'-':>10}" for v in (g3, g1))
        line += f"{r3[metric] / local[metric]:>9.2f}x{r1[metric] / local[metric]:>9.2f}x"
        line += f"{r1[metric] / g1:>9.2f}x" if g1 else f"{'-':>10}"
        rows.append(line)
    return "\n".join(rows)


def _bench_r3(
    root: Path, data: bytes, args: argparse.Namespace, capabilities: bool
) -> dict[str, float]:
    """:func:`bench_fs3` on a fresh cluster at replication 3, ``security.capabilities`` set."""
    settings = {"security": {"capabilities": capabilities}}
    cluster = LocalCluster(root, targets=3, replicas=3, settings=settings)
    try:
        cluster.start()
        return bench_fs3(cluster, data, args.files, args.seconds)
    finally:
        cluster.stop()


def format_security_table(results: dict[str, dict[str, float]]) -> str:
    """fs3 r3 with capabilities (the default) beside the same cluster with them off."""
    on, off = results["fs3 r3"], results["fs3 r3 off"]
    head = f"{'metric':<24}{'on':>10}{'off':>10}{'on/off':>10}"
    rows = ["fs3 r3, security.capabilities on vs off", "", head, "-" * len(head)]
    for metric in ("meta ops/s", "warm read MB/s", "seq write MB/s", "4K random reads/s"):
        rows.append(
            f"{metric:<24}{on[metric]:>10.0f}{off[metric]:>10.0f}{on[metric] / off[metric]:>9.2f}x"
        )
    return "\n".join(rows)


def format_mount_table(results: dict[str, dict[str, float]]) -> str:
    local, r3, r1 = results["local"], results["fs3 r3"], results["fs3 r1"]
    f3, f1 = results["fuse r3"], results["fuse r1"]
    rows = [
        "FUSE mount (fs3.mount) beside the fsspec client; reads from the fs3 servers "
        "(page cache dropped), random reads O_DIRECT",
        "",
    ]
    head = f"{'metric':<20}{'local':>10}{'fsspec r3':>10}{'FUSE r3':>10}{'fsspec r1':>10}"
    head += f"{'FUSE r1':>10}{'r3 F/fs':>10}{'r1 F/fs':>10}"
    rows += [head, "-" * len(head)]
    for metric in local:
        cells = [local[metric], r3[metric], f3[metric], r1[metric], f1[metric]]
        line = f"{metric:<20}" + "".join(f"{v:>10.0f}" for v in cells)
        line += f"{f3[metric] / r3[metric]:>9.2f}x{f1[metric] / r1[metric]:>9.2f}x"
        rows.append(line)
    if "fuse ceiling" in results:
        warm = "warm read MB/s"
        top = results["fuse ceiling"][warm]
        rows.append(
            f"FUSE ceiling (pyfuse3 serving the file from memory, no fs3 work): warm read "
            f"{top:.0f} MB/s = {top / r3[warm]:.2f}x / {top / r1[warm]:.2f}x the fsspec client "
            f"r3 / r1; the fs3 mount reaches {f3[warm] / top:.2f}x / {f1[warm] / top:.2f}x of it"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
