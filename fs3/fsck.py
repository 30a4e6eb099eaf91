"""fsck: do the namespace and the storage targets agree, and does every replica pass its
checksums?

What :func:`fsck` compares:

- every file's chunks (index 0 up to its length, each on the chain its layout names) with
  what each serving member of that chain holds (a DUMP of the chain): a chunk some members
  hold and others lack is a *missing replica*. One that no member lists is asked about on
  each member (VERIFY): a member that had it and lost it (its file gone, see
  :mod:`fs3.storage.local`) makes it *lost*, else it is a *hole* (a warning: never written,
  as in a sparse file). A chunk on a chain with no serving member is *unreadable*;
- each replica (or a sample of the chunks, all replicas of each) verified by its target
  against its stored block CRC32Cs (VERIFY): a *bad replica* fails them or lost its file;
  replicas of one chunk at different committed versions are a *version disagreement*, at one
  version with different bytes a *replica mismatch* (a chunk with a write in flight is left
  out of both); a chunk none of whose replicas passes is *lost*;
- chunks no file owns (*orphans*): their inode does not exist and no deletion of it is
  queued. Candidates are confirmed with meta after the walk, so a file created or renamed
  while fsck runs is not mistaken for one;
- chunks past a file's end that no queued deletion covers (a warning: a writer in flight,
  or one that failed).

Repair (``repair=True``) does only what cannot undo a client's work:

- a bad replica is replaced by a verified copy of the same version from another replica,
  and only if it still holds that version with no write in flight (the target checks under
  the chunk's lock), so a write or deletion since the check wins;
- orphans are deleted from the targets holding them: inode ids are never reused, so no file
  can ever claim them.

Missing replicas and version disagreements are reported, not repaired: writing into a
replica that lacks a chunk could bring back one a concurrent deletion just removed. A
target that is restarted after its lease ran out is resynced by its predecessor, which
compares versions chunk by chunk and copies what differs; that is the repair for them.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from fs3.capabilities import ServiceSigner, service_keys
from fs3.errors import Fs3Error
from fs3.types import DIRECTORY, FILE, SERVING, ChunkId, Inode, RoutingTable
from fs3.wire.checksum import crc32c
from fs3.wire.framing import DUMP_ENTRY, Request
from fs3.wire.ops import DUMP, READ, REMOVE, REPAIR, VERIFY

Progress = Callable[[str, float | None], AbstractContextManager[Callable[[float], None]]]
_VERIFY_THREADS = 8  # requests in flight: targets verify in parallel, one per connection


@contextmanager
def _no_progress(description: str, total: float | None) -> Iterator[Callable[[float], None]]:
    yield lambda n: None


@dataclass(frozen=True)
class Finding:
    kind: str
    """``lost`` and ``unreadable`` (data no client can read), ``bad replica``, ``missing
    replica``, ``version disagreement``, ``replica mismatch``, ``orphan`` (errors);
    ``hole``, ``past end``, ``busy``, ``unchecked`` (warnings: every byte still reads)."""
    where: str
    """The file's path, or ``inode N`` for an orphan, or ``target N``."""
    detail: str
    error: bool = True

    def line(self) -> str:
        return f"{'ERROR' if self.error else 'WARN '} {self.kind}: {self.where}: {self.detail}"


@dataclass
class FsckReport:
    files: int = 0
    directories: int = 0
    chunks: int = 0
    """Chunks the files' lengths call for."""
    replicas: int = 0
    """Replicas of those chunks found on serving targets."""
    verified: int = 0
    """Replicas whose checksums were verified."""
    findings: list[Finding] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.error]

    def summary(self) -> str:
        return (
            f"{self.files} files, {self.directories} directories, {self.chunks} chunks, "
            f"{self.replicas} replicas ({self.verified} checksummed): "
            f"{len(self.errors)} errors, {len(self.findings) - len(self.errors)} warnings, "
            f"{len(self.repaired)} repaired"
        )


def _address(table: RoutingTable, target_id: int) -> str:
    return table.targets[target_id].data_address


