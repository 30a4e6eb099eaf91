"""``python -m fs3.bench --hosts --link RATE[,RATE...]``: fs3 from a client host over a
shaped link, beside the link rate and raw TCP over the same link.

Five test hosts (:mod:`testhosts`, root only): mgmtd and meta on host 1, one storage target
on each of hosts 2-4 at replication 3 (``--replicas``), the client on host 5, whose link
alone is shaped with tbf. The client (:mod:`fs3.on_hosts`) writes one file sequentially,
then reads it; a chain's head forwards to the other targets over their own, unshaped
links, so the client's link carries each byte once either way and its rate is the bound.
Raw TCP is one Python socket sending the same bytes from host 5 to host 2 and back: what
any client could get.

The first row is the link unshaped: what this machine itself allows. Every host runs on its
cores, so a write costs them the client's work plus each replica's (a target receives,
checks, stores and forwards the bytes); ``targets CPU`` is those three processes' CPU seconds per
GiB written, which says where that ceiling comes from: at replication 3 this machine's
cores do the work of three storage hosts, a real cluster's targets each bring their own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

from fs3.cluster import LocalCluster
from fs3.on_hosts import placement

MiB = 1 << 20
CLIENT = 5
WHERE = {"mgmtd": 1, "meta": 1, "storage-1": 2, "storage-2": 3, "storage-3": 4, "client": CLIENT}
SETTINGS = {"storage": {"fsync": False}}
"""No fsync: the bench measures the network path; the targets' disks are one shared disk."""
ROUNDS = 3
"""Each figure is the best of this many runs: other work on a shared machine only slows."""

# Raw TCP: host 2 receives SIZE bytes and sends them back; host 5 times both directions.
_SINK = """
import socket, sys
srv = socket.create_server((sys.argv[1], 0)); print(srv.getsockname()[1], flush=True)
c, _ = srv.accept(); size = int(sys.argv[2]); buf = bytearray(4 << 20); got = 0
while got < size:
    n = c.recv_into(buf); got += n
c.sendall(b"\\0"); c.sendall(bytes(size)); c.close()
"""
_SOURCE = """
import json, socket, sys, time
size = int(sys.argv[3]); data = bytes(4 << 20); buf = bytearray(4 << 20)
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
t = time.perf_counter(); sent = 0
while sent < size:
    n = min(len(data), size - sent); s.sendall(data[:n]); sent += n
s.recv(1); up = time.perf_counter() - t; t = time.perf_counter(); got = 0
while got < size:
    n = s.recv_into(buf)
    if not n: break
    got += n
print(json.dumps({"write": up, "read": time.perf_counter() - t}))
"""


def _tcp(hosts: Any, size: int) -> tuple[float, float]:
    """Seconds to send ``size`` bytes from the client host to host 2, and back."""
    sink = hosts.popen(
        2,
        [sys.executable, "-c", _SINK, hosts[2].address, str(size)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = sink.stdout.readline().strip()
        done = hosts.run(
            CLIENT,
            [sys.executable, "-c", _SOURCE, hosts[2].address, port, str(size)],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
    finally:
        sink.kill()
        sink.wait()
    times = json.loads(done.stdout)
    return times["write"], times["read"]


def _client(hosts: Any, cluster: LocalCluster, *args: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "FS3_CLUSTER": cluster.address,
        "FS3_TOKEN": (cluster.root / "token").read_text().strip(),
    }
    done = hosts.run(
        CLIENT,
        [sys.executable, "-m", "fs3.on_hosts", *args],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode:
        raise RuntimeError(f"fs3 client on host {CLIENT}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout)


UNSHAPED = "none"


def _cpu_s(cluster: LocalCluster) -> float:
    """CPU seconds the cluster's storage processes have used so far."""
    return sum(
        sum(psutil.Process(p.pid).cpu_times()[:2])
        for name, p in cluster.procs.items()
        if name.startswith("storage")
    )


def measure(rates: list[str], size: int, replicas: int = 3) -> list[dict[str, float]]:
    """One row per link rate (:data:`UNSHAPED`: none): ``link MB/s`` (0 unshaped), fs3 and
    raw TCP ``write``/``read`` MB/s, and ``targets CPU`` s/GiB written (the best round's)."""
    from testhosts import Hosts, parse_rate

    rows = []
    root = Path(tempfile.mkdtemp(prefix="fs3-hosts-bench-", dir="/var/tmp"))
    with Hosts.up(len(set(WHERE.values()))) as hosts:
        cluster = LocalCluster(
            root / "cluster",
            replicas=replicas,
            settings=SETTINGS,
            placement=placement(hosts, WHERE),
        )
        try:
            cluster.start(timeout=120)
            for n, rate in enumerate(rates):
                if rate != UNSHAPED:
                    hosts.shape(CLIENT, rate)
                row = {"link MB/s": 0.0 if rate == UNSHAPED else parse_rate(rate) / 8 / 1e6}
                best: dict[str, float] = {}
                for i in range(ROUNDS):
                    path = f"/bench{n}-{i}"
                    before = _cpu_s(cluster)
                    w = _client(hosts, cluster, "write", path, str(size))
                    cpu = (_cpu_s(cluster) - before) / (size / (1 << 30))
                    r = _client(hosts, cluster, "read", path)
                    tw, tr = _tcp(hosts, size)
                    speeds = {"fs3 write": w["seconds"], "fs3 read": r["seconds"]}
                    speeds.update({"tcp write": tw, "tcp read": tr})
                    for key, seconds in speeds.items():
                        best[key] = max(best.get(key, 0.0), size / seconds / 1e6)
                    if best["fs3 write"] == size / w["seconds"] / 1e6:
                        best["targets CPU"] = cpu
                rows.append({**row, **best})
                hosts.unshape(CLIENT)
        finally:
            cluster.stop()
            shutil.rmtree(root, ignore_errors=True)
    return rows


def format_table(
    rates: list[str], rows: list[dict[str, float]], size_mib: int, replicas: int
) -> str:
    lines = [
        f"fs3 from a client host over a tbf-shaped link: {size_mib} MiB file, 4 MiB chunks, "
        f"3 targets on 3 hosts, replication {replicas}, best of {ROUNDS}",
        "",
    ]
    head = f"{'link':<10}{'link MB/s':>10}{'fs3 write':>11}{'fs3 read':>10}"
    head += f"{'write/link':>11}{'read/link':>10}{'TCP write':>11}{'TCP read':>10}"
    head += f"{'targets CPU s/GiB':>19}"
    lines += [head, "-" * len(head)]
    for rate, row in zip(rates, rows, strict=True):
        link = row["link MB/s"]
        line = f"{rate:<10}" + (f"{link:>10.1f}" if link else f"{'-':>10}")
        line += f"{row['fs3 write']:>11.1f}{row['fs3 read']:>10.1f}"
        if link:
            line += f"{row['fs3 write'] / link:>10.2f}x{row['fs3 read'] / link:>9.2f}x"
        else:
            line += f"{'-':>11}{'-':>10}"
        line += f"{row['tcp write']:>11.1f}{row['tcp read']:>10.1f}{row['targets CPU']:>19.2f}"
        lines.append(line)
    return "\n".join(lines)


def main(rates: list[str], size_mib: int, replicas: int = 3) -> None:
    """Measures unshaped, then at each of ``rates`` (``500mbit``), and prints the table."""
    rates = [UNSHAPED, *rates]
    rows = measure(rates, size_mib * MiB, replicas)
    print(format_table(rates, rows, size_mib, replicas))
