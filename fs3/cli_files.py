"""``hai fs3`` commands on files: ls, stat, du, cat, cp, mv, rm, put, get, quota, trash.

Each parses its arguments and drives :class:`fs3.FS3FileSystem`; a failure is one line
naming the path (exit status 1). PATH is ``fs3://[HOST:PORT]/folder`` or ``/folder``; the
cluster comes from ``--address``, the URL, ``$FS3_CLUSTER`` or the config file. Copies are
fsspec's ``put``/``get``/``copy`` over the paths cp(1) would write, with a progress bar when
stderr is a terminal; the commands that read print JSON with ``--json``.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import posixpath
import stat as stat_module
import sys
import textwrap
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import click
from fsspec.callbacks import Callback
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem

from fs3.cli_util import (
    address_option,
    config_option,
    echo_json,
    human,
    json_option,
    one_line_errors,
    open_fs,
    parse_duration,
    parse_size,
    progress,
)
from fs3.types import DIRECTORY, FILE

_BLOCK = 4 << 20  # bytes per read and write of `cat`: one default chunk
_C_ESCAPES = {
    "\\": "\\\\",
    "\a": "\\a",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\v": "\\v",
    "\f": "\\f",
    "\r": "\\r",
}


def escape_name(name: str) -> str:
    """``name`` as GNU ``ls -b`` prints it: C escapes, other control characters (and line
    or paragraph separators) as octal bytes, backslash doubled, so every entry is one line
    and no name can pass for another or drive the terminal."""
    out = []
    for c in name:
        if c in _C_ESCAPES:
            out.append(_C_ESCAPES[c])
        elif unicodedata.category(c) in ("Cc", "Zl", "Zp"):
            out.append("".join(f"\\{b:03o}" for b in c.encode()))
        else:
            out.append(c)
    return "".join(out)


def _when(seconds: float) -> str:
    return f"{datetime.datetime.fromtimestamp(seconds):%Y-%m-%d %H:%M:%S}"


# -- copies: cp(1)'s destinations, fsspec's transfers ----------------------------------------
class _Bytes(Callback):
    """Moves a progress bar by the bytes each file transfer reports; ``value`` is the total.

    The bar's size is the whole copy's, set up front, so the sizes fsspec sets per file are
    kept out of it."""

    def __init__(self, advance: Callable[[float], None]) -> None:
        super().__init__()
        self._advance = advance

    def relative_update(self, inc: int = 1) -> None:
        super().relative_update(inc)
        self._advance(inc)

    def absolute_update(self, value: int) -> None:
        self._advance(value - self.value)
        super().absolute_update(value)


class _Files(Callback):
    """What ``put``/``get`` count files with: each file's transfer reports to ``bytes``."""

    def __init__(self, bytes_callback: _Bytes) -> None:
        super().__init__()
        self.bytes = bytes_callback

    def branched(self, path_1: str, path_2: str, **kwargs: Any) -> Callback:
        return self.bytes


@dataclasses.dataclass
class _Plan:
    """Source and destination paths, pair by pair (directories before what they hold), for
    fsspec's ``put``/``get``/``copy``, which copy list to list as given."""

    sources: list[str] = dataclasses.field(default_factory=list)
    targets: list[str] = dataclasses.field(default_factory=list)
    files: int = 0
    nbytes: int = 0

    def add(self, source: str, target: str, size: int | None) -> None:
        """Adds a file of ``size`` bytes, or a directory (``size`` None)."""
        self.sources.append(source)
        self.targets.append(target)
        if size is not None:
            self.files += 1
            self.nbytes += size


