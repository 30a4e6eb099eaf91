"""What the ``hai fs3`` commands share: options, opening the cluster, one-line errors, JSON
output, sizes and durations on the command line, and progress bars on a terminal."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from fs3.errors import Fs3Error

F = TypeVar("F", bound=Callable[..., Any])

PORT = click.IntRange(0, 65535)
"""A port a service binds (0: the system picks a free one): click refuses 99999 in one line,
which the socket layer would otherwise bind modulo 65536 or fail on with a traceback."""

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="fs3 YAML config file (default: $FS3_CONFIG or ~/.config/fs3/config.yaml).",
)


class AliasedOption(click.Option):
    """An option that still answers to old spellings (``aliases``), which ``--help`` leaves
    out: scripts written against the old name keep working, new users see one name."""

    def __init__(self, *args: Any, aliases: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.aliases = aliases

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        spellings = self.opts
        self.opts = [o for o in spellings if o not in self.aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = spellings


def mgmtd_address_option(fallback: str) -> Callable[[F], F]:
    """``--address HOST:PORT[,HOST:PORT]``: the cluster's mgmtd, the one name every ``hai
    fs3`` command that talks to a cluster gives it (``--cluster``, the mount's old name, is
    a hidden alias). ``fallback`` says where the address comes from when it is not given."""
    return click.option(
        "--address",
        "--cluster",
        "address",
        cls=AliasedOption,
        aliases=("--cluster",),
        default=None,
        help=f"mgmtd HOST:PORT[,HOST:PORT] (default: {fallback}).",
    )


address_option = mgmtd_address_option("from an fs3:// URL, $FS3_CLUSTER, the config")
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for scripts instead of text."
)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def echo_json(data: Any) -> None:
    """Prints ``data`` as indented JSON on stdout: what ``--json`` prints. Dataclasses
    become objects with their field names (tuples become lists)."""
    click.echo(json.dumps(data, indent=2, default=_plain))


def open_fs(address: str | None, config_path: str | None, *urls: str) -> Any:
    """An :class:`fs3.FS3FileSystem` for ``address``, else the first ``fs3://HOST:PORT/``
    URL among ``urls``, else ``$FS3_CLUSTER`` / the config file."""
    from fs3.client import FS3FileSystem

    for url in urls:
        address = address or FS3FileSystem._get_kwargs_from_urls(url).get("address")
    with one_line_errors("fs3 cluster"):
        return FS3FileSystem(address=address, config_path=config_path, skip_instance_cache=True)


def describe(err: BaseException, what: str) -> str:
    """One line: the path the error names (else ``what``) and what went wrong."""
    if isinstance(err, OSError) and err.filename:
        return f"{err.filename}: {err.strerror or err}"
    message = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return f"{what}: {message}" if what else message


def echo_stopped(stopped: list[str], refused: list[str], nothing: str) -> None:
    """What a ``down`` stopped (else ``nothing``) on stdout; what it could not stop, one
    ``Error:`` line each on stderr, then exit status 1."""
    if stopped or not refused:
        click.echo(f"stopped {', '.join(stopped)}" if stopped else nothing)
    for line in refused:
        click.echo(f"Error: {line}", err=True)
    if refused:
        raise click.exceptions.Exit(1)


@contextmanager
def one_line_errors(what: str = "") -> Iterator[None]:
    """Turns an fs3 or OS error into ``click.ClickException`` (exit status 1) of one line
    naming the path."""
    try:
        yield
    except (Fs3Error, OSError) as err:
        raise click.ClickException(describe(err, what)) from None


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str) -> int:
    """``"1500"``, ``"64K"``, ``"1.5GiB"``, ``"2TB"`` -> bytes (binary units: K = 1024).
    Raises click.BadParameter."""
    m = _SIZE.match(text)
    if m is None:
        raise click.BadParameter(f"{text!r} is not a size like 1048576, 512K, 10G or 1.5TiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_duration(text: str) -> float:
    """``"90"``, ``"30s"``, ``"15m"``, ``"2h"``, ``"1d"``, ``"1w"`` -> seconds."""
    m = _DURATION.match(text)
    if m is None or float(m.group(1)) <= 0:
        raise click.BadParameter(f"{text!r} is not a duration like 30s, 15m, 2h, 1d or 1w")
    return float(m.group(1)) * _SECONDS[m.group(2).lower()]


def human(n: float) -> str:
    """Bytes as ``"1.5 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@contextmanager
def progress(
    description: str, total: float | None, unit_bytes: bool = True
) -> Iterator[Callable[[float], None]]:
    """Yields ``advance(n)``; on a terminal (stderr) a rich progress bar shows it, elsewhere
    nothing does."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns: list[Any] = [TextColumn("{task.description}"), BarColumn()]
    columns += (
        [DownloadColumn(binary_units=True), TransferSpeedColumn()]
        if unit_bytes
        else [MofNCompleteColumn()]
    )
    columns.append(TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
