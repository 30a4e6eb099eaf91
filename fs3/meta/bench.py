"""``python -m fs3.meta.bench``: metadata operations per second, SQLite vs PostgreSQL, in an
empty namespace and in one of ``--files`` files.

The namespace (:mod:`fs3.meta.namespace`, built by :func:`fs3.meta.backends.namespace_over`
so each backend brings its own operations) runs in this process over each store, so the
store is all that differs. Each workload times five operations, one phase each: create,
stat, rename and unlink of ``--ops`` small files (the per-file cycle; "cycle" is the four
together), and list, one keyset page of 100 entries. Workloads: one client thread;
``--threads`` threads in one shared directory (every create and unlink updates that
directory's inode, so on PostgreSQL they take turns on that directory's row lock); the same
threads each in a directory of its own; and those threads split over two meta servers on
one database (two stores in this process, as two meta server processes would hold them).
With ``--cluster`` the cycle also goes through a real meta server over the framed protocol,
as ``python -m fs3.bench`` measures.

Namespaces: "empty" is a fresh database, where the files are made in a new directory and
list reads the whole of a directory of 100 entries. "N files" is a second database where a
bulk fill (:mod:`fs3.meta.bulk`: executemany on SQLite, COPY on PostgreSQL, timed on its
own) put ``--files`` files in ONE directory, the hard case for listings and for
PostgreSQL's indexes: the shared-directory workloads make their files in it, the
others in directories inside it, and list reads a page of 100 from a random point of it.
File names land at random points of that directory's index. Every workload runs on both
backends and in both namespaces in turn, round after round (``--repeat``), so that the
runs a ratio compares are close in time (this machine's speed drifts by several times over
minutes), and the best rate of each operation counts: on a machine shared with other work,
the least disturbed run is the closest to what the code costs.

Without ``--postgres URL`` a throwaway PostgreSQL server is started from the Debian binaries
(as the tests do); with one, fresh databases are created on that server (CREATEDB needed).
Durability is matched: SQLite runs WAL with ``synchronous=NORMAL`` (a commit does not fsync;
a power loss may drop the last commits, never corrupt), PostgreSQL with
``synchronous_commit=off`` (the same promise). The ratios the issue sets targets for are
printed beside them.

From ``fs3.bench``: ``from fs3.meta.bench import bench_meta_stores, format_meta_table`` and
``print(format_meta_table(bench_meta_stores(files=args.files)))``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fs3.meta.backends import namespace_over, open_meta_store
from fs3.meta.bulk import add_files
from fs3.meta.namespace import Namespace
from fs3.meta.store import MetaStore

OPS_PER_FILE = 4  # create, stat, rename, unlink
CYCLE = ("create", "stat", "rename", "unlink")
OPERATIONS = (*CYCLE, "list")
LIST_PAGE = 100
BIG_DIR = "/big"
SMALL_DIR = "/small"  # the 100 entries list reads in the empty namespace
EMPTY = "empty"
BACKENDS = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


@dataclass(frozen=True)
class Workload:
    """Client threads spread over meta servers, in one shared directory or each in its own."""

    name: str
    threads: int
    servers: int
    own_dirs: bool


def workloads(threads: int) -> list[Workload]:
    return [
        Workload("1 thread", 1, 1, False),
        Workload(f"{threads} threads, one dir", threads, 1, False),
        Workload(f"{threads} threads, own dirs", threads, 1, True),
        Workload(f"2 servers x {threads // 2} threads, own dirs", threads, 2, True),
    ]


@dataclass
class MetaBenchResults:
    """What :func:`bench_meta_stores` measured."""

    files: int
    ops: int
    threads: int
    repeat: int = 1
    """Runs of each workload in each namespace; the best rate of each operation counts."""
    rates: dict[tuple[str, str, str, str], float] = field(default_factory=dict)
    """(backend, workload, operation or "cycle", namespace) -> operations per second."""
    retries: dict[tuple[str, str, str], int] = field(default_factory=dict)
    """(backend, workload, namespace) -> transactions run again after losing a conflict,
    over all its runs."""
    bulk_s: dict[str, float] = field(default_factory=dict)
    """backend -> seconds the bulk fill of ``files`` files took."""
    cluster: dict[str, dict[str, float]] = field(default_factory=dict)
    """backend -> {row: ops/s} through a real meta server (``--cluster``)."""
    notes: list[str] = field(default_factory=list)

    @property
    def full(self) -> str:
        """The name of the namespace of ``files`` files."""
        return f"{self.files} files"


def _name(rng: random.Random, space: int, tag: str) -> str:
    """A new name that sorts right after a random one of the bulk names ``f0000000``..."""
    return f"f{rng.randrange(max(space, 1)):07d}-{tag}"


def _timed(pool: ThreadPoolExecutor, jobs: list[Callable[[], None]]) -> float:
    """Seconds until every job, each on a thread of ``pool``, is done."""
    start = time.perf_counter()
    for future in [pool.submit(job) for job in jobs]:
        future.result()
    return time.perf_counter() - start


Listing = Callable[[Namespace, random.Random], object]
"""One list operation on a namespace (a keyset page), with the thread's random source."""