def _info(fs: AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """fsspec's info on ``path``, None where nothing is. Raises click.ClickException."""
    with one_line_errors(path):
        try:
            return fs.info(path)  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None


def _is_dir(info: dict[str, Any] | None) -> bool:
    return info is not None and info["type"] == "directory"  # a symlink is read through


def _plan(
    src: AbstractFileSystem,
    sources: tuple[str, ...],
    dst: AbstractFileSystem,
    target: str,
    recursive: bool,
) -> _Plan:
    """What copying ``sources`` to ``target`` copies where, as cp(1) does it.

    A source directory needs ``recursive``; the target is a directory to copy into when it
    exists as one, ends with "/" or there are several sources, else the copy's own name.
    Raises click.ClickException, one line naming the path.
    """
    into = target.endswith("/") or _is_dir(_info(dst, target))
    if len(sources) > 1 and not into:
        raise click.ClickException(f"{target}: not a directory (copying several sources)")
    target = dst._strip_protocol(target)
    plan = _Plan()
    for source in sources:
        top = src._strip_protocol(source).rstrip("/") or "/"
        info = _info(src, top)
        if info is None:
            raise click.ClickException(f"{source}: no such file or directory")
        dest = posixpath.join(target, posixpath.basename(top)) if into else target
        if not _is_dir(info):
            plan.add(top, dest, info["size"])
            continue
        if not recursive:
            raise click.ClickException(f"{source}: is a directory (use -r)")
        plan.add(top, dest, None)
        with one_line_errors(source):
            found = src.find(top, withdirs=True, detail=True)
        for name, entry in sorted(found.items()):
            if name.rstrip("/") != top:
                size = None if entry["type"] == "directory" else entry["size"]
                plan.add(name, posixpath.join(dest, posixpath.relpath(name, top)), size)
    return plan


def _transfer(
    direction: str,
    sources: tuple[str, ...],
    target: str,
    recursive: bool,
    address: str | None,
    config_path: str | None,
) -> None:
    """Copies with fsspec's ``put`` (``direction`` "put": local to fs3), ``get`` (fs3 to
    local) or ``copy`` (fs3 to fs3), each path as :func:`_plan` places it."""
    fs = open_fs(address, config_path, *sources, target)
    local = LocalFileSystem()
    src, dst = {"put": (local, fs), "get": (fs, local), "cp": (fs, fs)}[direction]
    plan = _plan(src, sources, dst, target, recursive)
    ends = {"put": "local -> fs3", "get": "fs3 -> local", "cp": "fs3 -> fs3"}[direction]
    with progress(ends, plan.nbytes or None) as advance:
        copied = _Bytes(advance)
        # The path a failure names is the one its error carries (one of many: fsspec copies
        # the whole list); the target stands for the copy where an error names none.
        with one_line_errors(target):
            if direction == "put":
                fs.put(plan.sources, plan.targets, callback=_Files(copied))
            elif direction == "get":
                fs.get(plan.sources, plan.targets, callback=_Files(copied))
            else:
                fs.copy(plan.sources, plan.targets, callback=copied)
    click.echo(f"copied {plan.files} files, {copied.value} bytes ({human(copied.value)})", err=True)


# -- commands ---------------------------------------------------------------------------------
@click.command("ls")
@click.argument("path", default="fs3:///")
@address_option
@click.option("-l", "--long", "long_format", is_flag=True, help="Sizes and modification times.")
@click.option("-R", "--recursive", is_flag=True, help="List every file below PATH.")
@config_option
@json_option
def ls(
    path: str,
    address: str | None,
    long_format: bool,
    recursive: bool,
    config_path: str | None,
    as_json: bool,
) -> None:
    """List a folder of an fs3 cluster (PATH: fs3://[HOST:PORT]/folder or /folder).

    With --json, each entry's fsspec info: name, type, size, mode, mtime, ctime, ...
    """
    with one_line_errors(path):
        fs = open_fs(address, config_path, path)
        stripped = fs._strip_protocol(path)
        top = fs.info(stripped)
        entries: Iterable[dict[str, Any]] = [top]
        if top["type"] == "directory":
            # A page of meta's listing at a time: a huge folder streams to the output. One
            # folder comes sorted; a tree is sorted whole, by path.
            found = (fs._info(p, inode) for p, inode in _below(fs, stripped, recursive))
            entries = sorted(found, key=lambda e: e["name"]) if recursive else found
        if as_json:
            _echo_json_list(entries)
            return
        for entry in entries:
            name = escape_name(entry["name"]) + ("/" if entry["type"] == "directory" else "")
            if long_format:
                click.echo(f"{entry['size']:>12} {_when(entry.get('mtime') or 0)} {name}")
            else:
                click.echo(name)


def _below(fs: Any, top: str, recursive: bool) -> Iterator[tuple[str, Any]]:
    """(path, inode) of the entries of folder ``top``, or with ``recursive`` of its whole
    tree, read a page at a time."""
    if recursive:
        yield from fs.meta.walk(top)
        return
    base = top.rstrip("/")
    for entry in fs.meta.iter_listdir(top):
        yield f"{base}/{entry.name}", entry.inode


def _echo_json_list(items: Iterable[Any]) -> None:
    """Prints ``items`` as :func:`echo_json` prints a list, one item at a time."""
    first = True
    for item in items:
        body = textwrap.indent(json.dumps(item, indent=2), "  ")
        click.echo(("[\n" if first else ",\n") + body, nl=False)
        first = False
    click.echo("[]" if first else "\n]")


@click.command("stat")
@click.argument("paths", nargs=-1, required=True)
@address_option
@config_option
@json_option
def stat(
    paths: tuple[str, ...], address: str | None, config_path: str | None, as_json: bool
) -> None:
    """Show everything meta knows of each PATH: kind, size, mode, times, layout, quota.

    With --json, a list of each PATH's inode (fs3.types.Inode's fields) with its "path".
    """
    fs = open_fs(address, config_path, *paths)
    inodes = []
    for path in paths:
        with one_line_errors(path):
            inodes.append((fs._strip_protocol(path), fs.meta.stat(fs._strip_protocol(path))))
    if as_json:
        echo_json([{"path": path, **dataclasses.asdict(inode)} for path, inode in inodes])
        return
    for path, inode in inodes:
        kind_bits = {"file": stat_module.S_IFREG, "directory": stat_module.S_IFDIR}
        mode = stat_module.filemode(kind_bits.get(inode.kind, stat_module.S_IFLNK) | inode.mode)
        lines = [
            ("path", path),
            ("type", inode.kind),
            ("size", f"{inode.length} ({human(inode.length)})"),
            ("mode", f"{inode.mode:04o} ({mode})"),
            ("inode", str(inode.id)),
            ("modified", _when(inode.mtime)),
            ("accessed", _when(inode.atime or inode.mtime)),
            ("changed", _when(inode.ctime)),
        ]
        lay = inode.layout
        if lay.chains:
            chains = ",".join(map(str, lay.chains))
            lines.append(
                ("layout", f"{lay.chunk_size}-byte chunks over chains {chains} (seed {lay.seed})")
            )
        if inode.target and inode.kind == "symlink":
            lines.append(("target", inode.target))
        if inode.quota is not None:
            lines.append(("quota", _quota_line(inode.quota)))
        for key, value in lines:
            click.echo(f"{key:>9}: {value}")
        if len(paths) > 1:
            click.echo()


@click.command("du")
@click.argument("paths", nargs=-1, required=True)
@click.option("-h", "--human", "human_sizes", is_flag=True, help="Sizes in KiB/MiB/GiB.")
@address_option
@config_option
@json_option
def du(
    paths: tuple[str, ...],
    human_sizes: bool,
    address: str | None,
    config_path: str | None,
    as_json: bool,
) -> None:
    """Bytes (file lengths), files and directories below each PATH.

    With --json, a list of {"path", "bytes", "files", "dirs"}.
    """
    fs = open_fs(address, config_path, *paths)
    usage = []
    for path in paths:
        size = nfiles = ndirs = 0
        with one_line_errors(path):
            stripped = fs._strip_protocol(path)
            top = fs.meta.stat(stripped)
            below = fs.meta.walk(stripped) if top.kind == DIRECTORY else [(stripped, top)]
            for _, inode in below:  # counted as the pages come: a huge tree is never held
                ndirs += inode.kind == DIRECTORY
                nfiles += inode.kind != DIRECTORY
                size += inode.length if inode.kind == FILE else 0
        usage.append({"path": stripped, "bytes": size, "files": nfiles, "dirs": ndirs})
    if as_json:
        echo_json(usage)
        return
    for u in usage:
        shown = human(u["bytes"]) if human_sizes else str(u["bytes"])
        click.echo(f"{shown}\t{u['files']} files\t{u['dirs']} dirs\t{escape_name(u['path'])}")


@click.command("cat")
@click.argument("paths", nargs=-1, required=True)
@address_option
@config_option
def cat(paths: tuple[str, ...], address: str | None, config_path: str | None) -> None:
    """Write the bytes of each PATH to stdout."""
    fs = open_fs(address, config_path, *paths)
    out = sys.stdout.buffer
    for path in paths:
        with one_line_errors(path), fs.open(fs._strip_protocol(path), "rb") as f:
            while block := f.read(_BLOCK):
                out.write(block)
    out.flush()


_recursive = click.option("-r", "-R", "--recursive", is_flag=True, help="Copy directories.")


@click.command("put")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True))
@click.argument("target")
@_recursive
@address_option
@config_option
def put(
    sources: tuple[str, ...],
    target: str,
    recursive: bool,
    address: str | None,
    config_path: str | None,
) -> None:
    """Copy local files (directories with -r) to TARGET in fs3."""
    _transfer("put", sources, target, recursive, address, config_path)


