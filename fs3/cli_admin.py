"""``hai fs3`` commands on the cluster: status, targets, chains, df (and fsck, in
:mod:`fs3.fsck`). They ask mgmtd: the chain table, what each target reported with its last
heartbeat (capacity, chunks, resync progress) and every mgmtd process's role."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from fs3.cli_util import (
    config_option,
    echo_json,
    human,
    json_option,
    mgmtd_address_option,
    one_line_errors,
)
from fs3.config import load_config
from fs3.mgmtd.client import MgmtdClient
from fs3.types import SYNCING, ResyncProgress, RoutingTable, TargetStats, capacity

address_option = mgmtd_address_option("DIRECTORY/address, $FS3_CLUSTER, the config file")
directory_argument = click.argument("directory", type=click.Path(file_okay=False), required=False)


@dataclass
class ClusterView:
    """The cluster as mgmtd sees it now."""

    table: RoutingTable
    stats: dict[int, TargetStats]
    mgmtds: list[dict[str, Any]] = field(default_factory=list)
    """Each configured mgmtd's Info: address, role (primary, standby, unreachable), ..."""

    @property
    def metas(self) -> list[str]:
        for info in self.mgmtds:
            if info.get("role") == "primary":
                return list(info.get("meta_addresses", []))
        return [self.table.meta_address] if self.table.meta_address else []

    def resync_of(self, chain_id: int, target_id: int) -> ResyncProgress | None:
        """The progress of a resync of ``target_id`` on ``chain_id`` while one runs."""
        for stats in self.stats.values():
            for r in stats.resyncs:
                if (r.chain_id, r.target_id) == (chain_id, target_id):
                    return r
        return None


def cluster_address(directory: str | None, address: str | None, config_path: str | None) -> str:
    if address is None and directory is not None:
        with one_line_errors(directory):
            address = (Path(directory) / "address").read_text().strip()
    return address or load_config(config_path).client.address


def view(address: str, config_path: str | None, roles: bool = False) -> ClusterView:
    """Reads the chain table and the targets' stats (and every mgmtd's role). Raises
    click.ClickException, one line, when mgmtd cannot be reached."""
    with one_line_errors("fs3 cluster"):
        config = load_config(config_path)
        client = MgmtdClient(address, config.timeouts.rpc_s, config.tls)
        try:
            table = client.refresh()
            stats = {t.target_id: t for t in client.stats()}
            infos = client.info_all() if roles else []
        finally:
            client.close()
    return ClusterView(table, stats, infos)


def _console() -> Any:
    """A console as wide as the terminal; piped, wide enough that addresses stay whole."""
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def target_rows(v: ClusterView) -> list[dict[str, Any]]:
    """One row per storage target, by id: ``target_id``, ``address``, ``alive``, ``chains``
    (``chain_id`` and the target's ``state`` in it) and, from its last report, ``chunks``,
    ``used_bytes``, ``free_bytes``, ``total_bytes`` (None before its first)."""
    rows = []
    for t in sorted(v.table.targets.values(), key=lambda t: t.target_id):
        s = v.stats.get(t.target_id)
        chains = [
            {"chain_id": c.chain_id, "state": c.state_of(t.target_id)}
            for c in sorted(v.table.chains.values(), key=lambda c: c.chain_id)
            if any(m.target_id == t.target_id for m in c.members)
        ]
        rows.append(
            {
                "target_id": t.target_id,
                "address": t.data_address,
                "alive": t.alive,
                "chains": chains,
                "chunks": s.chunks if s else None,
                "used_bytes": s.used_bytes if s else None,
                "free_bytes": s.free_bytes if s else None,
                "total_bytes": s.total_bytes if s else None,
            }
        )
    return rows


def chain_rows(v: ClusterView) -> list[dict[str, Any]]:
    """One row per chain, by id: ``chain_id`` and its ``members``, head first, each with
    ``target_id``, ``state`` and ``resync`` (``done``/``total`` chunks while it syncs, else
    None)."""
    rows = []
    for c in sorted(v.table.chains.values(), key=lambda c: c.chain_id):
        members = []
        for m in c.members:
            resync = v.resync_of(c.chain_id, m.target_id) if m.state == SYNCING else None
            progress = {"done": resync.done, "total": resync.total} if resync else None
            members.append({"target_id": m.target_id, "state": m.state, "resync": progress})
        rows.append({"chain_id": c.chain_id, "members": members})
    return rows


