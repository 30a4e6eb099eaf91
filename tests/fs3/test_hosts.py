"""fs3 across test hosts (docs/hosts.md): services announce the addresses they are given,
the zero-copy local path is taken by host identity, a storage host cut off mid-run loses
nothing, and a standby mgmtd takes over from a primary whose host is cut off.

The cluster folder lies under /var/tmp, which every host sees (their /tmp are their own),
0700 with the secret and admin token in it 0600. The test process itself is on no host's
network: everything that talks to the cluster (the readiness check, ``hai fs3 status``,
the fsspec client of :mod:`fs3.on_hosts`) runs on a host.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fs3.cluster import LocalCluster
from fs3.config import load_config
from fs3.on_hosts import data_for, placement
from fs3.storage.local_read import host_id
from hai.doctor import find_postgres_bindir
from testhosts import Hosts

from ..waiting import wait_for

MiB = 1 << 20
# Short leases so a cut host is taken out within seconds; short timeouts so a client or a
# chain hop waiting on a cut host gives up and retries soon; no fsync keeps 2-core CI fast.
FAST = {
    "mgmtd": {"lease_s": 2.0, "heartbeat_s": 0.2, "primary_lease_s": 2.5},
    "storage": {"fsync": False},
    "timeouts": {"connect_s": 2.0, "rpc_s": 4.0, "retry_s": 60.0},
}
CLIENT_ENV = {f"FS3_TIMEOUTS__{k.upper()}": str(v) for k, v in FAST["timeouts"].items()}
START_S = 90  # start-up on a loaded 2-core machine; only bounds the wait
IO_S = 120  # one client run, write or read of 256 MiB with retries around a cut host


@contextmanager
def _cluster(hosts: Hosts, where: dict[str, int], **kwargs: Any) -> Iterator[LocalCluster]:
    """A cluster placed on ``hosts`` as ``where`` says, in a fresh folder all hosts see;
    stopped and removed afterwards, also on failure."""
    root = Path(tempfile.mkdtemp(prefix="fs3-hosts-", dir="/var/tmp"))
    cluster = LocalCluster(
        root / "cluster", settings=FAST, placement=placement(hosts, where), **kwargs
    )
    try:
        cluster.start(timeout=START_S)
        yield cluster
    finally:
        for name, proc in list(cluster.procs.items()):
            if proc.poll() is None and not _reachable(hosts, where[name]):
                cluster.kill(name)  # a cut host's process would wait out its timeouts
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _reachable(hosts: Hosts, index: int) -> bool:
    link = subprocess.run(
        ["ip", "-o", "link", "show", hosts[index].veth], capture_output=True, text=True
    )
    return "state DOWN" not in link.stdout


def _fs3(hosts: Hosts, index: int, cluster: LocalCluster, *args: str, timeout: float) -> Any:
    """Runs ``python -m MODULE ...`` (``args``) on host ``index`` as a client of ``cluster``
    (its address and admin token in the environment); returns the JSON it printed."""
    env = {
        **os.environ,
        **CLIENT_ENV,
        "FS3_CLUSTER": cluster.address,
        "FS3_TOKEN": (cluster.root / "token").read_text().strip(),
    }
    done = hosts.run(
        index,
        [sys.executable, "-m", *args],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{' '.join(args)} on host {index}: {done.stderr[-3000:]}"
    return json.loads(done.stdout)


def _client(hosts: Hosts, index: int, cluster: LocalCluster, *args: str) -> dict[str, Any]:
    """:mod:`fs3.on_hosts`' client on host ``index``: ``write PATH SIZE`` or ``read PATH``."""
    return _fs3(hosts, index, cluster, "fs3.on_hosts", *args, timeout=IO_S)


def _status(hosts: Hosts, index: int, cluster: LocalCluster) -> dict[str, Any]:
    """``hai fs3 status --json`` as a client on host ``index`` sees it."""
    return _fs3(
        hosts, index, cluster, "fs3", "status", "--address", cluster.address, "--json", timeout=60
    )


def _states(status: dict[str, Any], target: int) -> list[str]:
    """Target ``target``'s state in each chain it belongs to."""
    row = next(t for t in status["targets"] if t["target_id"] == target)
    return [c["state"] for c in row["chains"]]


def _sha256(path: str, size: int) -> str:
    return hashlib.sha256(data_for(path, size)).hexdigest()