@click.command("get")
@click.argument("sources", nargs=-1, required=True)
@click.argument("target", type=click.Path())
@_recursive
@address_option
@config_option
def get(
    sources: tuple[str, ...],
    target: str,
    recursive: bool,
    address: str | None,
    config_path: str | None,
) -> None:
    """Copy fs3 files (directories with -r) to TARGET on this machine."""
    _transfer("get", sources, target, recursive, address, config_path)


@click.command("cp")
@click.argument("sources", nargs=-1, required=True)
@click.argument("target")
@_recursive
@address_option
@config_option
def cp(
    sources: tuple[str, ...],
    target: str,
    recursive: bool,
    address: str | None,
    config_path: str | None,
) -> None:
    """Copy files (directories with -r) within fs3."""
    _transfer("cp", sources, target, recursive, address, config_path)


@click.command("mv")
@click.argument("sources", nargs=-1, required=True)
@click.argument("target")
@address_option
@config_option
def mv(sources: tuple[str, ...], target: str, address: str | None, config_path: str | None) -> None:
    """Move (rename) files and directories within fs3; each move is one atomic rename."""
    fs = open_fs(address, config_path, *sources, target)
    target = fs._strip_protocol(target)
    into = _is_dir(_info(fs, target))
    if len(sources) > 1 and not into:
        raise click.ClickException(f"{target}: not a directory (moving several sources)")
    for source in sources:
        with one_line_errors(source):
            name = posixpath.basename(fs._strip_protocol(source).rstrip("/"))
            fs.rename(source, posixpath.join(target, name) if into else target)


