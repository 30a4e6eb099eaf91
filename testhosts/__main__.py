"""``python -m testhosts``: make, use and remove test hosts by hand (docs/hosts.md)."""

from __future__ import annotations

import os

import click

from testhosts.hosts import MACHINE4, Hosts, HostsError, parse_rate

_PREFIX = click.option(
    "--prefix",
    "-p",
    envvar="TESTHOSTS_PREFIX",
    help="Which instance (default: the only one on this machine).",
)


def _attach(prefix: str | None) -> Hosts:
    if prefix is not None:
        return Hosts.attach(prefix)
    found = Hosts.instances()
    if len(found) != 1:
        have = ", ".join(found) if found else "none"
        raise HostsError(f"pick the instance with --prefix (test hosts here: {have})")
    return Hosts.attach(found[0])


class _Group(click.Group):
    """Turns HostsError and ValueError into click's one-line error and exit status 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (HostsError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group)
def main() -> None:
    """Test hosts: network namespaces on this machine with addresses in 198.18.0.0/15."""


@main.command()
@click.argument("count", type=int)
@click.option("--reachable", is_flag=True, help=f"Give this machine {MACHINE4} on the bridge.")
def up(count: int, reachable: bool) -> None:
    """Make COUNT hosts; they stay until `down`."""
    hosts = Hosts.up(count, down_at_exit=False, reachable=reachable)
    click.echo(f"prefix {hosts.prefix}")
    for host in hosts:
        click.echo(f"host {host.index}  {host.name}  {host.address}  {host.address6}  {host.dir}")


@main.command()
@click.argument("prefixes", nargs=-1)
def down(prefixes: tuple[str, ...]) -> None:
    """Remove the instances PREFIXES (default: the only one), processes included."""
    for hosts in [Hosts(prefix, 0) for prefix in prefixes] or [_attach(None)]:
        hosts.down()
        click.echo(f"removed {hosts.prefix}")


@main.command(name="list")
def list_() -> None:
    """Print the instances on this machine."""
    for prefix in Hosts.instances():
        click.echo(f"{prefix}  {len(Hosts.attach(prefix))} hosts")


@main.command(context_settings={"ignore_unknown_options": True})
@_PREFIX
@click.argument("index", type=int)
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def run(prefix: str | None, index: int, argv: tuple[str, ...]) -> None:
    """Run ARGV on host INDEX (in its folder) in place of this command."""
    command = _attach(prefix).command(index, argv)
    os.execvp(command[0], command)


@main.command()
@_PREFIX
@click.argument("index", type=int)
def cut(prefix: str | None, index: int) -> None:
    """Cut host INDEX off the network; its processes keep running."""
    _attach(prefix).cut(index)


@main.command()
@_PREFIX
@click.argument("index", type=int)
def restore(prefix: str | None, index: int) -> None:
    """Connect host INDEX again after `cut`."""
    _attach(prefix).restore(index)


@main.command()
@_PREFIX
@click.argument("index", type=int)
@click.argument("rate")
@click.option("--burst", type=int, help="Token bucket size in bytes (default: 4 ms, >= 64 KiB).")
@click.option("--latency", default="50ms", show_default=True, help="Longest wait in the queue.")
def shape(prefix: str | None, index: int, rate: str, burst: int | None, latency: str) -> None:
    """Limit host INDEX's link to RATE (e.g. 20mbit, 2gbit) each way."""
    _attach(prefix).shape(index, parse_rate(rate), burst=burst, latency=latency)


@main.command()
@_PREFIX
@click.argument("index", type=int)
def unshape(prefix: str | None, index: int) -> None:
    """Take `shape`'s limit off host INDEX's link."""
    _attach(prefix).unshape(index)


if __name__ == "__main__":
    main()
