"""``python -m fs3.meta.bench``: metadata operations per second, SQLite vs PostgreSQL.

The namespace (:mod:`fs3.meta.namespace`) runs in this process over each store, so the store
is all that differs: small files are created, stat'ed, renamed and unlinked (four
operations, each one transaction) by one thread; by several threads, each in a directory of
its own; by several threads in one shared directory (every create and unlink updates that
directory's inode, so PostgreSQL aborts and retries conflicting transactions); and by two
stores on one database, as two meta servers would run. With ``--cluster`` the same work also
goes through a real meta server over the framed protocol, as ``python -m fs3.bench`` measures.

Without ``--postgres URL`` a throwaway PostgreSQL server is started from the Debian binaries
(as the tests do); with one, fresh databases are created on that server (CREATEDB needed).
Durability is matched: SQLite runs WAL with ``synchronous=NORMAL`` (a commit does not fsync;
a power loss may drop the last commits, never corrupt), PostgreSQL with
``synchronous_commit=off`` (the same promise). Each workload runs in an empty namespace and
again in one that already holds ``--existing`` files: PostgreSQL's serialisable isolation
tracks reads per index page, so in a tiny namespace every transaction shares pages with every
other and conflicts far more often than at production size.

From ``fs3.bench``: ``from fs3.meta.bench import bench_meta_stores, format_meta_table`` and
``print(format_meta_table(bench_meta_stores(files=args.files)))``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fs3.meta.backends import namespace_over, open_meta_store
from fs3.meta.namespace import Namespace
from fs3.meta.store import MetaStore, MetaTxn
from fs3.types import FILE, Inode

OPS_PER_FILE = 4  # create, stat, rename, unlink


def _work(ns: Namespace, folder: str, files: int, tag: str) -> None:
    for i in range(files):
        tmp, final = f"{folder}/{tag}-{i}.tmp", f"{folder}/{tag}-{i}"
        ns.create(tmp)
        ns.stat(tmp)
        ns.rename(tmp, final)
        ns.unlink(final)


def _populate(ns: Namespace, folder: str, files: int) -> None:
    """``files`` existing files in ``folder``, in one transaction (not timed)."""
    parent = ns.mkdir(folder, parents=True)

    def fill(txn: MetaTxn) -> None:
        for i in range(files):
            inode = Inode(txn.new_inode_id(), FILE, 0o644, 0, 0.0, 0.0, parent.id)
            txn.put_inode(inode)
            txn.link(parent.id, f"old-{i:06d}", inode.id)

    ns.store.run(fill)


def _run(spaces: list[Namespace], threads: int, files: int, shared: bool, existing: int) -> float:
    """Ops/s of ``threads`` workers (spread over ``spaces``) doing ``files`` files in all, in
    folders that already hold ``existing`` files between them."""
    folders = [f"/shared{existing}"] if shared else [f"/w{k}-{existing}" for k in range(threads)]
    for folder in folders:
        _populate(spaces[0], folder, existing // len(folders))
    per = files // threads
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        futures = [
            pool.submit(_work, spaces[k % len(spaces)], folders[0 if shared else k], per, f"t{k}")
            for k in range(threads)
        ]
        for f in futures:
            f.result()
    return OPS_PER_FILE * per * threads / (time.perf_counter() - start)


def bench_store(
    open_store: Callable[[], MetaStore], files: int, threads: int, existing: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Ops/s of each workload on stores from ``open_store`` (called twice for two servers),
    in an empty namespace and in one already holding ``existing`` files; and how many
    transactions of each workload lost a conflict and ran again."""
    out: dict[str, float] = {}
    retried: dict[str, float] = {}
    a, b = open_store(), open_store()
    try:
        one = namespace_over(a, chains=lambda: [1, 2, 3])
        two = namespace_over(b, chains=lambda: [1, 2, 3])
        for have in (0, existing):
            where = f", {have} files there" if have else ", empty"
            workloads = {
                "1 thread": ([one], 1, False),
                f"{threads} threads, own dirs": ([one], threads, False),
                f"{threads} threads, one dir": ([one], threads, True),
                f"2 servers x {threads // 2}, own dirs": ([one, two], threads, False),
            }
            for name, (spaces, n, shared) in workloads.items():
                before = a.retries + b.retries
                out[name + where] = _run(spaces, n, files, shared, have)
                retried[name + where] = float(a.retries + b.retries - before)
    finally:
        a.close()
        b.close()
    return out, retried


