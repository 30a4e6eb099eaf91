"""The ``hai`` command line: parses options and hands each command to one core function."""

from __future__ import annotations

import json
import subprocess
import sys

import click

from fs3.cli import fs3 as fs3_commands
from hai.commands import cluster_commands, demo, job_commands, operator
from hai.doctor import collect_report, summary_rows
from hai.errors import HaiError


class _OneLineErrors(click.Group):
    """Any platform error a command lets through (a bad setting, a refused call, a port in
    use) ends it as click's one ``Error:`` line and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except HaiError as err:
            raise click.ClickException(str(err)) from None


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fireflyer", prog_name="hai")
def main() -> None:
    """HAI platform: run and inspect the Fire-Flyer stack."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor(as_json: bool) -> None:
    """Report on this machine and check the stack's hard requirements.

    Exits non-zero, with one line per problem on stderr, when a requirement is not met.
    """
    report = collect_report()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="hai doctor", show_header=False)
        for item, value in summary_rows(report):
            table.add_row(item, value)
        met = len(report.checks) - len(report.failed)
        table.add_row("requirements", f"{met} of {len(report.checks)} met")
        for check in report.failed:
            table.add_row(f"[red]{check.name}[/]", check.found)
        Console().print(table)
    for check in report.failed:
        click.echo(f"hai doctor: {check.line()}", err=True)
    sys.exit(1 if report.failed else 0)


main.add_command(fs3_commands)
for command in [demo, *job_commands, *cluster_commands, operator]:
    main.add_command(command)


@main.group()
def bench() -> None:
    """Benchmarks: each runs the peer and ours in one run and prints both with the ratio."""


def _forward_to_module(name: str, module: str, summary: str) -> None:
    """Add ``hai bench NAME [ARGS]...``, which runs ``python -m MODULE ARGS...``."""

    @bench.command(
        name,
        help=f"{summary} (python -m {module}; --help lists its options).",
        context_settings={"ignore_unknown_options": True, "help_option_names": []},
    )
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def forward(args: tuple[str, ...]) -> None:
        sys.exit(subprocess.call([sys.executable, "-m", module, *args]))


_forward_to_module("allreduce", "hfreduce.bench", "hfreduce against gloo all-reduce")
_forward_to_module("fs3", "fs3.bench", "fs3 against local disk and a gRPC data path")
_forward_to_module("scheduler", "hai.bench", "the scheduling policy on a simulated cluster")
_forward_to_module("submit", "hai.bench_submit", "submits/s through the API against a baseline")
_forward_to_module("haiscale", "haiscale.bench", "haiscale's wrappers against torch's")
_forward_to_module("model", "deepseek.bench", "our DeepSeek models against transformers'")
