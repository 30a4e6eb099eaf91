"""A whole fs3 cluster on this machine: mgmtd, meta and N storage targets as processes.

Used by ``hai fs3 up`` for development and by the tests. Everything lives under one folder:
``config.yaml`` (read by every service), ``cluster.json`` (ports), ``pids.json``, one log per
process, the metadata database and one chunk folder per target. Optionally several mgmtd
processes (one primary, standbys) and several meta servers share their stores, which may be
PostgreSQL databases instead of the SQLite files in the folder.

The folder holds every file's metadata and bytes, so it is the owner's alone: created (or
tightened to) 0700, its own files written 0600, and the services started with umask 077 so
that their databases, chunks and logs are private too. ``secret`` (0600) is the services'
shared key (:mod:`fs3.capabilities`); clients never need it. A target's local-read socket
keeps storage.local_socket_mode, but inside the folder only the owner reaches it; other
accounts' clients read over TCP.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

from fs3 import tls as certificates
from fs3.capabilities import create_secret
from fs3.client.filesystem import local_token_file
from fs3.config import TlsConfig, load_config
from fs3.errors import ConfigError, Fs3Error, Fs3TimeoutError
from fs3.meta import users
from fs3.meta.backends import open_meta_store
from fs3.mgmtd.client import MgmtdClient
from fs3.processes import Found, Placement, gone, label, option, path_of, program_args, stop
from fs3.types import SERVING, RoutingTable, host_port

_STOP_GRACE_S = 10.0  # services stop their gRPC servers with 1 s grace; 10 s is ample
_PRIVATE_UMASK = 0o077  # what the services create: no group or other bits


class AlreadyRunning(Fs3Error):
    """A cluster's processes run on the folder: a second start would take over its files."""


class NotStopped(Fs3Error):
    """``down`` stopped what it could (``stopped``); ``refused`` says, one line each, what not."""

    def __init__(self, stopped: list[str], refused: list[str]) -> None:
        super().__init__("; ".join(refused))
        self.stopped = stopped
        self.refused = refused


_OURS = (
    "cluster.json",
    "config.yaml",
    "pids.json",
    "address",
    "token",
    "secret",
    "mgmtd*",
    "meta*",
    "storage-*",
    "tls",
)
"""What a local cluster puts in its folder, besides logs (``*.log``) and files being written."""