class _SigningPool:
    """``fs.pool`` with every request signed as a service's (:mod:`fs3.capabilities`):
    fsck lists, verifies, repairs and deletes chunks of every file, which targets allow only
    services. The key comes from ``security.secret_file`` (a local cluster's config.yaml
    names it); without one, requests go unsigned, which only a cluster with
    ``security.capabilities`` off accepts."""

    def __init__(self, fs: Any) -> None:
        security = fs.config.security
        keys = service_keys(security) if security.secret_file else None
        self._signer = ServiceSigner(keys.service, security.capability_s) if keys else None
        self._pool = fs.pool

    def request(
        self, address: str, req: Request, payload: bytes | memoryview = b""
    ) -> tuple[int, int, memoryview]:
        if self._signer is not None:
            req = dataclasses.replace(req, capability=self._signer.token())
        return self._pool.request(address, req, payload)


@dataclass
class _AsService:
    """The file system fsck checks, its chunk requests signed (:class:`_SigningPool`)."""

    fs: Any
    pool: _SigningPool

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fs, name)


def fsck(
    fs: Any,
    sample: float = 1.0,
    repair: bool = False,
    progress: Progress = _no_progress,
    seed: int | None = None,
) -> FsckReport:
    """Checks the cluster ``fs`` (an :class:`fs3.FS3FileSystem`) talks to; see the module
    docstring for what and how. ``sample`` is the share of chunks whose replicas are
    checksummed (1: all). Run it on a quiet cluster for exact results: chunks written while
    it runs can show up as warnings.

    Raises Fs3Error (a target or meta unreachable), naming what it could not reach.
    """
    if not 0 < sample <= 1:
        raise ValueError(f"sample must be in (0, 1], got {sample}")
    report = FsckReport()
    fs = _AsService(fs, _SigningPool(fs))
    table = fs.mgmtd.refresh()
    held = _replicas(fs, table, report, progress)
    files = _walk(fs, report, progress)
    expected, holes = _expected(files, table, held, report)
    _holes(fs, table, holes, expected, report)
    _unowned(fs, held, files, expected, report, repair, table)
    rng = random.Random(seed)
    # Replicas listed at different versions are verified whatever the sample: only VERIFY
    # tells a write in flight from a real disagreement.
    chosen = [
        cid
        for cid in expected
        if cid in held
        and (sample >= 1 or len(set(held[cid].values())) > 1 or rng.random() < sample)
    ]
    _verify(fs, table, held, chosen, expected, report, repair, progress)
    return report


def _replicas(
    fs: Any, table: RoutingTable, report: FsckReport, progress: Progress
) -> dict[ChunkId, dict[int, int]]:
    """chunk -> {serving target: committed version}, from a DUMP of every chain member."""
    held: dict[ChunkId, dict[int, int]] = {}
    members = [(c.chain_id, m) for c in table.chains.values() for m in c.members]
    with progress("listing chunks on targets", len(members)) as advance:
        for chain_id, member in members:
            advance(1)
            if member.state != SERVING:
                report.findings.append(
                    Finding(
                        "unchecked",
                        f"target {member.target_id}",
                        f"{member.state} in chain {chain_id}: its replicas there are not checked",
                        error=False,
                    )
                )
                continue
            address = _address(table, member.target_id)
            _, _, raw = fs.pool.request(address, Request(DUMP, chain_id))
            for off in range(0, len(raw), DUMP_ENTRY.size):
                inode, index, version, _ = DUMP_ENTRY.unpack_from(raw, off)
                held.setdefault(ChunkId(chain_id, inode, index), {})[member.target_id] = version
    return held


def _walk(fs: Any, report: FsckReport, progress: Progress) -> dict[int, tuple[str, Inode]]:
    """inode id -> (path, inode) of every file, the trash and orphan folders included."""
    files: dict[int, tuple[str, Inode]] = {}
    with progress("walking the namespace", None) as advance:
        for path, inode in fs.meta.walk("/"):  # page by page: huge directories stream
            if inode.kind == DIRECTORY:
                report.directories += 1
                advance(1)
            elif inode.kind == FILE:
                files[inode.id] = (path, inode)
    report.files = len(files)
    return files