def _print_targets(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    targets = Table(
        "target", "address", "alive", "chains", "chunks", "used", "free", "size", title="targets"
    )
    for r in rows:
        chains = " ".join(f"{c['chain_id']}:{c['state']}" for c in r["chains"])
        numbers = (
            [str(r["chunks"])] + [human(r[k]) for k in ("used_bytes", "free_bytes", "total_bytes")]
            if r["chunks"] is not None
            else ["-"] * 4
        )
        targets.add_row(
            str(r["target_id"]), r["address"], "yes" if r["alive"] else "NO", chains, *numbers
        )
    _console().print(targets)


def _member(m: dict[str, Any]) -> str:
    resync = m["resync"]
    return f"{m['target_id']}:{m['state']}" + (
        f" {resync['done']}/{resync['total']}" if resync else ""
    )


def _print_chains(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    chains = Table("chain", "members (head first; syncing with chunks done/total)", title="chains")
    for r in rows:
        chains.add_row(str(r["chain_id"]), "  ".join(_member(m) for m in r["members"]))
    _console().print(chains)


@click.command("status")
@directory_argument
@address_option
@config_option
@json_option
def status(
    directory: str | None, address: str | None, config_path: str | None, as_json: bool
) -> None:
    """Show mgmtd roles, meta servers, targets and chains with their states and resyncs.

    With --json, an object: "mgmtds" (each one's info: address, role, ...), "metas",
    "version" (of the chain table), "targets" and "chains" as those commands print them.
    """
    v = view(cluster_address(directory, address, config_path), config_path, roles=True)
    targets, chains = target_rows(v), chain_rows(v)
    if as_json:
        echo_json(
            {
                "mgmtds": v.mgmtds,
                "metas": v.metas,
                "version": v.table.version,
                "targets": targets,
                "chains": chains,
            }
        )
        return
    roles = ", ".join(f"{i['address']} {i['role']}" for i in v.mgmtds)
    click.echo(f"mgmtd: {roles}")
    click.echo(f"meta: {', '.join(v.metas) or '-'}")
    click.echo(f"chain table version {v.table.version}")
    _print_targets(targets)
    _print_chains(chains)


@click.command("targets")
@directory_argument
@address_option
@config_option
@json_option
def targets(
    directory: str | None, address: str | None, config_path: str | None, as_json: bool
) -> None:
    """Table of storage targets: address, lease, chains, chunks and capacity (--json: a
    list of rows with the byte counts unrounded)."""
    rows = target_rows(view(cluster_address(directory, address, config_path), config_path))
    if as_json:
        echo_json(rows)
    else:
        _print_targets(rows)


@click.group("chains", invoke_without_command=True)
@address_option
@config_option
@json_option
@click.pass_context
def chains(ctx: click.Context, address: str | None, config_path: str | None, as_json: bool) -> None:
    """The live chain table with member states and resync progress (--json: a list of
    chains); `chains plan` plans one for a cluster's shape."""
    if ctx.invoked_subcommand is None:
        rows = chain_rows(view(cluster_address(None, address, config_path), config_path))
        if as_json:
            echo_json(rows)
        else:
            _print_chains(rows)


@chains.command("plan")
@click.option("--nodes", type=int, required=True, help="Storage nodes (failure domains).")
@click.option("--targets-per-node", type=int, required=True, help="Storage targets per node.")
@click.option("--replicas", type=int, default=3, show_default=True, help="Targets per chain.")
@click.option("--seed", type=int, default=0, show_default=True, help="Local search seed.")
@click.option("--no-table", is_flag=True, help="Print only the balance figures.")
def chains_plan(
    nodes: int, targets_per_node: int, replicas: int, seed: int, no_table: bool
) -> None:
    """Print a chain table that spreads recovery reads evenly (a BIBD where one is found)."""
    from fs3.errors import ConfigError
    from fs3.mgmtd.placement import format_plan, plan_chains

    try:
        plan = plan_chains(nodes, targets_per_node, replicas, seed)
    except ConfigError as err:
        raise click.ClickException(str(err)) from None
    click.echo(format_plan(plan, table=not no_table))


def disk_usage(v: ClusterView) -> dict[str, Any]:
    """What ``df`` shows: ``filesystems`` (each file system holding targets, counted once:
    ``name``, ``total_bytes``, ``free_bytes``, ``targets``), their ``total_bytes`` and
    ``free_bytes``, the ``chunks`` stored and their ``chunk_bytes`` (all replicas), the
    chains' ``replicas``, and the targets with no report yet (``missing``)."""
    by_fs: dict[str, list[TargetStats]] = {}
    for s in v.stats.values():
        by_fs.setdefault(s.fsid or f"target {s.target_id}", []).append(s)
    filesystems = [
        {
            "name": fsid,
            "total_bytes": members[0].total_bytes,
            "free_bytes": members[0].free_bytes,
            "targets": sorted(s.target_id for s in members),
        }
        for fsid, members in sorted(by_fs.items())
    ]
    total, free = capacity(list(v.stats.values()))
    return {
        "filesystems": filesystems,
        "total_bytes": total,
        "free_bytes": free,
        "chunks": sum(s.chunks for s in v.stats.values()),
        "chunk_bytes": sum(s.used_bytes for s in v.stats.values()),
        "replicas": max((len(c.members) for c in v.table.chains.values()), default=1),
        "missing": sorted(set(v.table.targets) - set(v.stats)),
    }


def _df_row(name: str, total: int, free: int, ids: str) -> str:
    used = total - free
    pct = f"{100 * used / total:.0f}%" if total else "-"
    return f"{name:<44} {human(total):>10} {human(used):>10} {human(free):>10} {pct:>5}  {ids}"


@click.command("df")
@directory_argument
@address_option
@config_option
@json_option
def df(directory: str | None, address: str | None, config_path: str | None, as_json: bool) -> None:
    """Capacity of the file systems holding the targets (each counted once) and the chunk
    bytes stored on them (--json: the same figures in bytes)."""
    usage = disk_usage(view(cluster_address(directory, address, config_path), config_path))
    if as_json:
        echo_json(usage)
        return
    click.echo(f"{'file system':<44} {'size':>10} {'used':>10} {'avail':>10} {'use%':>5}  targets")
    for f in usage["filesystems"]:
        ids = ",".join(map(str, f["targets"]))
        click.echo(_df_row(f["name"], f["total_bytes"], f["free_bytes"], ids))
    count = str(sum(len(f["targets"]) for f in usage["filesystems"]))
    click.echo(_df_row("total", usage["total_bytes"], usage["free_bytes"], count))
    chunk_bytes, replicas = usage["chunk_bytes"], usage["replicas"]
    click.echo(
        f"chunks: {usage['chunks']} holding {chunk_bytes} bytes ({human(chunk_bytes)}), about "
        f"{human(chunk_bytes / replicas)} of data at {replicas} replicas"
    )
    if usage["missing"]:
        click.echo(f"no report yet from targets {', '.join(map(str, usage['missing']))}", err=True)


@click.command("fsck")
@directory_argument
@address_option
@config_option
@click.option(
    "--sample",
    type=click.FloatRange(0, 1, min_open=True),
    default=1.0,
    show_default=True,
    help="Share of chunks whose replicas are checksummed (0.1: one in ten); every "
    "chunk is still listed and compared.",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Rewrite bad replicas from verified ones of the same version and delete "
    "orphan chunks: the repairs that cannot undo a client's work.",
)
@json_option
def fsck_command(
    directory: str | None,
    address: str | None,
    config_path: str | None,
    sample: float,
    repair: bool,
    as_json: bool,
) -> None:
    """Check that namespace and targets agree: checksums of every replica (or --sample),
    missing replicas, version disagreements, orphan chunks. Exit status 1 when it found an
    error (repaired ones too: run it again to confirm), 0 when clean or only warnings.

    \b
    Errors: lost (no replica of a chunk can be read), unreadable (its chain has no
    serving member), bad replica, missing replica, version disagreement, replica
    mismatch, orphan. Warnings (every byte still reads): hole (never written: zeros),
    past end, busy (a write in flight), unchecked (a member not serving).

    With --json, the report: counts of files, directories, chunks, replicas and verified
    replicas, the findings (kind, where, detail, error) and the repairs.
    """
    import sys

    from fs3.cli_util import open_fs, progress
    from fs3.fsck import fsck

    if config_path is None and directory is not None:
        # The cluster's own config names its secret, which fsck's chunk requests need.
        config_path = str(Path(directory) / "config.yaml")
    fs = open_fs(cluster_address(directory, address, config_path), config_path)
    with one_line_errors("fsck"):
        report = fsck(fs, sample, repair, lambda what, n: progress(what, n, unit_bytes=False))
    if as_json:
        echo_json(report)
        sys.exit(1 if report.errors else 0)
    for finding in report.findings:
        click.echo(finding.line())
    for line in report.repaired:
        click.echo(f"REPAIRED {line}")
    click.echo(f"fsck: {report.summary()}")
    sys.exit(1 if report.errors else 0)


COMMANDS = [status, targets, chains, df, fsck_command]
