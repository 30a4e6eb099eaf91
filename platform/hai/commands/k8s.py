"""``hai operator``: the HaiJob operator, and the fs3 chain-state exporter beside it."""

from __future__ import annotations

import os

import click

from hai.commands.common import PORT, connect, log_to_stderr
from hai.config import load_config
from hai.rpc import ApiClient


@click.group(invoke_without_command=True)
@click.option("--server", "address", default=None, help="host:port of the hai server.")
@click.option(
    "-n", "--namespace", "namespaces", multiple=True, help="Watch only these (default: all)."
)
@click.option(
    "--liveness", default=None, help="kopf health endpoint, e.g. http://0.0.0.0:8080/healthz"
)
@click.option("--config", "config_path", default=None, help="YAML config file (group k8s).")
@click.pass_context
def operator(
    ctx: click.Context,
    address: str | None,
    namespaces: tuple[str, ...],
    liveness: str | None,
    config_path: str | None,
) -> None:
    """Run the HaiJob operator: HaiJobs become scheduler jobs, their status follows.

    The token is HAI_TOKEN (or the state folder's); the server HAI_SERVER or --server.
    """
    if ctx.invoked_subcommand is not None:
        return
    from hai.k8s.kube import core_api, require_k8s

    log_to_stderr()
    config = load_config(config_path)
    require_k8s("hai operator", "kubernetes", "kopf")
    core = core_api(config.k8s)
    from hai.k8s import operator as haijob_operator

    client = connect() if address is None else ApiClient(address, os.environ.get("HAI_TOKEN"))
    try:
        haijob_operator.run(client.call, core, config.k8s, namespaces, liveness)
    finally:
        client.close()


@operator.command("fs3-exporter")
@click.option("--mgmtd", required=True, help="mgmtd HOST:PORT.")
@click.option("--port", type=PORT, default=9402, show_default=True, help="Prometheus port.")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--interval", default=15.0, show_default=True, help="Seconds between reads.")
def fs3_exporter(mgmtd: str, port: int, host: str, interval: float) -> None:
    """Serve fs3's targets and chain states as Prometheus metrics (a mgmtd sidecar).

    mgmtd's TLS settings come from the fs3 config (FS3_CONFIG, FS3_TLS__*)."""
    from fs3.cli_util import one_line_errors
    from fs3.config import load_config as load_fs3_config
    from hai.k8s.fs3_metrics import serve

    with one_line_errors("hai operator fs3-exporter"):
        tls = load_fs3_config().tls
    log_to_stderr()
    serve(mgmtd, port, host, interval, tls)