def _expected(
    files: dict[int, tuple[str, Inode]],
    table: RoutingTable,
    held: dict[ChunkId, dict[int, int]],
    report: FsckReport,
) -> tuple[dict[ChunkId, str], list[ChunkId]]:
    """chunk -> its file's path for every chunk the files' lengths call for, and the chunks
    no serving member lists (holes, or lost: :func:`_holes` tells); reports missing
    replicas and chunks of chains no member serves."""
    expected: dict[ChunkId, str] = {}
    holes: list[ChunkId] = []
    for ino, (path, inode) in files.items():
        lay = inode.layout
        if not lay.chains:
            continue
        for index in range(-(-inode.length // lay.chunk_size)):
            cid = ChunkId(lay.chain_of(index), ino, index)
            expected[cid] = path
            have = held.get(cid, {})
            chain = table.chains.get(cid.chain)
            serving = chain.readers() if chain else ()
            where = f"chunk {index} (chain {cid.chain}, inode {ino})"
            if not serving:
                report.findings.append(
                    Finding(
                        "unreadable",
                        path,
                        f"{where}: chain {cid.chain} has no serving member (its targets are "
                        "offline or resyncing); restart them",
                    )
                )
                continue
            if not have:
                holes.append(cid)
                continue
            report.replicas += len(have)
            missing = [t for t in serving if t not in have]
            if missing:
                report.findings.append(
                    Finding(
                        "missing replica",
                        path,
                        f"{where}: not on target {_ids(missing)}, on target {_ids(sorted(have))}; "
                        "restart the target after its lease ran out to have it resynced",
                    )
                )
    report.chunks = len(expected)
    return expected, holes


def _holes(
    fs: Any,
    table: RoutingTable,
    holes: list[ChunkId],
    expected: dict[ChunkId, str],
    report: FsckReport,
) -> None:
    """Asks every serving member about each chunk none lists: if one had it and lost it
    (VERIFY's ``bad``) the chunk is lost, else it is a hole."""
    jobs = [(cid, t) for cid in holes for t in table.chains[cid.chain].readers()]
    with ThreadPoolExecutor(_VERIFY_THREADS, "fs3-fsck") as pool:
        answers = list(pool.map(lambda job: _check(fs, table, job), jobs))
    lost: dict[ChunkId, list[str]] = {}
    for (cid, target), (_, _, body) in zip(jobs, answers, strict=True):
        if body["state"] == "bad":
            lost.setdefault(cid, []).append(f"target {target}: {body.get('error')}")
    for cid in holes:
        where = f"chunk {cid.index} (chain {cid.chain}, inode {cid.inode})"
        if cid in lost:
            detail = f"{where}: no replica can be read ({'; '.join(lost[cid])})"
            report.findings.append(Finding("lost", expected[cid], detail))
        else:
            detail = f"{where}: never written (a sparse file's hole): reads as zeros"
            report.findings.append(Finding("hole", expected[cid], detail, error=False))


def _check(
    fs: Any, table: RoutingTable, job: tuple[ChunkId, int]
) -> tuple[int, int, dict[str, Any]]:
    """One replica checked by its target (VERIFY): (version, CRC32C, report)."""
    cid, target = job
    req = Request(VERIFY, cid.chain, 0, cid.inode, cid.index)
    version, crc, body = fs.pool.request(_address(table, target), req)
    return version, crc, json.loads(bytes(body))


def _ids(ids: list[int]) -> str:
    return ",".join(map(str, ids))


def _unowned(
    fs: Any,
    held: dict[ChunkId, dict[int, int]],
    files: dict[int, tuple[str, Inode]],
    expected: dict[ChunkId, str],
    report: FsckReport,
    repair: bool,
    table: RoutingTable,
) -> None:
    """Chunks no file's length calls for: past a file's end, or orphans (confirmed with
    meta: not created or moved during the walk, no deletion queued)."""
    others = [cid for cid in held if cid not in expected]
    if not others:
        return
    found, pending = fs.meta.inode_status(sorted({cid.inode for cid in others}))
    for cid in sorted(others):
        targets = sorted(held[cid])
        queued = cid.inode in pending and cid.index >= pending[cid.inode]
        if queued:
            continue  # the collector deletes it soon
        if cid.inode in files or cid.inode in found:
            inode = found.get(cid.inode) or files[cid.inode][1]
            lay = inode.layout
            if lay.chunk_size and cid.index < -(-inode.length // lay.chunk_size):
                continue  # a file that grew while fsck walked
            where = files[cid.inode][0] if cid.inode in files else f"inode {cid.inode}"
            report.findings.append(
                Finding(
                    "past end",
                    where,
                    f"chunk {cid.index} (chain {cid.chain}) on target "
                    f"{_ids(targets)} lies past the file's {inode.length} bytes (a writer in "
                    "flight, or one that failed)",
                    error=False,
                )
            )
            continue
        report.findings.append(
            Finding(
                "orphan",
                f"inode {cid.inode}",
                f"chunk {cid.index} on chain {cid.chain} (target "
                f"{_ids(targets)}): no file has this inode",
            )
        )
        if repair:
            for t in targets:
                req = Request(REMOVE, cid.chain, 0, cid.inode, cid.index, length=cid.index + 1)
                fs.pool.request(_address(table, t), req)
            report.repaired.append(f"orphan chunk {tuple(cid)} deleted from target {_ids(targets)}")


def _verify(
    fs: Any,
    table: RoutingTable,
    held: dict[ChunkId, dict[int, int]],
    chosen: list[ChunkId],
    expected: dict[ChunkId, str],
    report: FsckReport,
    repair: bool,
    progress: Progress,
) -> None:
    jobs = [(cid, t) for cid in chosen for t in sorted(held[cid])]
    results: dict[tuple[ChunkId, int], tuple[int, int, dict[str, Any]]] = {}
    with (
        progress("verifying replicas", len(jobs)) as advance,
        ThreadPoolExecutor(_VERIFY_THREADS, "fs3-fsck") as pool,
    ):
        for job, result in zip(jobs, pool.map(lambda j: _check(fs, table, j), jobs), strict=True):
            results[job] = result
            advance(1)
    report.verified = len(jobs)
    for cid in chosen:
        got = {t: results[(cid, t)] for t in sorted(held[cid])}
        path = expected[cid]
        where = f"chunk {cid.index} (chain {cid.chain}, inode {cid.inode})"
        if any(r[2].get("pending") for r in got.values()):
            report.findings.append(
                Finding("busy", path, f"{where}: a write is in flight; not compared", error=False)
            )
            continue
        good = {t: r for t, r in got.items() if r[2]["state"] == "ok"}
        for t, r in got.items():
            if r[2]["state"] == "bad":
                detail = f"{where} on target {t}: {r[2].get('error')}"
                report.findings.append(Finding("bad replica", path, detail))
                if repair:
                    _repair(fs, table, cid, t, r[0], good, report, path)
            elif r[2]["state"] == "absent":  # deleted since the DUMP: a file removed meanwhile
                continue
        if not good and any(r[2]["state"] == "bad" for r in got.values()):
            detail = f"{where}: no replica can be read (each is a bad replica above)"
            report.findings.append(Finding("lost", path, detail))
        versions = {r[0] for r in got.values() if r[2]["state"] != "absent"}
        if len(versions) > 1:
            detail = ", ".join(f"target {t} v{r[0]}" for t, r in got.items())
            report.findings.append(Finding("version disagreement", path, f"{where}: {detail}"))
        elif len({r[1] for r in good.values()}) > 1:
            detail = ", ".join(f"target {t} crc {r[1]:08x}" for t, r in good.items())
            detail = f"{where}: one version, different bytes: {detail}"
            report.findings.append(Finding("replica mismatch", path, detail))


def _repair(
    fs: Any,
    table: RoutingTable,
    cid: ChunkId,
    target: int,
    version: int,
    good: dict[int, tuple[int, int, dict[str, Any]]],
    report: FsckReport,
    path: str,
) -> None:
    """Copies a verified replica of the same version over the bad one (REPAIR refuses when
    the bad replica changed since it was checked)."""
    source = next((t for t, r in good.items() if r[0] == version), None)
    if source is None:
        return  # no good replica of that version: nothing safe to copy
    length = good[source][2].get("length", 0)
    read = Request(READ, cid.chain, table.version, cid.inode, cid.index, 0, length)
    try:
        got_version, _, data = fs.pool.request(_address(table, source), read)
        if got_version != version or len(data) != length:
            raise Fs3Error(f"target {source} changed meanwhile (now v{got_version})")
        fix = Request(
            REPAIR,
            cid.chain,
            0,
            cid.inode,
            cid.index,
            crc=crc32c(data),
            version=version,
            truncate=True,
        )
        fs.pool.request(_address(table, target), fix, data)
    except Fs3Error as err:
        report.findings.append(
            Finding(
                "bad replica", path, f"chunk {cid.index} on target {target} not repaired: {err}"
            )
        )
        return
    report.repaired.append(
        f"{path}: chunk {cid.index} on target {target} rewritten from target {source}"
    )