@click.command("rm")
@click.argument("paths", nargs=-1, required=True)
@click.option("-r", "-R", "--recursive", is_flag=True, help="Remove directories and their trees.")
@click.option(
    "--expire",
    default=None,
    metavar="DURATION",
    help="Move to the trash instead, restorable for DURATION (30m, 12h, 1d, 1w), then deleted.",
)
@address_option
@config_option
def rm(
    paths: tuple[str, ...],
    recursive: bool,
    expire: str | None,
    address: str | None,
    config_path: str | None,
) -> None:
    """Remove files (directories with -r), or move them to the trash with --expire."""
    seconds = parse_duration(expire) if expire is not None else None
    fs = open_fs(address, config_path, *paths)
    stripped = [fs._strip_protocol(path) for path in paths]
    for path in stripped:  # all checked first: a refused path leaves every path in place
        with one_line_errors(path):
            is_dir = fs.info(path)["type"] == "directory"
        if is_dir and not recursive:
            raise click.ClickException(f"{path}: is a directory (use -r)")
    if seconds is None:
        with one_line_errors():
            fs.remove(stripped, recursive)  # a tree in one meta transaction, whole or not
        return
    for path in stripped:
        with one_line_errors(path):
            entry = fs.trash(path, seconds)
        until = _when(entry.expires)
        restore = f"hai fs3 trash restore {entry.name}"
        click.echo(
            f"{path}: in the trash as {entry.name} until {until}; `{restore}` brings it back",
            err=True,
        )


