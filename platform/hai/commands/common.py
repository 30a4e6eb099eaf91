"""What every platform command shares: finding the server and token, printing results."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from hai.config import load_config
from hai.rpc import ApiClient
from hai.spec import MAX_GPUS_PER_NODE, MAX_NODES


def log_to_stderr() -> None:
    """INFO logging to stderr for the long-running commands (server, agent, operator)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # Alembic logs each plugin and migration step at INFO as the server opens its store;
    # its warnings still show.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def state_dir_default() -> str:
    """``server.state_dir`` as the environment sets it (HAI_SERVER__STATE_DIR or HAI_STATE_DIR)."""
    return load_config().server.state_dir


def connect(state_dir: str | None = None) -> ApiClient:
    """A client for the server named by HAI_SERVER, else the one in the state folder."""
    folder = Path(state_dir or state_dir_default()).expanduser()
    address = os.environ.get("HAI_SERVER")
    if address is None:
        try:
            address = json.loads((folder / "server.json").read_text())["address"]
        except FileNotFoundError:
            raise click.ClickException(
                f"no server: set HAI_SERVER or start a local cluster with `hai up {folder}`"
            ) from None
    token = os.environ.get("HAI_TOKEN")
    if token is None and (folder / "token").exists():
        token = (folder / "token").read_text().strip()
    return ApiClient(address, token)


def call(method: str, **body: Any) -> Any:
    """Calls the server (its errors reach ``hai``'s one-line handler)."""
    client = connect()
    try:
        return client.call(method, **body)
    finally:
        client.close()


def show(rows: list[dict[str, Any]], columns: list[str], title: str, as_json: bool) -> None:
    """Rows as a rich table on a terminal, as JSON with --json or when piped."""
    if as_json or not sys.stdout.isatty():
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    Console().print(table)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")

# Ranges of the numbers commands take, so `--port 99999` or `--nodes -1` is click's one-line
# usage error before anything starts (an out-of-range port was bound modulo 65536).
PORT = click.IntRange(1, 65535)
SERVER_PORT = click.IntRange(0, 65535)
"""A port a server binds; 0 lets the system pick a free one."""
METRICS_PORT = click.IntRange(0, 65535)
"""A Prometheus port; 0 serves none."""
NODES = click.IntRange(1, MAX_NODES)
GPUS = click.IntRange(0, MAX_GPUS_PER_NODE)
ID = click.IntRange(0, 2**63 - 1)
"""A job id or rank: what the store's 64-bit INTEGER holds."""