@pytest.mark.hosts
def test_services_announce_their_address_and_local_reads_follow_the_host(
    make_hosts: Callable[[int], Hosts],
) -> None:
    """Every service on host 1 at its IPv6 bridge address: that address is what mgmtd
    lists. A client on host 1 reaches the targets at it, not at 127.0.0.1, yet reads them
    through the local path; a client on host 2 sees the same socket paths (the cluster
    folder is shared) but is another host, so it reads over TCP."""
    hosts = make_hosts(2)
    where = {"mgmtd": 1, "meta": 1, "storage-1": 1, "storage-2": 1, "client": 2}
    root = Path(tempfile.mkdtemp(prefix="fs3-hosts-", dir="/var/tmp"))
    cluster = LocalCluster(
        root / "cluster",
        targets=2,
        replicas=2,
        settings=FAST,
        placement=placement(hosts, where, ipv6=True),
    )
    try:
        cluster.start(timeout=START_S)
        me = f"[{hosts[1].address6}]:"
        status = _status(hosts, 2, cluster)
        assert [m["address"] for m in status["mgmtds"]] == [cluster.address]
        assert cluster.address.startswith(me)
        assert status["metas"] == [cluster.meta_address()] and status["metas"][0].startswith(me)
        assert [t["address"][: len(me)] for t in status["targets"]] == [me, me]
        assert "127.0.0.1" not in json.dumps(status) and "localhost" not in json.dumps(status)

        wrote = _client(hosts, 1, cluster, "write", "/f", str(24 * MiB))
        here = _client(hosts, 1, cluster, "read", "/f")
        there = _client(hosts, 2, cluster, "read", "/f")
        assert here["sha256"] == there["sha256"] == wrote["sha256"] == _sha256("/f", 24 * MiB)
        assert here["local_reads"] == 6  # every 4 MiB chunk through a passed descriptor
        assert there["local_reads"] == 0  # the same cluster from another host: TCP
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.hosts
def test_a_storage_host_cut_off_loses_nothing_and_resyncs(
    make_hosts: Callable[[int], Hosts],
) -> None:
    """mgmtd and meta on host 1, one target on each of hosts 2-4 at replication 3, the
    client on host 5. 256 MiB written while host 3 is cut off completes on the two others;
    restored, host 3's target resyncs and then alone serves the whole file."""
    hosts = make_hosts(5)
    where = {"mgmtd": 1, "meta": 1, "storage-1": 2, "storage-2": 3, "storage-3": 4, "client": 5}
    size = 256 * MiB
    with _cluster(hosts, where, targets=3, replicas=3) as cluster:
        hosts.cut(3)  # target 2; the chain table still lists it serving
        wrote = _client(hosts, 5, cluster, "write", "/big", str(size))
        assert wrote["bytes"] == size
        status = _status(hosts, 5, cluster)
        assert set(_states(status, 2)) == {"offline"}, status
        assert all(set(_states(status, t)) == {"serving"} for t in (1, 3)), status
        read = _client(hosts, 5, cluster, "read", "/big")
        assert read["sha256"] == wrote["sha256"] == _sha256("/big", size)

        hosts.restore(3)
        wait_for(
            "target 2 serving every chain again after its resync",
            lambda: set(_states(_status(hosts, 5, cluster), 2)) == {"serving"},
            timeout=120,
            interval=1.0,
        )
        # Only host 3 left: every read must come from the resynced target.
        hosts.cut(2)
        hosts.cut(4)
        wait_for(
            "targets 1 and 3 offline, target 2 the chains' only server",
            lambda: (
                (s := _status(hosts, 5, cluster))
                and set(_states(s, 1)) == set(_states(s, 3)) == {"offline"}
                and set(_states(s, 2)) == {"serving"}
            ),
            timeout=60,
            interval=1.0,
        )
        read = _client(hosts, 5, cluster, "read", "/big")
        assert read["sha256"] == wrote["sha256"]


