"""N test hosts on this machine: one network, mount and UTS namespace per host.

Why namespaces: the stack must not assume one host (ARCHITECTURE.md, "Hosts"), and a real
second machine is not at hand in tests, benchmarks or CI. Each host gets

- an address ``198.18.0.I/15`` and ``2001:2::I/64`` on ``eth0``, the ranges set aside for
  network benchmarks (RFC 2544, RFC 5180); every ``eth0`` is a veth whose other end sits on
  one bridge with no uplink and no address, and no host has a default route, so no packet
  leaves the machine;
- its own loopback, hostname (``PREFIX-I``), ``/tmp`` and ``/dev/shm`` (``tmp/`` and a
  tmpfs on ``shm/`` in its own ``Host.dir``), while the other hosts' folders are hidden;
- an ``/etc/hosts`` naming every host of the instance;
- its processes started through ``nsenter``, so they are ordinary children of the caller.

Every name starts with the instance's prefix (``ffh`` + 4 random hex digits), so parallel
or leftover instances never collide and ``down`` finds all of its own leftovers.
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("testhosts")

FAMILY = "ffh"
"""Every instance's prefix starts with this, then 4 hex digits: ``ffh3fa2``."""
RUN_DIR = Path("/run/testhosts")
"""Per instance: the files that keep its mount and UTS namespaces, and ``hosts.json``."""
BASE_DIR = Path("/var/tmp/testhosts")
"""Per instance: the hosts' folders. Not under /tmp, which each host replaces with its own."""
NET4 = ipaddress.ip_network("198.18.0.0/15")
NET6 = ipaddress.ip_network("2001:2::/64")
MACHINE4 = NET4[-2]
"""The machine's own address on the bridge when it is to reach the hosts (``reachable``)."""
MAX_HOSTS = 250
"""Keeps ``198.18.0.I`` in one octet and every interface name within Linux's 15 characters."""
_TOOLS = ("ip", "tc", "nsenter", "unshare", "mount", "umount")
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}


TMP = Path("/tmp")


def _code_under(folder: Path) -> list[Path]:
    """Where the code hosts run (this checkout or installation, the Python environment)
    lies under ``folder``, relative to it: each host replaces ``folder`` with its own."""
    code = {Path(__file__).resolve().parents[1], Path(sys.prefix), Path(sys.base_prefix)}
    under = {path.resolve() for path in code}
    under = {p for p in under if p.is_relative_to(folder) and p != folder}
    # A folder inside another kept one comes with it.
    tops = {p for p in under if not any(p != q and p.is_relative_to(q) for q in under)}
    return sorted(p.relative_to(folder) for p in tops)


class HostsError(RuntimeError):
    """A namespace, link or qdisc could not be made or removed; the message says which."""


def hosts_missing() -> str | None:
    """Why test hosts cannot be made here (not root, a tool missing), or None when they can."""
    if os.geteuid() != 0:
        return "not root (network namespaces need CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    for tool in _TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} not found (Debian: apt-get install iproute2 util-linux mount)"
    return None


def parse_rate(rate: str | int) -> int:
    """A link rate in bits per second from ``20mbit``, ``2gbit``, ``500kbit`` or an int.

    Raises ValueError naming the value when it is neither.
    """
    if isinstance(rate, int):
        bits = rate
    else:
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?bit)?", rate.strip().lower())
        if match is None:
            raise ValueError(f"link rate {rate!r} is not like 20mbit, 2gbit or 500kbit")
        bits = int(float(match[1]) * _RATE_UNITS[match[2] or "bit"])
    if bits < 8000:
        raise ValueError(f"link rate {rate!r} is below 8kbit; tbf cannot shape that slowly")
    return bits


def _sh(argv: Sequence[str], check: bool = True) -> str:
    """Runs one ip/tc/mount command; a failure is one HostsError line with its stderr."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        why = (result.stderr or result.stdout).strip().splitlines()
        raise HostsError(f"{' '.join(argv)} failed: {why[-1] if why else result.returncode}")
    return result.stdout


def _is_mount_point(path: Path) -> bool:
    # os.path.ismount misses a folder bound onto itself (same device as its parent).
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return any(line.split()[4] == str(path) for line in lines)


@dataclass(frozen=True)
class Host:
    """One test host; ``index`` counts from 1."""

    index: int
    name: str
    """Its network namespace's name and its hostname: ``PREFIX-I``."""
    address: str
    """Its IPv4 address on the hosts' bridge."""
    address6: str
    """Its IPv6 address on the hosts' bridge."""
    dir: Path
    """Its own folder, same path inside and outside; its /tmp and /dev/shm live under it."""
    veth: str
    """The bridge-side end of its link, in the machine's own namespace."""