def _private_root(root: Path) -> None:
    """Creates ``root`` 0700, or tightens an existing looser folder of ours.

    Raises ConfigError for a file, or a loose folder that is shared (sticky, like /tmp),
    another account's, or holds files a cluster did not put there (a home, /etc): those are
    their owner's to close.
    """
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = root.stat()
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"{root} is a file, not a folder: give a folder path") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{root} is a file, not a folder: give a folder path")
    if not info.st_mode & 0o077:
        return
    other = sorted(
        e.name
        for e in root.iterdir()
        if not any(fnmatch.fnmatchcase(e.name, p) for p in (*_OURS, "*.log", ".*"))
    )
    if info.st_mode & stat.S_ISVTX:
        why = "is shared (sticky, like /tmp)"
    elif info.st_uid != os.getuid():
        why = f"belongs to uid {info.st_uid}"
    elif other:
        why = f"holds {other[0]!r}, which fs3 did not put there"
    else:
        os.chmod(root, 0o700)
        return
    raise ConfigError(
        f"{root} is open to other accounts (mode {stat.S_IMODE(info.st_mode):o}) and {why}: "
        "use a new folder, or chmod 700 it yourself"
    )


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file left by an older release may be looser
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _free_ports(hosts: list[str]) -> list[int]:
    """A free port for each of ``hosts``, all distinct: each socket stays bound until all are
    picked, or the kernel could hand out a port just released twice. An address of another
    host (a test host's namespace) is tried on the wildcard here: its own ports are free."""
    sockets = []
    try:
        for host in hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(family)
            sockets.append(s)
            try:
                s.bind((host, 0))
            except OSError:  # not an address of this machine's network
                s.bind(("::" if family == socket.AF_INET6 else "", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class LocalCluster:
    """Processes of one local cluster. ``start`` blocks until every chain is fully serving."""

    root: Path
    targets: int = 3
    replicas: int = 3
    host: str = "127.0.0.1"
    settings: dict = field(default_factory=dict)
    """Overrides for the services' config file, e.g. ``{"mgmtd": {"lease_s": 2.0}}``."""
    mgmtds: int = 1
    """mgmtd processes sharing one store: the first primary, the others standbys."""
    metas: int = 1
    """Meta servers sharing one metadata store."""
    meta_db: str = ""
    """Metadata store: a ``postgresql://`` URL; default the SQLite file ``meta.db``."""
    mgmtd_db: str = ""
    """mgmtd store: a ``postgresql://`` URL; default the SQLite file ``mgmtd.db``."""
    tls: bool = False
    """gRPC over TLS, with a CA and per-service certificates in ``tls/`` (:mod:`fs3.tls`)."""
    placement: Placement | None = None
    """Where each service runs on several hosts (its address and the wrapper that runs its
    command there), and ``"client"``: a host that reaches them all, where ``wait_ready``
    checks. None: all on this machine, on ``host``."""
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        _private_root(self.root)
        # Before anything is written: a second start would replace the running targets'
        # local-read sockets, drop their staged writes and lose their pids.
        if found := running(self.root):
            listed = ", ".join(label(name, proc) for name, proc in found)
            raise AlreadyRunning(
                f"an fs3 cluster already runs in {self.root} ({listed}); "
                f"`hai fs3 down {self.root}` stops it"
            )
        ports_file = self.root / "cluster.json"
        if ports_file.exists():
            self.ports = json.loads(ports_file.read_text())
        else:
            names = self._numbered("mgmtd", self.mgmtds) + self._numbered("meta", self.metas)
            metas = self._numbered("meta", self.metas)
            storages = [f"storage-{i}" for i in range(1, self.targets + 1)]
            wanted = names + [f"{n}.grpc" for n in metas] + [n for n in storages for _ in "dg"]
            free = iter(_free_ports([self.host_of(n.split(".")[0]) for n in wanted]))
            self.ports = {name: next(free) for name in names}
            # Each meta server's gRPC health port, beside its framed port.
            self.ports.update({f"{name}.grpc": next(free) for name in metas})
            for i in range(1, self.targets + 1):
                self.ports[f"storage-{i}"] = [next(free), next(free)]
            _write_private(ports_file, json.dumps(self.ports))
        settings = {**self.settings, "tls": self._certify()} if self.tls else self.settings
        # The services' shared secret (fs3.capabilities): readable by this account alone,
        # like the folder; kept across restarts so capabilities issued before stay valid.
        create_secret(self.root / "secret")
        security = {"secret_file": str(self.root / "secret"), **settings.get("security", {})}
        settings = {**settings, "security": security}
        _write_private(self.root / "config.yaml", yaml.safe_dump(settings))

    def _certify(self) -> dict[str, object]:
        """Keeps (or makes) the CA in ``tls/`` and issues each service a new certificate;
        returns the config's tls group, which the services and every client need."""
        folder = self.root / "tls"
        ca = certificates.ensure_ca(folder)
        for name in self.names():
            certificates.issue(folder, name, [self.host_of(name)])
        return {"enabled": True, "ca_file": str(ca)}

    @property
    def tls_config(self) -> TlsConfig | None:
        """What a client of this cluster needs to verify its servers (None: plaintext)."""
        if not self.tls:
            return None
        return TlsConfig(enabled=True, ca_file=str(self.root / "tls" / certificates.CA_FILE))

    @staticmethod
    def _numbered(kind: str, count: int) -> list[str]:
        """``mgmtd``, ``mgmtd-2``, ...: the first keeps the plain name of a one-of cluster."""
        return [kind] + [f"{kind}-{i}" for i in range(2, count + 1)]

    @property
    def address(self) -> str:
        """The cluster address: every mgmtd ``HOST:PORT``, comma-separated."""
        return ",".join(self.mgmtd_address(n) for n in self._numbered("mgmtd", self.mgmtds))

    def host_of(self, name: str) -> str:
        """The address service ``name`` listens on and announces."""
        return self.placement(name)[0] if self.placement else self.host

    def mgmtd_address(self, name: str = "mgmtd") -> str:
        return host_port(self.host_of(name), self.ports[name])

    def meta_address(self, name: str = "meta") -> str:
        return host_port(self.host_of(name), self.ports[name])

    def meta_health_address(self, name: str = "meta") -> str:
        """Where meta server ``name`` answers gRPC health checks."""
        return host_port(self.host_of(name), self.ports[name + ".grpc"])

    def names(self) -> list[str]:
        return (
            self._numbered("mgmtd", self.mgmtds)
            + self._numbered("meta", self.metas)
            + [f"storage-{i}" for i in range(1, self.targets + 1)]
        )

    def _command(self, name: str) -> list[str]:
        base = [
            sys.executable,
            "-m",
            "fs3",
            name.split("-")[0],
            "--host",
            self.host_of(name),
            "--config",
            str(self.root / "config.yaml"),
        ]
        if self.tls:  # its own certificate; the config file all of them read has the CA
            base += ["--tls-cert", str(self.root / "tls" / f"{name}.pem")]
            base += ["--tls-key", str(self.root / "tls" / f"{name}.key")]
        if name.startswith("mgmtd"):
            ids = ",".join(str(i) for i in range(1, self.targets + 1))
            return base + [
                "--port",
                str(self.ports[name]),
                "--state",
                str(self.root / "mgmtd"),
                "--db",
                self.mgmtd_db or str(self.root / "mgmtd.db"),
                "--targets",
                ids,
                "--replicas",
                str(self.replicas),
            ]
        if name.startswith("meta"):
            return base + [
                "--port",
                str(self.ports[name]),
                "--db",
                self.meta_db or str(self.root / "meta.db"),
                "--mgmtd",
                self.address,
                # A cluster.json written before meta had a health port has none.
                "--grpc-port",
                str(self.ports.get(f"{name}.grpc", 0)),
            ]
        index = int(name.split("-")[1])
        data_port, grpc_port = self.ports[name]
        return base + [
            "--id",
            str(index),
            "--root",
            str(self.root / name),
            "--mgmtd",
            self.address,
            "--port",
            str(data_port),
            "--grpc-port",
            str(grpc_port),
        ]

    def start_process(self, name: str) -> None:
        fd = os.open(self.root / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)
        log = os.fdopen(fd, "ab")  # the child owns it
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = self._command(name)
        if self.placement:
            command = self.placement(name)[1](command)
        self.procs[name] = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C in the terminal reaches `up`, which stops us in order
            umask=_PRIVATE_UMASK,
        )
        log.close()
        self._save_pids()

    def _save_pids(self) -> None:
        pids = {n: p.pid for n, p in self.procs.items() if p.poll() is None}
        _write_private(self.root / "pids.json", json.dumps(pids))

    def start(self, timeout: float = 60.0) -> None:
        """Starts every process and waits until the cluster serves.

        Raises Fs3TimeoutError naming what was not ready, with the log folder.
        """
        token = self._bootstrap_admin()
        for name in self.names():
            self.start_process(name)
        self.wait_ready(timeout)
        _write_private(self.root / "address", self.address + "\n")
        local = local_token_file(self.address)
        local.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _write_private(local, token + "\n")

    def _bootstrap_admin(self) -> str:
        """The admin token (:data:`fs3.meta.users.ADMIN`) kept in the folder's ``token``
        file (0600), made anew with its user when the store knows no such admin."""
        path = self.root / "token"
        token = path.read_text().strip() if path.exists() else None
        umask = os.umask(_PRIVATE_UMASK)  # this may create the store: as private as meta's
        try:
            store = open_meta_store(self.meta_db or self.root / "meta.db")
            try:
                new = users.bootstrap(store, token)
            finally:
                store.close()
        finally:
            os.umask(umask)
        if new is not None:
            _write_private(path, new + "\n")
        return new or token or ""

    def wait_ready(self, timeout: float = 60.0) -> RoutingTable | None:
        """Waits until a primary mgmtd answers, every meta server is registered and every
        chain member is serving (:func:`wait_serving`); returns the chain table, or None
        with a ``placement``, where the check runs on the host it gives ``"client"``.

        Raises Fs3TimeoutError naming what was not ready, Fs3Error when a process exited.
        """
        if self.placement is None:
            return wait_serving(
                self.address, self.targets, self.metas, self.tls_config, timeout, self._exited
            )
        argv = [sys.executable, "-m", "fs3.cluster", "--config", str(self.root / "config.yaml")]
        argv += [self.address, str(self.targets), str(self.metas), str(timeout)]
        # From / : the cluster folder's parent may hold a folder named fs3.
        wrap = self.placement("client")[1]
        check = subprocess.Popen(wrap(argv), stderr=subprocess.PIPE, cwd="/")
        try:
            while check.poll() is None:
                self._exited()
                time.sleep(0.1)
        finally:
            if check.poll() is None:
                check.kill()
            _, err = check.communicate()
        if check.returncode:
            lines = err.decode(errors="replace").strip().splitlines()
            raise Fs3TimeoutError(lines[-1] if lines else f"ready check exited {check.returncode}")
        return None

    def _exited(self) -> None:
        """Raises Fs3Error naming a process of the cluster that exited, and its log."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise Fs3Error(
                    f"fs3 {name} exited with {proc.returncode}; see {self.root / (name + '.log')}"
                )

    def kill(self, name: str) -> None:
        """SIGKILLs one process, as a crash would."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(timeout=_STOP_GRACE_S)
        self._save_pids()

    def stop(self) -> None:
        """Stops all processes: storage first so no write is cut between hops, mgmtd last."""
        for name in sorted(self.procs, key=lambda n: ("storage" not in n, n.startswith("mgmtd"))):
            self.procs[name].terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        (self.root / "pids.json").unlink(missing_ok=True)
        local_token_file(self.address).unlink(missing_ok=True)


def _not_ready(table: RoutingTable, targets: int) -> str:
    if not table.meta_address:
        return "meta not registered"
    alive = sum(t.alive for t in table.targets.values())
    if alive < targets:
        return f"{alive} of {targets} storage targets registered"
    for chain in table.chains.values():
        states = [m.state for m in chain.members]
        if any(s != SERVING for s in states):
            return f"chain {chain.chain_id} members {states}"
    return ""


def wait_serving(
    address: str,
    targets: int,
    metas: int = 1,
    tls: TlsConfig | None = None,
    timeout: float = 60.0,
    check: Callable[[], None] = lambda: None,
) -> RoutingTable:
    """Waits until the cluster at ``address`` has a primary mgmtd, ``metas`` meta servers
    registered and ``targets`` targets serving every chain; returns the chain table.
    ``check`` runs each round and may raise (a process that exited).

    Raises Fs3TimeoutError naming what was not ready after ``timeout`` seconds.
    """
    client = MgmtdClient(address, 2.0, tls)
    deadline = time.monotonic() + timeout
    problem = "mgmtd not answering"
    try:
        while time.monotonic() < deadline:
            check()
            try:
                table = client.refresh()
                problem = _not_ready(table, targets)
                registered = len(client.info()["meta_addresses"]) if metas > 1 else 1
                if not problem and registered < metas:
                    problem = f"{registered} of {metas} meta servers registered"
                if not problem:
                    return table
            except Fs3Error as err:
                problem = str(err)
            time.sleep(0.1)
    finally:
        client.close()
    raise Fs3TimeoutError(f"fs3 cluster at {address} not ready after {timeout:g}s: {problem}")


_KINDS = (["mgmtd"], ["meta"], ["storage"])
_PATH_FLAGS = ("--config", "--root", "--db", "--state")
"""The options through which every service of a local cluster names a path in its folder."""


def running(root: Path) -> list[Found]:
    """The mgmtd, meta and storage processes of the cluster in ``root`` now running,
    whoever started them and how.

    A process counts when its command line is ``fs3 mgmtd|meta|storage ...`` (``python -m
    fs3 ...`` or ``hai fs3 ...``) and one of its ``--config``, ``--root``, ``--db`` or
    ``--state`` names a path in ``root`` (a relative one taken from its working folder).
    Each comes with its name in the cluster: ``storage-ID`` by its ``--id``, an mgmtd or
    meta server's (``meta-2``) by its ``--port`` in ``cluster.json``, else its kind.
    """
    root = Path(root).expanduser().resolve()
    try:
        ports = json.loads((root / "cluster.json").read_text())
    except (OSError, ValueError):
        ports = {}  # not started yet, or another account's folder
    names = {str(port): name for name, port in ports.items() if "." not in name}
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        args = program_args(proc.info["cmdline"] or [], "fs3")
        if args[:1] not in _KINDS:
            continue
        values = [v for flag in _PATH_FLAGS if (v := option(args, flag)) and "://" not in v]
        try:
            paths = [path_of(proc, v) for v in values]
            if any(p == root or root in p.parents for p in paths) and not gone(proc):
                target = option(args, "--id")
                name = f"storage-{target}" if target else names.get(option(args, "--port") or "")
                found.append((name or args[0], proc))
        except psutil.Error:
            continue  # gone, or where it runs is hidden from this account
    return found


def stop_cluster(root: Path, timeout_s: float = _STOP_GRACE_S) -> list[str]:
    """Stops the processes of the cluster in ``root`` (found by ``running``, so also ones
    restarted by hand): storage first so no write is cut between hops, mgmtd last. Returns
    them, as ``name (pid N)``.

    Raises:
        NotStopped: some could not be stopped (another account's, or one that outlived
            SIGKILL); the rest were, and ``pids.json`` stays.
    """
    order = {"storage": 0, "meta": 1, "mgmtd": 2}
    found = sorted(running(root), key=lambda item: order[item[0].split("-")[0]])
    stopped, refused = stop(found, timeout_s)
    if refused:
        raise NotStopped(stopped, refused)
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # no such cluster folder
        (Path(root) / "pids.json").unlink()
    return stopped


def main(argv: list[str] | None = None) -> None:
    """``python -m fs3.cluster [--config FILE] ADDRESS TARGETS METAS TIMEOUT``: waits as
    :func:`wait_serving` from wherever it runs (a cluster's ``placement`` runs it on a host
    that reaches every service); exits 1 with the problem on stderr."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fs3.cluster", description=main.__doc__)
    parser.add_argument("--config", default=None, help="fs3 config (its tls group is used)")
    parser.add_argument("address")
    parser.add_argument("targets", type=int)
    parser.add_argument("metas", type=int)
    parser.add_argument("timeout", type=float)
    args = parser.parse_args(argv)
    tls = load_config(args.config).tls
    tls_config = tls if tls.enabled else None
    try:
        wait_serving(args.address, args.targets, args.metas, tls_config, args.timeout)
    except Fs3Error as err:
        sys.exit(str(err))


if __name__ == "__main__":
    main()