@contextmanager
def _postgres(hosts: Hosts, index: int) -> Iterator[str]:
    """A PostgreSQL server on host ``index`` (its own data folder there, run as nobody,
    which initdb and postgres require), reachable from the other hosts; yields its URL."""
    bindir = find_postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (Debian: apt-get install postgresql)")
    nobody = pwd.getpwnam("nobody")
    data = hosts[index].dir / "pg"
    data.mkdir()
    os.chown(data, nobody.pw_uid, nobody.pw_gid)
    # Dropped to nobody inside the host: nsenter itself needs root.
    as_nobody = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}"]
    as_nobody += ["--clear-groups"]

    def run(*argv: str) -> None:
        done = hosts.run(index, [*as_nobody, *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{argv[0]}: {done.stdout} {done.stderr}"

    address, port = hosts[index].address, 5432  # the host's own network: the port is free
    run(f"{bindir}/initdb", "-D", str(data / "db"), "-U", "fs3", "--auth=trust", "-E", "UTF8")
    with open(data / "db" / "pg_hba.conf", "a") as hba:
        hba.write("host all all 198.18.0.0/15 trust\n")  # the hosts' bridge network
    options = f"-p {port} -h {address} -k {data} -c fsync=off"
    pg_ctl = [f"{bindir}/pg_ctl", "-D", str(data / "db"), "-w", "-t", "60"]
    run(*pg_ctl, "-o", options, "-l", str(data / "log"), "start")
    try:
        yield f"postgresql://fs3@{address}:{port}/postgres"
    finally:
        run(*pg_ctl, "-m", "immediate", "stop")


@pytest.mark.hosts
def test_a_standby_mgmtd_takes_over_when_the_primary_host_is_cut_off(
    make_hosts: Callable[[int], Hosts],
) -> None:
    """Two mgmtd processes on hosts 1 and 2, their shared store in PostgreSQL on host 3
    (both must reach it over the network: a SQLite file on the shared disk would still be
    reached by a cut primary, which would keep its lease), meta and the targets on host 4,
    the client on host 5. The primary's host cut off: the standby takes over, targets and
    meta follow it, and a new client writes and reads through it."""
    hosts = make_hosts(5)
    where = {
        "mgmtd": 1,
        "mgmtd-2": 2,
        "meta": 4,
        "storage-1": 4,
        "storage-2": 4,
        "storage-3": 4,
        "client": 5,
    }
    with _postgres(hosts, 3) as store:
        with _cluster(hosts, where, replicas=2, mgmtds=2, mgmtd_db=store) as cluster:
            before = _client(hosts, 5, cluster, "write", "/before", str(32 * MiB))
            roles = {m["address"]: m["role"] for m in _status(hosts, 5, cluster)["mgmtds"]}
            assert sorted(roles.values()) == ["primary", "standby"], roles
            primary, standby = sorted(
                ("mgmtd", "mgmtd-2"), key=lambda n: roles[cluster.mgmtd_address(n)] != "primary"
            )
            hosts.cut(where[primary])
            after = _client(hosts, 5, cluster, "write", "/after", str(32 * MiB))
            for path, wrote in (("/before", before), ("/after", after)):
                assert _client(hosts, 5, cluster, "read", path)["sha256"] == wrote["sha256"]
            status = _status(hosts, 5, cluster)
            roles = {m["address"]: m["role"] for m in status["mgmtds"]}
            assert roles == {
                cluster.mgmtd_address(primary): "unreachable",
                cluster.mgmtd_address(standby): "primary",
            }
            # Seconds past the takeover, longer than a target's lease: they heartbeat to
            # the new primary, which lists all of them serving, and meta registered there.
            assert all(t["alive"] for t in status["targets"]), status
            assert {s for t in (1, 2, 3) for s in _states(status, t)} == {"serving"}, status
            assert status["metas"] == [cluster.meta_address()]


def test_host_identity_is_boot_and_network_namespace_or_given() -> None:
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert host_id() == f"{boot}/net:{os.stat('/proc/self/ns/net').st_ino}"
    config = load_config(env={"FS3_HOST_ID": "rack7-node3"})
    assert config.host.id == "rack7-node3" and host_id(config.host.id) == "rack7-node3"


@pytest.mark.parametrize("kind", ["meta", "storage"])
def test_a_wildcard_address_is_refused_in_one_line(kind: str, tmp_path: Path) -> None:
    """0.0.0.0 listens everywhere but would be announced to clients as is."""
    args = {
        "meta": ["--port", "1", "--db", str(tmp_path / "m.db")],
        "storage": ["--id", "1", "--root", str(tmp_path), "--port", "1", "--grpc-port", "2"],
    }[kind]
    done = subprocess.run(
        [sys.executable, "-m", "fs3", kind, "--host", "0.0.0.0", "--mgmtd", "x:1", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: fs3 {kind}: --host 0.0.0.0 listens on every address but cannot be announced: "
        "give this machine's address on the cluster's network"
    )


def test_up_on_ipv6_loopback_announces_bracketed_addresses(tmp_path: Path) -> None:
    """``hai fs3 up --host ::1``: every service on ::1, announced as ``[::1]:PORT``."""
    root = tmp_path / "c"

    def fs3(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fs3", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
        )

    up = fs3("up", str(root), "--host", "::1", "--targets", "2", "--replicas", "2", "--detach")
    try:
        assert up.returncode == 0, up.stderr
        address = up.stdout.strip()
        assert address.startswith("[::1]:")
        status = fs3("status", str(root), "--json")
        assert status.returncode == 0, status.stderr
        view = json.loads(status.stdout)
        assert [m["address"] for m in view["mgmtds"]] == [address]
        addresses = view["metas"] + [t["address"] for t in view["targets"]]
        assert len(addresses) == 3 and all(a.startswith("[::1]:") for a in addresses)
        assert {s for t in view["targets"] for s in _states(view, t["target_id"])} == {"serving"}
    finally:
        fs3("down", str(root))
