"""``hai fs3 users``: an admin manages the accounts meta checks permissions for
(:mod:`fs3.meta.users`). Tokens are printed once, on stdout alone, so a script can keep
them; meta stores only their SHA-256."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from fs3.cli_util import address_option, config_option, echo_json, json_option, one_line_errors
from fs3.cli_util import open_fs as _open_fs
from fs3.types import User

if TYPE_CHECKING:
    from fs3.client.meta import MetaClient


def _meta(address: str | None, config_path: str | None) -> MetaClient:
    return _open_fs(address, config_path).meta


def _groups(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(g) for g in text.split(",") if g.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: give gids separated by commas") from None


@click.group("users")
def users() -> None:
    """fs3 accounts: uid, gid, groups and a token each (admin only)."""


@users.command("add")
@click.argument("name")
@click.option("--uid", type=click.IntRange(0, 2**32 - 1), required=True, help="Owner id.")
@click.option("--gid", type=click.IntRange(0, 2**32 - 1), required=True, help="Group id.")
@click.option("--groups", default="", help="Supplementary gids, comma-separated.")
@click.option("--admin", is_flag=True, help="Bypasses permissions and manages users (root).")
@click.option("--mount", is_flag=True, help="May act for any uid: a FUSE mount's token.")
@address_option
@config_option
def add(
    name: str,
    uid: int,
    gid: int,
    groups: str,
    admin: bool,
    mount: bool,
    address: str | None,
    config_path: str | None,
) -> None:
    """Add user NAME and print its token (shown this once)."""
    user = User(name, uid, gid, _groups(groups), admin, mount)
    with one_line_errors(name):
        token = _meta(address, config_path).add_user(user)
    click.echo(token)


@users.command("ls")
@address_option
@config_option
@json_option
def ls(address: str | None, config_path: str | None, as_json: bool) -> None:
    """List users (never their tokens)."""
    with one_line_errors("users"):
        found = _meta(address, config_path).list_users()
    if as_json:
        echo_json([{k: v for k, v in vars(u).items() if k != "token_hash"} for u in found])
        return
    for u in found:
        flags = ",".join(f for f, on in (("admin", u.admin), ("mount", u.mount)) if on)
        groups = ",".join(map(str, u.groups)) or "-"
        click.echo(f"{u.name}\tuid={u.uid}\tgid={u.gid}\tgroups={groups}\t{flags or '-'}")


@users.command("rm")
@click.argument("names", nargs=-1, required=True)
@address_option
@config_option
def rm(names: tuple[str, ...], address: str | None, config_path: str | None) -> None:
    """Remove users; their tokens stop working (their files keep their uid)."""
    meta = _meta(address, config_path)
    for name in names:
        with one_line_errors(name):
            meta.remove_user(name)
        click.echo(f"{name}: removed", err=True)


@users.command("rotate")
@click.argument("name")
@address_option
@config_option
def rotate(name: str, address: str | None, config_path: str | None) -> None:
    """Give NAME a new token and print it; the old one stops working."""
    with one_line_errors(name):
        token = _meta(address, config_path).rotate_user(name)
    click.echo(token)


COMMANDS = [users]