class Hosts:
    """A set of test hosts. Make one with ``Hosts.up(n)``; ``down()`` (or leaving a ``with``
    block, or the interpreter's exit) removes every namespace, link and folder it made."""

    def __init__(self, prefix: str, count: int, reachable: bool = False) -> None:
        """Names an instance; use ``up`` to make one and ``attach`` to find one made earlier."""
        # down() removes whatever bears the prefix: never let it match foreign names.
        if not re.fullmatch(rf"{FAMILY}[0-9a-f]{{4}}", prefix):
            raise HostsError(f"{prefix!r} is no test hosts prefix (like {FAMILY}3fa2)")
        self.prefix = prefix
        self.reachable = reachable
        self.bridge = f"{prefix}-br"
        self.run_dir = RUN_DIR / prefix
        self.base = BASE_DIR / prefix
        self.hosts = [
            Host(
                index=i,
                name=f"{prefix}-{i}",
                address=str(NET4[i]),
                address6=str(NET6[i]),
                dir=self.base / str(i),
                veth=f"{prefix}-{i}",
            )
            for i in range(1, count + 1)
        ]

    # -- making and finding ------------------------------------------------------------

    @classmethod
    def up(cls, count: int, *, down_at_exit: bool = True, reachable: bool = False) -> Hosts:
        """Makes ``count`` hosts (1..250). With ``down_at_exit`` (the default) they are also
        removed when the interpreter exits; by-hand use passes False to keep them. With
        ``reachable`` the machine itself gets ``MACHINE4`` on the bridge, so a process
        outside every host (a benchmark's or demo's driver) reaches them all; the hosts
        still have no route beyond the bridge.

        Raises HostsError when this machine cannot (see ``hosts_missing``) or a step fails;
        whatever was made by then is removed first.
        """
        if not 1 <= count <= MAX_HOSTS:
            raise HostsError(f"host count {count} is outside 1..{MAX_HOSTS}")
        missing = hosts_missing()
        if missing is not None:
            raise HostsError(f"cannot make test hosts: {missing}")
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        while True:  # mkdir reserves the prefix against a parallel instance
            prefix = f"{FAMILY}{secrets.token_hex(2)}"
            try:
                (RUN_DIR / prefix).mkdir()
                break
            except FileExistsError:
                continue
        hosts = cls(prefix, count, reachable)
        if down_at_exit:
            atexit.register(hosts.down)
        try:
            hosts._make()
        except BaseException:
            hosts.down()
            raise
        return hosts

    @classmethod
    def attach(cls, prefix: str) -> Hosts:
        """The instance ``prefix`` made earlier (by another process, e.g. ``up`` by hand)."""
        try:
            state = json.loads((RUN_DIR / prefix / "hosts.json").read_text())
        except FileNotFoundError:
            raise HostsError(
                f"no test hosts named {prefix!r}; see python -m testhosts list"
            ) from None
        return cls(prefix, state["count"], state.get("reachable", False))

    @staticmethod
    def instances() -> list[str]:
        """The prefixes of the instances on this machine, made by any process."""
        if not RUN_DIR.is_dir():
            return []
        return sorted(p.parent.name for p in RUN_DIR.glob(f"{FAMILY}*/hosts.json"))

    def _make(self) -> None:
        # The namespace files must sit on a private mount, or binding them fails (EINVAL).
        _sh(["mount", "--bind", str(self.run_dir), str(self.run_dir)])
        _sh(["mount", "--make-private", str(self.run_dir)])
        (self.run_dir / "hosts.json").write_text(
            json.dumps(
                {"prefix": self.prefix, "count": len(self.hosts), "reachable": self.reachable}
            )
        )
        _sh(["ip", "link", "add", self.bridge, "type", "bridge"])
        # A machine with br_netfilter would pass bridged packets through its iptables.
        _sh(["ip", "link", "set", self.bridge, "type", "bridge", "nf_call_iptables", "0"])
        self._no_ipv6_here(self.bridge)
        if self.reachable:
            _sh(["ip", "addr", "add", f"{MACHINE4}/{NET4.prefixlen}", "dev", self.bridge])
        _sh(["ip", "link", "set", self.bridge, "up"])
        # Every host resolves every host's name, as a cluster's DNS would: gloo and c10d
        # look up their own host name to find the address they announce.
        names = "".join(f"{h.address} {h.name}\n{h.address6} {h.name}\n" for h in self.hosts)
        self.base.mkdir(parents=True)
        (self.base / "hosts").write_text(f"127.0.0.1 localhost\n::1 localhost\n{names}")
        # All folders first: each host's mount namespace hides the others' folders.
        for host in self.hosts:
            for sub in ("tmp", "shm"):
                (host.dir / sub).mkdir(parents=True)
                (host.dir / sub).chmod(0o1777)
            # Shared memory stays in memory, as on a real host (the folder is on disk).
            shm = str(host.dir / "shm")
            _sh(["mount", "-t", "tmpfs", "-o", "mode=1777", f"{host.name}-shm", shm])
        for host in self.hosts:
            self._make_host(host)
        log.info("made %d test hosts %s-1..%d", len(self.hosts), self.prefix, len(self.hosts))

    def _make_host(self, host: Host) -> None:
        ns = host.name
        _sh(["ip", "netns", "add", ns])
        _sh(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
        self._no_ipv6_here(host.veth)
        _sh(["ip", "link", "set", host.veth, "master", self.bridge, "up"])
        _sh(["ip", "-n", ns, "addr", "add", f"{host.address}/{NET4.prefixlen}", "dev", "eth0"])
        # nodad: the address is usable at once instead of after duplicate detection.
        _sh(["ip", "-n", ns, "addr", "add", f"{host.address6}/64", "dev", "eth0", "nodad"])
        _sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        _sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        hidden = " ".join(shlex.quote(str(other.dir)) for other in self.hosts if other is not host)
        own_tmp = host.dir / "tmp"
        # The code every host runs stays visible where a checkout under /tmp put it (CI's
        # clone, say): bound into the host's own /tmp at the same place.
        keep = "".join(
            f"mkdir -p {shlex.quote(str(own_tmp / rel))}\n"
            f"mount --bind {shlex.quote(str(TMP / rel))} {shlex.quote(str(own_tmp / rel))}\n"
            for rel in _code_under(TMP)
        )
        script = (
            "set -e\n"
            f"hostname {shlex.quote(host.name)}\n"
            # A sysfs of the host's own network namespace, as `ip netns exec` does.
            "umount -l /sys\n"
            "mount -t sysfs sysfs /sys\n"
            f"{keep}"
            f"mount --rbind {shlex.quote(str(own_tmp))} /tmp\n"
            f"mount --bind {shlex.quote(str(host.dir / 'shm'))} /dev/shm\n"
            f"mount --bind {shlex.quote(str(self.base / 'hosts'))} /etc/hosts\n"
            f'for d in {hidden}; do mount -t tmpfs -o ro,size=4k,mode=0 hidden "$d"; done\n'
        )
        mnt, uts = self._ns_files(host)
        mnt.touch()
        uts.touch()
        # nsenter --net first, so the new mount namespace's sysfs shows this host's links;
        # unshare binds the new namespaces to the files, which keep them without a process.
        _sh(
            [
                "nsenter",
                f"--net=/run/netns/{ns}",
                "unshare",
                f"--mount={mnt}",
                f"--uts={uts}",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
            ]
        )

    def _ns_files(self, host: Host) -> tuple[Path, Path]:
        return self.run_dir / f"{host.index}.mnt", self.run_dir / f"{host.index}.uts"

    @staticmethod
    def _no_ipv6_here(link: str) -> None:
        # The machine's own ends take no IPv6 link-local address: it is no host of the net.
        knob = Path(f"/proc/sys/net/ipv6/conf/{link}/disable_ipv6")
        if knob.exists():
            knob.write_text("1")

    # -- using -------------------------------------------------------------------------

    def __getitem__(self, index: int) -> Host:
        """Host ``index``, counting from 1."""
        if not 1 <= index <= len(self.hosts):
            raise HostsError(f"no host {index}: {self.prefix} has hosts 1..{len(self.hosts)}")
        return self.hosts[index - 1]

    def __len__(self) -> int:
        return len(self.hosts)

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts)

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def command(self, index: int, argv: Sequence[str], cwd: str | Path | None = None) -> list[str]:
        """``argv`` wrapped to run on host ``index``, in ``cwd`` (default: the host's folder).

        The program replaces nsenter (no fork), so its pid is the Popen's pid.
        """
        host = self[index]
        mnt, uts = self._ns_files(host)
        return [
            "nsenter",
            f"--net=/run/netns/{host.name}",
            f"--mount={mnt}",
            f"--uts={uts}",
            f"--wdns={cwd or host.dir}",
            "--",
            *argv,
        ]

    def popen(
        self, index: int, argv: Sequence[str], cwd: str | Path | None = None, **kwargs: Any
    ) -> subprocess.Popen:
        """Starts ``argv`` on host ``index``; ``kwargs`` go to ``subprocess.Popen``."""
        return subprocess.Popen(self.command(index, argv, cwd), **kwargs)

    def run(
        self, index: int, argv: Sequence[str], cwd: str | Path | None = None, **kwargs: Any
    ) -> subprocess.CompletedProcess:
        """Runs ``argv`` on host ``index`` to its end; ``kwargs`` go to ``subprocess.run``."""
        return subprocess.run(self.command(index, argv, cwd), **kwargs)

    def cut(self, index: int) -> None:
        """Cuts host ``index`` off the network: its bridge-side link goes down, so nothing
        reaches it or leaves it; its processes and addresses stay as they are."""
        _sh(["ip", "link", "set", self[index].veth, "down"])

    def restore(self, index: int) -> None:
        """Connects host ``index`` again after ``cut``; returns once its link is up.

        Raises HostsError when the link is not up within 10 s.
        """
        host = self[index]
        _sh(["ip", "link", "set", host.veth, "up"])
        # The kernel reports the carrier back asynchronously (linkwatch, up to a second).
        deadline = time.monotonic() + 10
        while "LOWER_UP" not in _sh(["ip", "-n", host.name, "-o", "link", "show", "eth0"]):
            if time.monotonic() > deadline:
                raise HostsError(f"{host.name}: eth0 is not up 10 s after restore")
            time.sleep(0.02)
        # Addresses that failed to resolve while it was cut off would answer "no route to
        # host" for a while longer; forget them on every host.
        for other in self.hosts:
            _sh(["ip", "-n", other.name, "neigh", "flush", "dev", "eth0"])

    def shape(
        self, index: int, rate: str | int, burst: int | None = None, latency: str = "50ms"
    ) -> None:
        """Limits host ``index``'s link to ``rate`` (``20mbit`` or bits/s) each way with tbf.

        ``burst`` (bytes) defaults to 4 ms of traffic but at least 64 KiB, one full GSO
        packet of a veth (a smaller bucket makes tbf split every packet). ``latency`` bounds
        how long a packet may wait in the queue before it is dropped.
        """
        bits = parse_rate(rate)
        burst = burst or max(64 * 1024, bits // 8 // 250)
        tbf = ["root", "tbf", "rate", f"{bits}bit", "burst", str(burst), "latency", latency]
        host = self[index]
        _sh(["tc", "qdisc", "replace", "dev", host.veth, *tbf])
        _sh(["tc", "-n", host.name, "qdisc", "replace", "dev", "eth0", *tbf])

    def unshape(self, index: int) -> None:
        """Takes ``shape``'s limit off host ``index``'s link (nothing to do if none)."""
        host = self[index]
        _sh(["tc", "qdisc", "del", "dev", host.veth, "root"], check=False)
        _sh(["tc", "-n", host.name, "qdisc", "del", "dev", "eth0", "root"], check=False)

    # -- removing ----------------------------------------------------------------------

    def down(self) -> None:
        """Kills the hosts' processes and removes every namespace, link, mount and folder
        whose name has this instance's prefix, also what a failed ``up`` left half made.

        Raises HostsError naming what is still there afterwards.
        """
        atexit.unregister(self.down)
        for ns in self._namespaces():
            self._kill_processes(ns)
            _sh(["ip", "netns", "del", ns], check=False)
        for link in self._links():
            _sh(["ip", "link", "del", link], check=False)
        if self.run_dir.is_dir():
            for file in self.run_dir.glob("*.mnt"):
                _sh(["umount", str(file)], check=False)
            for file in self.run_dir.glob("*.uts"):
                _sh(["umount", str(file)], check=False)
            while _is_mount_point(self.run_dir):
                _sh(["umount", str(self.run_dir)])
            shutil.rmtree(self.run_dir, ignore_errors=True)
        for shm in self.base.glob("*/shm"):
            while _is_mount_point(shm):
                _sh(["umount", str(shm)])
        shutil.rmtree(self.base, ignore_errors=True)
        left = self._namespaces() + self._links()
        left += [str(p) for p in (self.run_dir, self.base) if p.exists()]
        if left:
            raise HostsError(f"test hosts {self.prefix}: could not remove {', '.join(left)}")
        log.info("removed test hosts %s", self.prefix)

    def _namespaces(self) -> list[str]:
        names = [line.split()[0] for line in _sh(["ip", "netns", "list"]).splitlines() if line]
        return [ns for ns in names if ns.startswith(f"{self.prefix}-")]

    def _links(self) -> list[str]:
        # `ip -o link` lines read "7: ffh3fa2-1@if6: <...": the name ends at '@' or ':'.
        names = [line.split(":")[1].strip() for line in _sh(["ip", "-o", "link"]).splitlines()]
        names = [name.split("@")[0] for name in names]
        return [name for name in names if name.startswith(f"{self.prefix}-")]

    @staticmethod
    def _kill_processes(ns: str) -> None:
        pids = [int(pid) for pid in _sh(["ip", "netns", "pids", ns], check=False).split()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # A killed process leaves the namespace only once it is gone (or a zombie).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _sh(["ip", "netns", "pids", ns], check=False):
            time.sleep(0.05)