def bench_cluster(
    root: Path, meta_db: str, files: int, threads: int, capabilities: bool = True
) -> dict[str, float]:
    """The same files through a real meta server (RPC per operation), as fs3.bench does;
    with ``capabilities`` off (``security.capabilities``) the rows say so, to show what
    signing a capability into each create costs."""
    from fs3.client import FS3FileSystem
    from fs3.cluster import LocalCluster

    settings = {"storage": {"fsync": False}, "security": {"capabilities": capabilities}}
    cluster = LocalCluster(root, targets=1, replicas=1, meta_db=meta_db, settings=settings)
    label = "" if capabilities else ", capabilities off"
    out: dict[str, float] = {}
    try:
        cluster.start()
        fs = FS3FileSystem(cluster.address, skip_instance_cache=True)
        meta = fs.meta

        def work(folder: str, count: int) -> None:
            meta.mkdir(folder, True)
            for i in range(count):
                tmp, final = f"{folder}/f{i}.tmp", f"{folder}/f{i}"
                meta.create(tmp, False, 1 << 20, 0)
                meta.stat(tmp)
                meta.rename(tmp, final)
                meta.unlink(final)

        for n in (1, threads):
            start = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                list(pool.map(lambda k, n=n: work(f"/c{n}-{k}", files // n), range(n)))
            out[f"via meta server, {n} client thread(s){label}"] = (
                OPS_PER_FILE * (files // n) * n / (time.perf_counter() - start)
            )
    finally:
        cluster.stop()
    return out


@contextlib.contextmanager
def temporary_postgres() -> Iterator[str]:
    """A private PostgreSQL server on a free loopback port (initdb + pg_ctl, as user nobody
    when run as root); yields a database URL. Raises RuntimeError without the binaries."""
    bindir = _postgres_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries not installed (apt-get install postgresql)")
    data = Path(tempfile.mkdtemp(prefix="fs3-bench-pg-"))
    demote = None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        nobody = pwd.getpwnam("nobody")
        os.chown(data, nobody.pw_uid, nobody.pw_gid)

        def demote() -> None:
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = dict(preexec_fn=demote, check=True, capture_output=True, timeout=120)
    subprocess.run(
        [f"{bindir}/initdb", "-D", str(data / "db"), "-U", "fs3", "--auth=trust", "-E", "UTF8"],
        **run,
    )
    options = f"-p {port} -h 127.0.0.1 -k {data} -c synchronous_commit=off"
    subprocess.run(
        [
            f"{bindir}/pg_ctl",
            "-D",
            str(data / "db"),
            "-o",
            options,
            "-l",
            str(data / "log"),
            "-w",
            "-t",
            "60",
            "start",
        ],
        **run,
    )
    try:
        yield f"postgresql://fs3@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [f"{bindir}/pg_ctl", "-D", str(data / "db"), "-m", "fast", "-w", "stop"],
            preexec_fn=demote,
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(data, ignore_errors=True)


def _postgres_bindir() -> str | None:
    """Where initdb, pg_ctl and postgres are: on PATH, or Debian's /usr/lib/postgresql/N/bin
    (newest first). ``hai doctor`` has the same search; fs3 does not import hai."""
    names = ("initdb", "pg_ctl", "postgres")
    found = [shutil.which(n) for n in names]
    if all(found):
        return str(Path(found[0]).parent)  # type: ignore[arg-type]

    def major(bindir: Path) -> int:
        return int(bindir.parent.name) if bindir.parent.name.isdigit() else 0

    for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=major, reverse=True):
        if all(os.access(bindir / n, os.X_OK) for n in names):
            return str(bindir)
    return None


def _fresh_database(server_url: str, name: str) -> str:
    """Creates database ``name`` on the server of ``server_url``; returns its URL."""
    from urllib.parse import urlsplit

    from fs3.db import connect_postgres

    parts = urlsplit(server_url)
    conn = connect_postgres(parts._replace(path="/postgres").geturl(), autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return parts._replace(path="/" + name).geturl()


def bench_meta_stores(
    files: int = 1000,
    threads: int = 4,
    postgres_url: str | None = None,
    cluster: bool = False,
    existing: int = 20_000,
) -> dict[str, dict[str, float]]:
    """``{"sqlite": {workload: ops/s}, "postgresql": {...}, "postgresql retries": {workload:
    transactions run again}}``; PostgreSQL is left out (with a note under ``"notes"``) when
    no server is given and none can be started."""
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="fs3-meta-bench-") as tmp:
        work = Path(tmp)
        counter = iter(range(1_000_000))
        results["sqlite"], _ = bench_store(
            lambda: open_meta_store(work / "meta.db"), files, threads, existing
        )
        if cluster:
            for on in (True, False):  # issue 18: capabilities on vs off in one run
                where = work / f"c-sqlite-{on}"
                results["sqlite"].update(bench_cluster(where, "", files, threads, on))
        with contextlib.ExitStack() as stack:
            try:
                server = postgres_url or stack.enter_context(temporary_postgres())
            except (RuntimeError, subprocess.SubprocessError) as err:
                results["notes"] = {f"postgresql skipped: {err}": 0.0}
                return results
            url = _fresh_database(server, f"fs3_meta_bench_{os.getpid()}_{next(counter)}")
            results["postgresql"], results["postgresql retries"] = bench_store(
                lambda: open_meta_store(url), files, threads, existing
            )
            if cluster:
                url2 = _fresh_database(server, f"fs3_meta_bench_{os.getpid()}_{next(counter)}")
                results["postgresql"].update(bench_cluster(work / "c-pg", url2, files, threads))
    return results


def format_meta_table(results: dict[str, dict[str, float]]) -> str:
    """The results of :func:`bench_meta_stores` as a table, PostgreSQL beside SQLite."""
    sqlite, pg = results["sqlite"], results.get("postgresql", {})
    retried = results.get("postgresql retries", {})
    rows = [
        "fs3 meta bench: create + stat + rename + unlink per file, ops/s "
        "(SQLite WAL synchronous=NORMAL; PostgreSQL SERIALIZABLE, synchronous_commit=off)",
        "",
    ]
    head = f"{'workload':<44}{'SQLite':>8}{'PostgreSQL':>12}{'PG/SQLite':>11}{'PG retries':>12}"
    rows += [head, "-" * len(head)]
    for key, value in sqlite.items():
        line = f"{key:<44}{value:>8.0f}"
        if key in pg:
            line += f"{pg[key]:>12.0f}{pg[key] / value:>10.2f}x"
            line += f"{retried[key]:>12.0f}" if key in retried else f"{'-':>12}"
        rows.append(line)
    rows += list(results.get("notes", {}))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fs3.meta.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--files", type=int, default=1000, help="files per workload")
    parser.add_argument("--threads", type=int, default=4, help="threads of the threaded rows")
    parser.add_argument("--postgres", default=None, help="postgresql:// URL of a server to use")
    parser.add_argument("--cluster", action="store_true", help="also through a meta server")
    parser.add_argument(
        "--existing",
        type=int,
        default=20_000,
        help="files already in the namespace for the second round",
    )
    args = parser.parse_args(argv)
    results = bench_meta_stores(
        args.files, args.threads, args.postgres, args.cluster, args.existing
    )
    print(format_meta_table(results))


if __name__ == "__main__":
    main()
