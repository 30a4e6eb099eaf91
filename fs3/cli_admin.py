"""``hai fs3`` commands on the cluster: status, targets, chains, df (and fsck, in
:mod:`fs3.fsck`). They ask mgmtd: the chain table, what each target reported with its last
heartbeat (capacity, chunks, resync progress) and every mgmtd process's role."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from fs3.cli_util import config_option, human, one_line_errors
from fs3.config import load_config
from fs3.mgmtd.client import MgmtdClient
from fs3.types import SYNCING, RoutingTable, TargetStats, capacity

address_option = click.option(
    "--address",
    default=None,
    help="mgmtd HOST:PORT[,...] (default: DIRECTORY/address, $FS3_CLUSTER, the config file).",
)
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

    def resync_of(self, chain_id: int, target_id: int) -> str:
        """``"45/120"`` while a resync of ``target_id`` on ``chain_id`` runs, else ``""``."""
        for stats in self.stats.values():
            for r in stats.resyncs:
                if (r.chain_id, r.target_id) == (chain_id, target_id):
                    return f"{r.done}/{r.total}"
        return ""


def cluster_address(directory: str | None, address: str | None, config_path: str | None) -> str:
    if address is None and directory is not None:
        with one_line_errors(directory):
            address = (Path(directory) / "address").read_text().strip()
    return address or load_config(config_path).client.address


def view(address: str, config_path: str | None, roles: bool = False) -> ClusterView:
    """Reads the chain table and the targets' stats (and every mgmtd's role). Raises
    click.ClickException, one line, when mgmtd cannot be reached."""
    with one_line_errors("fs3 cluster"):
        client = MgmtdClient(address, load_config(config_path).timeouts.rpc_s)
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


def _member(v: ClusterView, chain_id: int, target_id: int, state: str) -> str:
    progress = v.resync_of(chain_id, target_id) if state == SYNCING else ""
    return f"{target_id}:{state}" + (f" {progress}" if progress else "")


def _print_targets(v: ClusterView) -> None:
    from rich.table import Table

    targets = Table(
        "target", "address", "alive", "chains", "chunks", "used", "free", "size", title="targets"
    )
    for t in sorted(v.table.targets.values(), key=lambda t: t.target_id):
        s = v.stats.get(t.target_id)
        chains = " ".join(
            f"{c.chain_id}:{c.state_of(t.target_id)}"
            for c in sorted(v.table.chains.values(), key=lambda c: c.chain_id)
            if any(m.target_id == t.target_id for m in c.members)
        )
        numbers = (
            [str(s.chunks), human(s.used_bytes), human(s.free_bytes), human(s.total_bytes)]
            if s
            else ["-"] * 4
        )
        targets.add_row(
            str(t.target_id),
            t.data_address,
            "yes" if t.alive else "NO",
            chains,
            *numbers,
        )
    _console().print(targets)


def _print_chains(v: ClusterView) -> None:
    from rich.table import Table

    chains = Table("chain", "members (head first; syncing with chunks done/total)", title="chains")
    for c in sorted(v.table.chains.values(), key=lambda c: c.chain_id):
        members = [_member(v, c.chain_id, m.target_id, m.state) for m in c.members]
        chains.add_row(str(c.chain_id), "  ".join(members))
    _console().print(chains)


@click.command("status")
@directory_argument
@address_option
@config_option
def status(directory: str | None, address: str | None, config_path: str | None) -> None:
    """Show mgmtd roles, meta servers, targets and chains with their states and resyncs."""
    v = view(cluster_address(directory, address, config_path), config_path, roles=True)
    roles = ", ".join(f"{i['address']} {i['role']}" for i in v.mgmtds)
    click.echo(f"mgmtd: {roles}")
    click.echo(f"meta: {', '.join(v.metas) or '-'}")
    click.echo(f"chain table version {v.table.version}")
    _print_targets(v)
    _print_chains(v)


@click.command("targets")
@directory_argument
@address_option
@config_option
def targets(directory: str | None, address: str | None, config_path: str | None) -> None:
    """Table of storage targets: address, lease, chains, chunks and capacity."""
    _print_targets(view(cluster_address(directory, address, config_path), config_path))


@click.group("chains", invoke_without_command=True)
@address_option
@config_option
@click.pass_context
def chains(ctx: click.Context, address: str | None, config_path: str | None) -> None:
    """The live chain table with member states and resync progress; `chains plan` plans
    one for a cluster's shape."""
    if ctx.invoked_subcommand is None:
        _print_chains(view(cluster_address(None, address, config_path), config_path))


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


@click.command("df")
@directory_argument
@address_option
@config_option
def df(directory: str | None, address: str | None, config_path: str | None) -> None:
    """Capacity of the file systems holding the targets (each counted once) and the chunk
    bytes stored on them."""
    v = view(cluster_address(directory, address, config_path), config_path)
    by_fs: dict[str, list[TargetStats]] = {}
    for s in v.stats.values():
        by_fs.setdefault(s.fsid or f"target {s.target_id}", []).append(s)
    click.echo(f"{'file system':<44} {'size':>10} {'used':>10} {'avail':>10} {'use%':>5}  targets")

    def row(name: str, total: int, free: int, ids: str) -> None:
        used = total - free
        pct = f"{100 * used / total:.0f}%" if total else "-"
        click.echo(
            f"{name:<44} {human(total):>10} {human(used):>10} {human(free):>10} {pct:>5}  {ids}"
        )

    for fsid, members in sorted(by_fs.items()):
        ids = ",".join(str(s.target_id) for s in sorted(members, key=lambda s: s.target_id))
        row(fsid, members[0].total_bytes, members[0].free_bytes, ids)
    total, free = capacity(list(v.stats.values()))
    row("total", total, free, str(len(v.stats)))
    chunk_bytes = sum(s.used_bytes for s in v.stats.values())
    chunks = sum(s.chunks for s in v.stats.values())
    replicas = max((len(c.members) for c in v.table.chains.values()), default=1)
    click.echo(
        f"chunks: {chunks} holding {chunk_bytes} bytes ({human(chunk_bytes)}), about "
        f"{human(chunk_bytes / replicas)} of data at {replicas} replicas"
    )
    missing = sorted(set(v.table.targets) - set(v.stats))
    if missing:
        click.echo(f"no report yet from targets {', '.join(map(str, missing))}", err=True)


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
def fsck_command(
    directory: str | None, address: str | None, config_path: str | None, sample: float, repair: bool
) -> None:
    """Check that namespace and targets agree: checksums of every replica (or --sample),
    missing replicas, version disagreements, orphan chunks. Exit status 1 when it found an
    error (repaired ones too: run it again to confirm), 0 when clean."""
    import sys

    from fs3.cli_util import open_fs, progress
    from fs3.fsck import fsck

    fs = open_fs(cluster_address(directory, address, config_path), config_path)
    with one_line_errors("fsck"):
        report = fsck(fs, sample, repair, lambda what, n: progress(what, n, unit_bytes=False))
    for finding in report.findings:
        click.echo(finding.line())
    for line in report.repaired:
        click.echo(f"REPAIRED {line}")
    click.echo(f"fsck: {report.summary()}")
    sys.exit(1 if report.errors else 0)


COMMANDS = [status, targets, chains, df, fsck_command]