def _quota_line(q: Any) -> str:
    def part(used: int, limit: int, what: str, fmt: Callable[[int], str]) -> str:
        if not limit:
            return f"{what} {used} ({fmt(used)}), no limit"
        return f"{what} {used} of {limit} ({fmt(used)} of {fmt(limit)}, {100 * used / limit:.0f}%)"

    return "; ".join(
        (
            part(q.used_bytes, q.max_bytes, "bytes", human),
            part(q.used_inodes, q.max_inodes, "inodes", str),
        )
    )


def _quota_report(path: str, q: Any) -> str:
    return f"{path}: {_quota_line(q)}" if q else f"{path}: no quota"


@click.group("quota")
def quota() -> None:
    """Directory quotas: bytes and inodes below a directory (EDQUOT past a limit)."""


@quota.command("set")
@click.argument("path")
@click.option(
    "--bytes",
    "max_bytes",
    default=None,
    metavar="SIZE",
    help="Limit of the file bytes below PATH (512M, 10G, 1T; 0 removes it).",
)
@click.option(
    "--inodes",
    "max_inodes",
    type=int,
    default=None,
    help="Limit of files, directories, symlinks below PATH (0 removes it).",
)
@address_option
@config_option
def quota_set(
    path: str,
    max_bytes: str | None,
    max_inodes: int | None,
    address: str | None,
    config_path: str | None,
) -> None:
    """Set (or change) the quota of directory PATH; limits not given stay as they were."""
    if max_bytes is None and max_inodes is None:
        raise click.UsageError("give --bytes and/or --inodes")
    limit = parse_size(max_bytes) if max_bytes is not None else None
    fs = open_fs(address, config_path, path)
    with one_line_errors(path):
        q = fs.set_quota(path, limit, max_inodes)
    stripped = fs._strip_protocol(path)
    click.echo(_quota_report(stripped, q))


@quota.command("show")
@click.argument("paths", nargs=-1, required=True)
@address_option
@config_option
@json_option
def quota_show(
    paths: tuple[str, ...], address: str | None, config_path: str | None, as_json: bool
) -> None:
    """Show the limits and usage of each directory PATH.

    With --json, a list of {"path", "quota"}: max_bytes, max_inodes, used_bytes,
    used_inodes (a limit of 0 is none), or null where PATH has no quota.
    """
    fs = open_fs(address, config_path, *paths)
    quotas = []
    for path in paths:
        with one_line_errors(path):
            quotas.append({"path": fs._strip_protocol(path), "quota": fs.quota(path)})
    if as_json:
        echo_json(quotas)
        return
    for q in quotas:
        click.echo(_quota_report(q["path"], q["quota"]))


@click.group("trash")
def trash() -> None:
    """Trees removed with `rm --expire`: list and restore them until they expire."""


@trash.command("ls")
@address_option
@config_option
@json_option
def trash_ls(address: str | None, config_path: str | None, as_json: bool) -> None:
    """List the trash, soonest to expire first.

    With --json, a list of its entries: name, path, deleted, expires (seconds since the
    epoch) and the top inode.
    """
    fs = open_fs(address, config_path)
    with one_line_errors("trash"):
        entries = fs.trash_list()
    if as_json:
        echo_json(entries)
        return
    for e in entries:
        size = f"{e.inode.length}" if e.inode.kind == "file" else "dir"
        click.echo(
            f"{e.name}  {_when(e.deleted)}  {_when(e.expires)}  {size:>10}  {escape_name(e.path)}"
        )
    if not entries:
        click.echo("the trash is empty", err=True)


@trash.command("restore")
@click.argument("names", nargs=-1, required=True)
@click.option("--to", "to", default=None, help="Restore here instead of the original path.")
@address_option
@config_option
def trash_restore(
    names: tuple[str, ...], to: str | None, address: str | None, config_path: str | None
) -> None:
    """Move trash entries NAME (see `trash ls`) back where they were."""
    if to and len(names) > 1:
        raise click.UsageError("--to takes one entry")
    fs = open_fs(address, config_path)
    for name in names:
        with one_line_errors(name):
            back = fs.restore(name, to)
        click.echo(f"{name}: restored to {back}", err=True)


COMMANDS = [ls, stat, du, cat, put, get, cp, mv, rm, quota, trash]
