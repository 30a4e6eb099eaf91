"""Cluster commands: up, down, server, agent, nodes, drain, quota, users, whoami."""

from __future__ import annotations

import os
from pathlib import Path

import click

from fs3.cli_util import echo_stopped
from hai.commands.common import (
    GPUS,
    METRICS_PORT,
    NODES,
    PORT,
    SERVER_PORT,
    call,
    json_option,
    log_to_stderr,
    show,
    state_dir_default,
)
from hai.config import load_config
from hai.spec import AUTO, MAX_NODES, parse_priority


@click.command()
@click.option("--nodes", type=NODES, default=2, show_default=True)
@click.option("--gpus-per-node", type=GPUS, default=8, show_default=True)
@click.option("--port", type=PORT, default=7700, show_default=True)
@click.option(
    "--metrics-port",
    type=METRICS_PORT,
    default=0,
    help="Serve Prometheus metrics: the server on this port, agent i on port + 1 + i.",
)
@click.argument("state_dir", required=False)
def up(nodes: int, gpus_per_node: int, port: int, metrics_port: int, state_dir: str | None):
    """Start a local cluster: the scheduler/API server and NODES agents."""
    from hai.cluster import PROMETHEUS_TARGETS
    from hai.cluster import up as start

    info = start(
        Path(state_dir or state_dir_default()),
        nodes,
        gpus_per_node,
        port,
        metrics_port=metrics_port,
    )
    click.echo(f"hai cluster up: server {info.address}, {nodes} nodes, state in {info.state_dir}")
    if info.metrics_ports:
        ports = ", ".join(f"{name} :{port}" for name, port in info.metrics_ports.items())
        click.echo(f"metrics: {ports} (targets in {info.state_dir}/{PROMETHEUS_TARGETS})")
    click.echo(f"export HAI_STATE_DIR={info.state_dir}")


@click.command()
@click.argument("state_dir", required=False)
def down(state_dir: str | None) -> None:
    """Stop the server and agents running on the state folder, however they were started."""
    from hai.cluster import NotStopped
    from hai.cluster import down as stop

    folder = Path(state_dir or state_dir_default()).expanduser().resolve()
    try:
        stopped, refused = stop(folder), []
    except NotStopped as err:
        stopped, refused = err.stopped, err.refused
    echo_stopped(stopped, refused, f"no cluster running in {folder}")


@click.command()
@click.option("--state-dir", default=None)
@click.option(
    "--host",
    default=None,
    help="Address to listen on, one agents and users reach [default: 127.0.0.1].",
)
@click.option("--port", type=SERVER_PORT, default=None)
@click.option("--metrics-port", type=METRICS_PORT, default=None, help="Prometheus port (0: off).")
@click.option("--config", "config_path", default=None, help="YAML config file.")
def server(
    state_dir: str | None,
    host: str | None,
    port: int | None,
    metrics_port: int | None,
    config_path: str | None,
) -> None:
    """Run the scheduler and API server in the foreground."""
    from hai.daemons import run_server

    log_to_stderr()
    given = {"host": host, "port": port, "metrics_port": metrics_port}
    overrides = {"server": {k: v for k, v in given.items() if v is not None}}
    config = load_config(config_path, overrides=overrides)
    run_server(config, Path(state_dir or config.server.state_dir).expanduser())


@click.command()
@click.option("--name", required=True)
@click.option("--server", "address", required=True, help="host:port of the hai server.")
@click.option("--state-dir", default=None)
@click.option("--gpus", type=GPUS, default=None, help="GPUs to report [default: 0, or as found].")
@click.option("--group", default=None, help="Node pool [default: default, or the node label].")
@click.option("--metrics-port", type=METRICS_PORT, default=None, help="Prometheus port (0: off).")
@click.option("--config", "config_path", default=None)
@click.option(
    "--kubernetes",
    "on_kubernetes",
    is_flag=True,
    help="Run ranks as pods on Kubernetes node NAME (the agent DaemonSet; docs/kubernetes.md).",
)
@click.option(
    "--address",
    "node_address",
    default=None,
    help="This node's address as other nodes' ranks reach it (MASTER_ADDR) "
    "[default: the source address of its route to the server].",
)
def agent(
    name: str,
    address: str,
    state_dir: str | None,
    gpus: int | None,
    group: str | None,
    metrics_port: int | None,
    config_path: str | None,
    on_kubernetes: bool,
    node_address: str | None,
) -> None:
    """Run a node agent in the foreground."""
    from hai.daemons import AgentOptions, run_agent

    log_to_stderr()
    overrides = {"agent": {"metrics_port": metrics_port}} if metrics_port is not None else {}
    config = load_config(config_path, overrides=overrides)
    folder = Path(state_dir or state_dir_default()).expanduser()
    options = AgentOptions(name, address, folder, gpus, group, on_kubernetes, node_address)
    run_agent(config, options)


