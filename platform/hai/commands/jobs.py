"""Job commands: submit, run, ls, status, logs, describe, stop, suspend, resume, top."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import click

from hai.commands.common import GPUS, ID, NODES, call, json_option, show
from hai.errors import SpecError
from hai.spec import load_spec_file, parse_priority, spec_from_dict

JOB_COLUMNS = ["id", "name", "user", "state", "priority", "nodes", "group", "suspends", "message"]


def _submit(spec_dict: dict, as_json: bool) -> None:
    job = call("Submit", spec=spec_dict)
    if as_json:
        click.echo(json.dumps(job))
    else:
        click.echo(f"submitted job {job['id']} ({job['name']})")


@click.command()
@click.argument("spec_file", type=click.Path(dir_okay=False))
@json_option
def submit(spec_file: str, as_json: bool) -> None:
    """Submit the job described in SPEC_FILE (YAML)."""
    try:
        spec = load_spec_file(spec_file)
    except SpecError as err:
        raise click.ClickException(str(err)) from None
    _submit(spec.to_dict(), as_json)


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("-n", "--nodes", type=NODES, default=1, show_default=True)
@click.option(
    "-g", "--gpus", "gpus_per_node", type=GPUS, default=8, show_default=True, help="Per node."
)
@click.option("-p", "--priority", default="AUTO", show_default=True)
@click.option("--group", default="default", show_default=True)
@click.option("--name", default=None, help="Defaults to the command's first word.")
@click.option("-e", "--env", "env", multiple=True, help="NAME=VALUE, repeatable.")
@json_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    nodes: int,
    gpus_per_node: int,
    priority: str,
    group: str,
    name: str | None,
    env: tuple[str, ...],
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND as a job: hai run -n 2 -p 40 -- python train.py --lr 3e-4"""
    try:
        spec = spec_from_dict(
            {
                "name": name
                # `python train.py ...` is named after the script, anything else after itself.
                or Path(
                    command[1]
                    if Path(command[0]).name.startswith("python") and len(command) > 1
                    else command[0]
                ).stem
                or "job",
                # The entrypoint is split like a shell command; the word given stays one.
                "entrypoint": shlex.quote(command[0]),
                "arguments": list(command[1:]),
                "environment": dict(e.split("=", 1) for e in env),
                "nodes": nodes,
                "gpus_per_node": gpus_per_node,
                "priority": parse_priority(priority),
                "group": group,
            }
        )
    except (SpecError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    _submit(spec.to_dict(), as_json)


@click.command("ls")
@click.option("-a", "--all", "all_states", is_flag=True, help="Include finished jobs.")
@click.option("--mine", is_flag=True, help="Only my jobs.")
@json_option
def ls(all_states: bool, mine: bool, as_json: bool) -> None:
    """List jobs."""
    jobs = call("List", everyone=not mine, all=all_states)
    show(jobs, JOB_COLUMNS, "jobs", as_json)


@click.command()
@click.argument("job_id", type=ID)
@json_option
def status(job_id: int, as_json: bool) -> None:
    """One job's state."""
    show([call("Describe", job_id=job_id)["job"]], JOB_COLUMNS, f"job {job_id}", as_json)


@click.command()
@click.argument("job_id", type=ID)
@json_option
def describe(job_id: int, as_json: bool) -> None:
    """A job's spec, runs (its chain) and events."""
    detail = call("Describe", job_id=job_id)
    if as_json:
        click.echo(json.dumps(detail, indent=2))
        return
    show([detail["job"]], JOB_COLUMNS, f"job {job_id}", False)
    show(
        detail["runs"],
        ["id", "attempt", "state", "priority", "nodes", "exit_code", "reason"],
        "runs",
        False,
    )
    show(detail["events"], ["time", "kind", "message"], "events", False)


@click.command()
@click.argument("job_id", type=ID)
@click.option("-r", "--rank", type=ID, default=0, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job finishes.")
def logs(job_id: int, rank: int, follow: bool) -> None:
    """Print a rank's log of the job's latest run; with -f, of every run from then on."""
    offset, attempt = 0, None
    while True:
        chunk = call("Logs", job_id=job_id, rank=rank, offset=offset, attempt=attempt)
        if chunk["attempt"] is None and (chunk["finished"] or not follow):
            # Printing nothing with status 0 read as "it ran and said nothing".
            raise click.ClickException(
                f"job {job_id} never ran, so it has no log"
                if chunk["finished"]
                else f"job {job_id} has not started yet; `hai logs -f {job_id}` waits for it"
            )
        click.echo(chunk["text"], nl=False)
        offset, attempt = chunk["offset"], chunk["attempt"]
        if not follow or chunk["finished"]:
            return
        time.sleep(1.0)


def _action(method: str, verb: str) -> click.Command:
    @click.command(method.lower(), help=f"{verb.capitalize()} a job (yours, unless admin).")
    @click.argument("job_id", type=ID)
    def command(job_id: int) -> None:
        job = call(method, job_id=job_id)
        click.echo(f"job {job_id}: {job['state']}")

    return command


@click.command()
@click.option("-n", "--iterations", default=0, help="Refreshes before exiting; 0 = forever.")
@click.option("--interval", default=2.0, show_default=True)
def top(iterations: int, interval: float) -> None:
    """Live view of nodes and jobs."""
    from rich.console import Group
    from rich.live import Live
    from rich.table import Table

    def render() -> Group:
        nodes, jobs = call("Nodes"), call("List")
        nt = Table(title="nodes")
        for c in ("name", "state", "gpus", "message"):
            nt.add_column(c)
        for n in nodes:
            nt.add_row(n["name"], n["state"], str(n["gpus"]), n["message"])
        jt = Table(title="jobs")
        for c in JOB_COLUMNS:
            jt.add_column(c)
        for j in jobs:
            jt.add_row(*(str(j[c]) for c in JOB_COLUMNS))
        return Group(nt, jt)

    with Live(render(), refresh_per_second=1) as live:
        count = 1
        while iterations == 0 or count < iterations:
            time.sleep(interval)
            live.update(render())
            count += 1


job_commands = [
    submit,
    run,
    ls,
    status,
    describe,
    logs,
    top,
    _action("Stop", "stop"),
    _action("Suspend", "suspend"),
    _action("Resume", "resume"),
]
