"""``hai demo``: the main job, one command that exercises the whole stack."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hai.commands.common import GPUS, NODES, PORT

DEFAULT_DIR = "hai-demo"


@click.command()
@click.option("--steps", default=120, show_default=True, help="Steps of the training job.")
@click.option("--nodes", type=NODES, default=2, show_default=True, help="Virtual nodes.")
@click.option("--gpus-per-node", type=GPUS, default=2, show_default=True, help="Ranks per node.")
@click.option("--port", type=PORT, default=None, help="Platform server port (default: a free one).")
@click.option("--keep", is_flag=True, help="Leave the clusters running for hai ls/logs/fs3 ls.")
@click.option("--down", "down_only", is_flag=True, help="Stop the clusters a --keep demo left.")
@click.option(
    "--hosts",
    is_flag=True,
    help="Run each service on a test host of its own and cut a storage host off midway "
    "(root; docs/hosts.md).",
)
@click.argument("state_dir", default=DEFAULT_DIR, required=False)
def demo(
    steps: int,
    nodes: int,
    gpus_per_node: int,
    port: int | None,
    keep: bool,
    down_only: bool,
    hosts: bool,
    state_dir: str,
) -> None:
    """Train a tiny DeepSeek-V3 on a local cluster, with a preemption and a resume.

    Starts fs3 (3 targets, 3 replicas) and the platform (NODES x GPUS_PER_NODE ranks) under
    STATE_DIR, trains with haiscale DDP over hfreduce on data and checkpoints in fs3, has
    an urgent job preempt it midway, and prints a summary beside a loss-curve picture.
    """
    from hai.demo import DemoError, DemoOptions, run_demo, stop

    root = Path(state_dir)
    if down_only:
        stopped = stop(root)
        click.echo(f"stopped {', '.join(stopped)}" if stopped else f"nothing running in {root}")
        return
    try:
        run_demo(root, DemoOptions(steps=steps), nodes, gpus_per_node, port, keep, hosts=hosts)
    except DemoError as err:
        raise click.ClickException(str(err)) from None
    except KeyboardInterrupt:
        click.echo("hai demo: interrupted; every process it started is stopped", err=True)
        sys.exit(130)