@click.group(invoke_without_command=True)
@json_option
@click.pass_context
def nodes(ctx: click.Context, as_json: bool) -> None:
    """List nodes and their state; add and rm give and take nodes' credentials."""
    if ctx.invoked_subcommand is None:
        columns = ["name", "group", "state", "gpus", "cpus", "message"]
        show(call("Nodes"), columns, "nodes", as_json)


@nodes.command("add")
@click.argument("name")
def add_node(name: str) -> None:
    """Print a join token for node NAME (admin): its agent's credential, shown once."""
    issued = call("AddNode", name=name)
    click.echo(issued["token"])
    if issued["replaced"]:
        click.echo(f"{name}'s earlier credential is revoked: its agent needs this one", err=True)
    click.echo(
        f"on {name}: HAI_NODE_TOKEN=<the token> hai agent --name {name} --server HOST:PORT, "
        f"or keep it (mode 0600) in STATE_DIR/nodes/{name}.token for `hai agent`",
        err=True,
    )


@nodes.command("rm")
@click.argument("name")
def remove_node(name: str) -> None:
    """Revoke node NAME's credential and remove it (admin); its runs end as on a dead node."""
    gone = call("RemoveNode", name=name)
    if not gone["registered"]:
        click.echo(f"{name} never registered; its credential is revoked")
        return
    revoked = "its credential revoked" if gone["revoked"] else "it had no credential"
    click.echo(f"{name} removed, {revoked}; an agent still running there stops its ranks and exits")
    for job, state in gone["jobs"].items():
        click.echo(f"job {job} lost its run on {name}, as when a node dies: now {state}")


@click.command()
@click.argument("node")
@click.option("--undo", is_flag=True, help="Make the node schedulable again.")
def drain(node: str, undo: bool) -> None:
    """Give NODE no new work (admin)."""
    click.echo(f"{node}: {call('Drain', node=node, drained=not undo)['state']}")


def _quota_level(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """A quota's priority: a level or its name; AUTO picks a level per job, so has no quota."""
    try:
        level = parse_priority(value)
    except ValueError:
        level = AUTO
    if level == AUTO:
        raise click.BadParameter(
            f"must be one of 50, 40, 30, 20, 10 or HIGHEST, VERY_HIGH, HIGH, ABOVE_NORMAL, "
            f"NORMAL, got {value!r}"
        )
    return level


@click.command()
@click.argument("user")
@click.argument("priority", callback=_quota_level)
@click.argument("nodes", type=click.IntRange(0, MAX_NODES))
@click.option("--group", default="default", show_default=True)
def quota(user: str, priority: int, nodes: int, group: str) -> None:
    """Set USER's node quota at PRIORITY (50..10 or a name) in a group (admin)."""
    call("SetQuota", user=user, priority=priority, nodes=nodes, group=group)
    click.echo(f"{user} may use {nodes} nodes at priority {priority} in {group}")


@click.group()
def users() -> None:
    """Users and tokens."""


@users.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True)
def add_user(name: str, admin: bool) -> None:
    """Add a user and print their token (admin)."""
    click.echo(call("AddUser", name=name, role="admin" if admin else "user"))


@users.command("ls")
@json_option
def list_users(as_json: bool) -> None:
    """List users and their roles (admin)."""
    show(call("Users"), ["name", "role"], "users", as_json)


@users.command("rm")
@click.argument("name")
def remove_user(name: str) -> None:
    """Remove user NAME (admin); their token stops working, their jobs stay."""
    gone = call("RemoveUser", name=name)
    click.echo(f"removed {gone['name']} ({gone['role']}); their token no longer works")


@users.command("rotate")
@click.argument("name", required=False)
def rotate_token(name: str | None) -> None:
    """Print a new token for NAME (yourself by default; admins may name anyone), shown once.

    The old token stops working at once. Your own token, when it came from the state
    folder's token file, is replaced there too."""
    from hai.files import replace_text
    from hai.server import TOKEN_FILE

    new = call("RotateToken", name=name)
    click.echo(new["token"])
    held = Path(state_dir_default()).expanduser() / TOKEN_FILE
    if name is None and "HAI_TOKEN" not in os.environ and held.exists():
        replace_text(held, new["token"] + "\n")
        click.echo(f"{new['name']}'s old token no longer works; {held} holds the new one", err=True)
    else:
        click.echo(f"{new['name']}'s old token no longer works", err=True)


@click.command()
def whoami() -> None:
    """Who the token belongs to."""
    me = call("WhoAmI")
    click.echo(f"{me['name']} ({me['role']})")


cluster_commands = [up, down, server, agent, nodes, drain, quota, users, whoami]
