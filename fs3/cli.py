"""``hai fs3 ...`` commands: each parses options and calls one function.

Service commands (``mgmtd``, ``meta``, ``storage``) are also the container entry points;
``up``/``down`` manage a local development cluster. The commands on files (ls,
cp, rm, quota, trash, ...) live in :mod:`fs3.cli_files`, those on the cluster (status,
targets, chains, df, fsck) in :mod:`fs3.cli_admin`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import click

from fs3 import cli_admin, cli_files, cli_users
from fs3.cli_util import PORT, echo_stopped, mgmtd_address_option, one_line_errors
from fs3.cli_util import config_option as _config_option
from fs3.config import Fs3Config, load_config
from fs3.fuse.options import MountOptions

_host_option = click.option("--host", default="127.0.0.1", show_default=True)


_tls_cert_option = click.option(
    "--tls-cert", help="This server's TLS certificate, PEM (default: tls.cert_file)."
)
_tls_key_option = click.option("--tls-key", help="Its private key, PEM (default: tls.key_file).")


def _serve(
    name: str, config_path: str | None, tls_cert: str | None, tls_key: str | None
) -> tuple[Fs3Config, threading.Event]:
    """Loads config (``--tls-cert``/``--tls-key`` over the file's tls group), sets up logging
    and makes SIGTERM/SIGINT set the returned stop event."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    tls = {k: v for k, v in (("cert_file", tls_cert), ("key_file", tls_key)) if v}
    return load_config(config_path, overrides={"tls": tls}), stop


@click.group("fs3", context_settings={"help_option_names": ["-h", "--help"]})
def fs3() -> None:
    """fs3: the chunk file system (cluster manager, metadata, storage)."""


@fs3.command()
@_config_option
@_host_option
@click.option("--port", type=PORT, required=True)
@click.option("--state", type=click.Path(file_okay=False), required=True)
@click.option("--targets", required=True, help="Comma-separated storage target ids.")
@click.option("--replicas", type=int, default=3, show_default=True)
@click.option(
    "--db",
    default=None,
    help="State shared by the cluster's mgmtd processes: a SQLite file or "
    "postgresql://USER@HOST:PORT/DB (default: STATE/mgmtd.db).",
)
@click.option(
    "--advertise", default=None, help="HOST:PORT standbys send clients to (default: --host:--port)."
)
@click.option(
    "--targets-per-node",
    type=int,
    default=0,
    show_default=True,
    help="Targets are listed node by node, this many each: plan the first chain "
    "table to spread recovery (0: one chain per target).",
)
@_tls_cert_option
@_tls_key_option
def mgmtd(
    config_path: str | None,
    host: str,
    port: int,
    state: str,
    targets: str,
    replicas: int,
    db: str | None,
    advertise: str | None,
    targets_per_node: int,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Run the cluster manager (several share one --db: one primary, the rest standbys)."""
    from fs3.mgmtd.service import run_mgmtd

    config, stop = _serve("mgmtd", config_path, tls_cert, tls_key)
    ids = [int(t) for t in targets.split(",") if t]
    with one_line_errors("fs3 mgmtd"):
        run_mgmtd(
            Path(state),
            ids,
            replicas,
            host,
            port,
            config.mgmtd,
            stop,
            db=db,
            advertise=advertise,
            targets_per_node=targets_per_node,
            tls=config.tls,
            security=config.security,
        )


@fs3.command()
@_config_option
@_host_option
@click.option("--port", type=PORT, required=True)
@click.option(
    "--db",
    required=True,
    help="SQLite file, or postgresql://USER@HOST:PORT/DB to share with other meta servers.",
)
@click.option(
    "--mgmtd",
    "mgmtd_address",
    required=True,
    help="mgmtd HOST:PORT; several comma-separated for fail-over.",
)
@click.option(
    "--grpc-port",
    type=PORT,
    default=0,
    show_default=True,
    help="Port of the gRPC health service (grpc.health.v1) probes check; 0: none.",
)
@_tls_cert_option
@_tls_key_option
def meta(
    config_path: str | None,
    host: str,
    port: int,
    db: str,
    mgmtd_address: str,
    grpc_port: int,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Run the metadata service (several may serve one PostgreSQL database at once).

    FS3_ADMIN_TOKEN, when set, becomes the admin's token (the Helm chart's Secret)."""
    from fs3.meta.service import run_meta

    config, stop = _serve("meta", config_path, tls_cert, tls_key)
    admin = os.environ.get("FS3_ADMIN_TOKEN", "")
    with one_line_errors("fs3 meta"):
        run_meta(
            db, mgmtd_address, host, port, config, stop, grpc_port=grpc_port, admin_token=admin
        )


@fs3.command()
@_config_option
@_host_option
@click.option("--id", "target_id", type=int, required=True)
@click.option("--root", type=click.Path(file_okay=False), required=True)
@click.option("--mgmtd", "mgmtd_address", required=True, help="mgmtd HOST:PORT.")
@click.option("--port", type=PORT, required=True, help="Data-path TCP port.")
@click.option("--grpc-port", type=PORT, required=True, help="gRPC chunk port (benchmarks).")
@_tls_cert_option
@_tls_key_option
def storage(
    config_path: str | None,
    host: str,
    target_id: int,
    root: str,
    mgmtd_address: str,
    port: int,
    grpc_port: int,
    tls_cert: str | None,
    tls_key: str | None,
) -> None:
    """Run one storage target."""
    from fs3.storage.server import run_storage

    config, stop = _serve(f"storage-{target_id}", config_path, tls_cert, tls_key)
    with one_line_errors("fs3 storage"):
        run_storage(target_id, Path(root), mgmtd_address, host, port, grpc_port, config, stop)


@fs3.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--targets", type=int, default=3, show_default=True)
@click.option("--replicas", type=int, default=3, show_default=True)
@click.option(
    "--mgmtds",
    type=int,
    default=1,
    show_default=True,
    help="mgmtd processes: one primary, the others standbys.",
)
@click.option(
    "--metas", type=int, default=1, show_default=True, help="Meta servers sharing the namespace."
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="The address every service listens on and announces (IPv6 without brackets).",
)
@click.option("--detach", is_flag=True, help="Return once ready; stop later with `down`.")
@click.option(
    "--tls",
    is_flag=True,
    help="gRPC over TLS: a CA and certificates in DIRECTORY/tls; clients use "
    "DIRECTORY/config.yaml (--config or FS3_CONFIG) to verify the servers.",
)
def up(
    directory: str,
    targets: int,
    replicas: int,
    mgmtds: int,
    metas: int,
    host: str,
    detach: bool,
    tls: bool,
) -> None:
    """Start a local cluster under DIRECTORY and print its address."""
    from fs3.cluster import LocalCluster

    if mgmtds < 1 or metas < 1:
        raise click.BadParameter(f"--mgmtds ({mgmtds}) and --metas ({metas}) must be >= 1")
    with one_line_errors("fs3 up"):
        cluster = LocalCluster(
            Path(directory),
            targets=targets,
            replicas=replicas,
            mgmtds=mgmtds,
            metas=metas,
            host=host,
            tls=tls,
        )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        with one_line_errors("fs3 up"):
            cluster.start()
        click.echo(cluster.address)
        if tls:
            config = Path(directory).resolve() / "config.yaml"
            click.echo(f"TLS on: clients verify with FS3_CONFIG={config}", err=True)
        if detach:
            return
        click.echo(f"fs3 cluster up; Ctrl-C or `hai fs3 down {directory}` stops it", err=True)
        while not stop.wait(0.5):
            if all(p.poll() is not None for p in cluster.procs.values()):
                break  # `down` stopped the services
        cluster.stop()
    except BaseException:
        cluster.stop()
        raise


@fs3.command()
# Not readable=True: another account's `down` still says what it may not stop.
@click.argument("directory", type=click.Path(file_okay=False, readable=False))
def down(directory: str) -> None:
    """Stop the local cluster under DIRECTORY, also processes of it restarted by hand."""
    from fs3.cluster import NotStopped, stop_cluster

    try:
        stopped, refused = stop_cluster(Path(directory)), []
    except NotStopped as err:
        stopped, refused = err.stopped, err.refused
    echo_stopped(stopped, refused, f"no fs3 cluster runs in {directory}")


_MOUNT = MountOptions()  # the mount's defaults, shown in --help


@fs3.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@mgmtd_address_option("$FS3_CLUSTER, the config")
@_config_option
@click.option("-d", "--background", is_flag=True, help="Return once mounted.")
@click.option("--log", "log_file", help="Log file of a --background mount.")
@click.option("--chunk-size", type=int, help="Chunk size of new files, bytes.")
@click.option(
    "--attr-timeout",
    type=float,
    default=_MOUNT.attr_timeout,
    show_default=True,
    help="Seconds the kernel caches attributes.",
)
@click.option(
    "--entry-timeout",
    type=float,
    default=_MOUNT.entry_timeout,
    show_default=True,
    help="Seconds the kernel caches name lookups.",
)
@click.option(
    "--readahead-kib",
    type=int,
    default=_MOUNT.readahead_kib,
    show_default=True,
    help="Kernel read-ahead.",
)
@click.option(
    "--max-background",
    type=int,
    default=_MOUNT.max_background,
    show_default=True,
    help="Kernel read-ahead requests in flight.",
)
@click.option(
    "--threads",
    type=int,
    default=_MOUNT.threads,
    show_default=True,
    help="fs3 calls at once, each in a worker thread.",
)
@click.option(
    "--io-threads",
    type=int,
    default=_MOUNT.io_threads,
    show_default=True,
    help="Chunk writes at once, all open files together.",
)
@click.option(
    "--read-batches",
    type=int,
    default=_MOUNT.read_batches,
    show_default=True,
    help="Batches of parallel readers' small random reads in flight.",
)
@click.option("--allow-other", is_flag=True, help="Let other users use the mount.")
@click.option("--debug", is_flag=True, help="Log every FUSE request.")
@click.option("--parent-pid", type=int, hidden=True, help="Unmount once this process is gone.")
def mount(
    mountpoint: str,
    address: str | None,
    config_path: str | None,
    background: bool,
    log_file: str | None,
    chunk_size: int | None,
    attr_timeout: float,
    entry_timeout: float,
    readahead_kib: int,
    max_background: int,
    threads: int,
    io_threads: int,
    read_batches: int,
    allow_other: bool,
    debug: bool,
    parent_pid: int | None,
) -> None:
    """Mount an fs3 cluster at MOUNTPOINT (FUSE). Runs in the foreground until Ctrl-C,
    SIGTERM or `hai fs3 umount MOUNTPOINT`; --background returns once it is mounted."""
    import sys
    import tempfile

    from fs3.errors import Fs3Error
    from fs3.fuse.process import mount_command, start_mount, wait_mounted

    try:
        options = MountOptions(
            attr_timeout,
            entry_timeout,
            readahead_kib,
            max_background,
            threads,
            io_threads,
            allow_other,
            debug,
            read_batches,
        )
        if background:
            log = Path(log_file or Path(tempfile.gettempdir()) / f"fs3-mount-{os.getpid()}.log")
            command = mount_command(mountpoint, address, config_path, chunk_size, options)
            proc = start_mount(command, log)
            wait_mounted(mountpoint, proc, log, timeout=60.0)
            click.echo(f"fs3 mounted at {mountpoint} (pid {proc.pid}, log {log})")
            return
        from fs3.fuse.serve import run_mount

        level = logging.DEBUG if debug else logging.INFO
        logging.basicConfig(level=level, format="%(asctime)s fs3-mount %(levelname)s %(message)s")
        run_mount(mountpoint, address, config_path, chunk_size, options, parent_pid)
    except Fs3Error as err:
        click.echo(f"hai fs3 mount: {err}", err=True)
        sys.exit(1)


@fs3.command()
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("-z", "--lazy", is_flag=True, help="Detach now even if files are still open.")
def umount(mountpoint: str, lazy: bool) -> None:
    """Unmount the fs3 mount at MOUNTPOINT (its process commits open files and exits)."""
    from fs3.errors import Fs3Error
    from fs3.fuse.process import unmount

    try:
        unmount(mountpoint, lazy)
    except Fs3Error as err:
        raise click.ClickException(str(err)) from None


for _command in cli_files.COMMANDS + cli_admin.COMMANDS + cli_users.COMMANDS:
    fs3.add_command(_command)