def run_workload(
    spaces: list[Namespace], wl: Workload, folder: str, ops: int, listing: Listing, space: int
) -> dict[str, float]:
    """Ops/s of each operation (and of the cycle) of ``wl`` making ``ops`` files in
    ``folder`` (or in directories of its own inside it), and of ``ops`` calls of
    ``listing``; file names spread over the first ``space`` bulk names."""
    per = max(1, ops // wl.threads)
    dirs = [f"{folder}/t{k}" if wl.own_dirs else folder for k in range(wl.threads)]
    for d in sorted(set(dirs)):
        spaces[0].mkdir(d, parents=True)
    rngs = [random.Random(k) for k in range(wl.threads)]
    paths = [
        [f"{dirs[k]}/{_name(rngs[k], space, f't{k}-{i}')}" for i in range(per)]
        for k in range(wl.threads)
    ]
    steps: dict[str, Callable[[Namespace, str], object]] = {
        "create": lambda ns, p: ns.create(p + ".tmp"),
        "stat": lambda ns, p: ns.stat(p + ".tmp"),
        "rename": lambda ns, p: ns.rename(p + ".tmp", p),
        "unlink": lambda ns, p: ns.unlink(p),
    }

    def files(step: Callable[[Namespace, str], object], k: int) -> None:
        for path in paths[k]:
            step(spaces[k % wl.servers], path)

    def lists(k: int) -> None:
        for _ in range(per):
            listing(spaces[k % wl.servers], rngs[k])

    seconds: dict[str, float] = {}
    with ThreadPoolExecutor(wl.threads) as pool:
        for op, step in steps.items():
            jobs = [lambda k=k, step=step: files(step, k) for k in range(wl.threads)]
            seconds[op] = _timed(pool, jobs)
        seconds["list"] = _timed(pool, [lambda k=k: lists(k) for k in range(wl.threads)])
    done = per * wl.threads
    rates = {op: done / s for op, s in seconds.items()}
    rates["cycle"] = OPS_PER_FILE * done / sum(seconds[op] for op in CYCLE)
    return rates


@dataclass
class _OpenBackend:
    """A backend's two namespaces (empty and bulk-filled), each over two stores."""

    name: str
    stores: list[MetaStore]
    spaces: dict[str, list[Namespace]]
    setups: dict[str, tuple[str, Listing]]
    """namespace -> (folder the workloads make files in, its list operation)"""
    files: int


def open_backend(
    results: MetaBenchResults,
    backend: str,
    empty_db: str | os.PathLike[str],
    full_db: str | os.PathLike[str],
) -> _OpenBackend:
    """Opens two stores (two meta servers) on ``empty_db`` and two on ``full_db`` (SQLite
    files or PostgreSQL URLs, both empty at first), and bulk-fills ``results.files`` files
    into one directory of the second (timed into ``results.bulk_s``)."""
    spaces: dict[str, list[Namespace]] = {}
    stores: list[MetaStore] = []
    try:
        for space, db in ((EMPTY, empty_db), (results.full, full_db)):
            pair = [open_meta_store(db), open_meta_store(db)]  # two meta servers on one db
            stores += pair
            spaces[space] = [namespace_over(s, chains=lambda: [1, 2, 3]) for s in pair]
        small = spaces[EMPTY][0].mkdir(SMALL_DIR)
        add_files(empty_db, small.id, [f"s{i:03d}" for i in range(LIST_PAGE)])
        big = spaces[results.full][0].mkdir(BIG_DIR)
        names = [f"f{i:07d}" for i in range(results.files)]
        start = time.perf_counter()
        add_files(full_db, big.id, names)
        results.bulk_s[backend] = time.perf_counter() - start
        del names
        _check_filled(spaces[results.full][0], results.files)
    except BaseException:
        for s in stores:
            s.close()
        raise
    files = max(results.files, 1)
    setups: dict[str, tuple[str, Listing]] = {
        EMPTY: ("/work", lambda ns, rng: ns.listdir(SMALL_DIR, "", LIST_PAGE)),
        results.full: (
            BIG_DIR,
            lambda ns, rng: ns.listdir(BIG_DIR, f"f{rng.randrange(files):07d}", LIST_PAGE),
        ),
    }
    return _OpenBackend(backend, stores, spaces, setups, files)


def bench_backends(results: MetaBenchResults, backends: list[_OpenBackend]) -> None:
    """Round after round (``results.repeat``), every workload on every backend in both of
    its namespaces, one after the other: each ratio the table draws (backends, namespaces,
    servers, threads) is between runs close in time, so all see the same load from
    whatever else runs on the machine. The best run of each operation counts."""
    for _ in range(results.repeat):
        for wl in workloads(results.threads):
            for b in backends:
                for space, (folder, listing) in b.setups.items():
                    before = sum(s.retries for s in b.stores)
                    rates = run_workload(b.spaces[space], wl, folder, results.ops, listing, b.files)
                    for op, rate in rates.items():  # the best run: the least disturbed
                        key = (b.name, wl.name, op, space)
                        results.rates[key] = max(rate, results.rates.get(key, 0.0))
                    retried = sum(s.retries for s in b.stores) - before
                    key2 = (b.name, wl.name, space)
                    results.retries[key2] = results.retries.get(key2, 0) + retried


def _check_filled(ns: Namespace, files: int) -> None:
    """Raises RuntimeError unless the bulk fill's first and last names are where the
    namespace finds them."""
    if not files:
        return
    first = ns.listdir(BIG_DIR, "", 1)
    last = ns.listdir(BIG_DIR, f"f{files - 2:07d}" if files > 1 else "", 1)
    want = ["f0000000", f"f{files - 1:07d}"]
    if [e.name for e in first + last] != want:
        raise RuntimeError(f"bulk fill of {BIG_DIR} went wrong: {first + last} != {want}")
    ns.stat(f"{BIG_DIR}/{want[1]}")


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
    ops: int = 1000,
    repeat: int = 3,
) -> MetaBenchResults:
    """Every workload on SQLite and on PostgreSQL, in the empty namespace and in one of
    ``files`` files in one directory, ``ops`` files (and ``ops`` list pages) each, the best
    of ``repeat`` runs. PostgreSQL is left out, with a note, when no server is given and
    none can be started."""
    results = MetaBenchResults(files, ops, threads, repeat)
    with (
        tempfile.TemporaryDirectory(prefix="fs3-meta-bench-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        work = Path(tmp)
        backends = [open_backend(results, "sqlite", work / "empty.db", work / "full.db")]
        stack.callback(_close_all, backends)
        urls: list[str] = []
        try:
            server = postgres_url or stack.enter_context(temporary_postgres())
        except (RuntimeError, subprocess.SubprocessError) as err:
            results.notes.append(f"postgresql skipped: {err}")
        else:
            urls = [
                _fresh_database(server, f"fs3_meta_bench_{os.getpid()}_{name}")
                for name in ("empty", "full", "cluster")
            ]
            backends.append(open_backend(results, "postgresql", urls[0], urls[1]))
        bench_backends(results, backends)
        if cluster:
            results.cluster["sqlite"] = {}
            for on in (True, False):  # issue 18: capabilities on vs off in one run
                where = work / f"c-sqlite-{on}"
                results.cluster["sqlite"].update(bench_cluster(where, "", ops, threads, on))
            if urls:
                results.cluster["postgresql"] = bench_cluster(work / "c-pg", urls[2], ops, threads)
    return results


def _close_all(backends: list[_OpenBackend]) -> None:
    for b in backends:
        for s in b.stores:
            s.close()


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _rate(value: float | None) -> str:
    return f"{value:.0f}" if value else "-"


def format_meta_table(results: MetaBenchResults) -> str:
    """The results of :func:`bench_meta_stores`: a table of ops/s with the ratios the
    issue sets targets for, and those targets beside the measured ratios."""
    r, full = results.rates, results.full
    have = [b for b in BACKENDS if any(k[0] == b for k in r)]
    lines = [
        "fs3 meta bench: ops/s per operation, each its own phase; cycle = create+stat+rename"
        "+unlink together (SQLite WAL synchronous=NORMAL; PostgreSQL READ COMMITTED with row "
        "locks, synchronous_commit=off; 2 servers = two stores in one process on one database)",
        f'"{EMPTY}": a fresh database, files made in a new directory, list = the whole of a '
        f'{LIST_PAGE}-entry directory; "{full}": all of them in ONE directory ({BIG_DIR}), '
        f"files made in it (own dirs: directories inside it), list = a page of {LIST_PAGE} "
        "from a random point of it",
        f"{results.ops} files (and list pages) per workload and namespace, best of "
        f"{results.repeat} rounds of every workload in both namespaces",
        "bulk fill of "
        + full
        + ": "
        + ", ".join(f"{BACKENDS[b]} {s:.1f} s" for b, s in results.bulk_s.items()),
        "",
    ]
    head = f"{'workload':<34}{'op':<8}"
    for b in have:
        short = "PG" if b == "postgresql" else "SQLite"
        head += f"{short + ' empty':>14}{short + ' N':>10}{'N/empty':>9}"
    if len(have) == 2:
        head += f"{'PG/SQL empty':>14}{'PG/SQL N':>10}"
    lines += [head, "-" * len(head)]
    for wl in workloads(results.threads):
        for op in ("cycle", *OPERATIONS):
            line = f"{wl.name:<34}{op:<8}"
            for b in have:
                e, n = r.get((b, wl.name, op, EMPTY)), r.get((b, wl.name, op, full))
                line += f"{_rate(e):>14}{_rate(n):>10}{_ratio(n, e):>9}"
            if len(have) == 2:
                for space in (EMPTY, full):
                    pg, sq = (
                        r.get(("postgresql", wl.name, op, space)),
                        r.get(("sqlite", wl.name, op, space)),
                    )
                    line += f"{_ratio(pg, sq):>{14 if space == EMPTY else 10}}"
            lines.append(line)
    if "postgresql" in have:
        lines.append(
            "PostgreSQL transactions run again after a conflict: "
            + "; ".join(
                f"{wl.name}: {results.retries.get(('postgresql', wl.name, EMPTY), 0)} empty, "
                f"{results.retries.get(('postgresql', wl.name, full), 0)} N"
                for wl in workloads(results.threads)
            )
        )
    lines += ["", *_targets(results, have)]
    for b, rows in results.cluster.items():
        lines += [f"through a real meta server ({BACKENDS[b]}):"]
        lines += [f"  {name:<60}{rate:>8.0f} ops/s" for name, rate in rows.items()]
    lines += results.notes
    return "\n".join(lines)


def _targets(results: MetaBenchResults, have: list[str]) -> list[str]:
    """The issue's targets, each beside what this run measured."""
    r, full, t = results.rates, results.full, results.threads
    one, shared, own, two = (wl.name for wl in workloads(t))
    out = [f"{'target (issue 22)':<78}{'measured':>12}  {'goal':<10}"]

    def row(what: str, value: float | None, goal: float, unit: str = "x") -> None:
        if value is None:
            return
        shown = f"{value:.2f}x" if unit == "x" else f"{value:.0f} ops/s"
        ok = "met" if value >= goal else "MISSED"
        goal_text = f">= {goal}x" if unit == "x" else f">= {goal:.0f}"
        out.append(f"{what:<78}{shown:>12}  {goal_text:<10}{ok}")

    def get(b: str, wl: str, op: str, space: str) -> float | None:
        return r.get((b, wl, op, space))

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    for space in (EMPTY, full):
        if len(have) == 2:
            row(
                f"PG/SQLite, 1 thread, cycle, {space}",
                div(get("postgresql", one, "cycle", space), get("sqlite", one, "cycle", space)),
                0.4,
            )
        for wl in (shared, own):
            row(
                f"PG ops/s, {wl}, cycle, {space}",
                get("postgresql", wl, "cycle", space),
                3000,
                "ops",
            )
        for b in have:
            row(
                f"{BACKENDS[b]} 2 servers / 1 server ({t} threads, own dirs), cycle, {space}",
                div(get(b, two, "cycle", space), get(b, own, "cycle", space)),
                1.0,
            )
    for b in have:
        # "Within 1.5x": the N-file rate at least 1/1.5 of the empty one, for every
        # operation of every workload; the worst is shown.
        worst = min(
            (
                (div(get(b, wl.name, op, full), get(b, wl.name, op, EMPTY)) or 0.0, wl.name, op)
                for wl in workloads(t)
                for op in OPERATIONS
            ),
        )
        row(
            f"{BACKENDS[b]} N-file/empty rate, worst: {worst[1]}, {worst[2]}",
            worst[0],
            round(1 / 1.5, 2),
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m fs3.meta.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--files", type=int, default=1000, help="files of the full namespace, all in one directory"
    )
    parser.add_argument(
        "--ops", type=int, default=1000, help="files made (and list pages read) per workload"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each workload; the best rate counts"
    )
    parser.add_argument("--threads", type=int, default=4, help="threads of the threaded rows")
    parser.add_argument("--postgres", default=None, help="postgresql:// URL of a server to use")
    parser.add_argument("--cluster", action="store_true", help="also through a meta server")
    args = parser.parse_args(argv)
    results = bench_meta_stores(
        args.files, args.threads, args.postgres, args.cluster, args.ops, args.repeat
    )
    print(format_meta_table(results))


if __name__ == "__main__":
    main()
