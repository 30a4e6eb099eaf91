"""The test-host harness (testhosts, issue 19): real namespaces, links and TCP connections
between hosts; what it promises is checked from inside the hosts and from the machine."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import testhosts
from testhosts import Hosts, HostsError, parse_rate

MakeHosts = Callable[..., Hosts]
PORT = 7000
# Accepts connections forever; answers each with its hostname and the bytes it received.
LISTEN = (
    "import socket\n"
    "s = socket.create_server(('::', 7000), family=socket.AF_INET6, dualstack_ipv6=True)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    n = 0\n"
    "    while chunk := c.recv(1 << 16):\n"
    "        n += len(chunk)\n"
    "    c.sendall(f'{socket.gethostname()} {n}'.encode())\n"
    "    c.close()\n"
)
# Sends SIZE zero bytes to ADDRESS and prints the answer and the seconds it all took.
SEND = (
    "import socket, sys, time\n"
    "address, size, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])\n"
    "start = time.monotonic()\n"
    "with socket.create_connection((address, 7000), timeout=timeout) as c:\n"
    "    c.sendall(bytes(size))\n"
    "    c.shutdown(socket.SHUT_WR)\n"
    "    answer = c.recv(256).decode()\n"
    "print(answer, time.monotonic() - start)\n"
)


def _listen(hosts: Hosts, index: int) -> subprocess.Popen:
    server = hosts.popen(index, [sys.executable, "-c", LISTEN], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline() == "ready\n"
    return server


def _send(
    hosts: Hosts, index: int, address: str, size: int = 5, timeout: float = 20
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", SEND, address, str(size), str(timeout)]
    return hosts.run(index, argv, capture_output=True, text=True, timeout=120)


def _leftovers(prefix: str) -> list[str]:
    """Namespaces and links of the machine whose name has ``prefix``."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found = [line.split()[0] for line in names.splitlines() if line]
    found += [line.split(":")[1].strip() for line in links.splitlines()]
    return [name for name in found if name.startswith(prefix)]


@pytest.mark.hosts
def test_every_host_reaches_every_other_by_its_own_address(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(3)
    servers = [_listen(hosts, host.index) for host in hosts]
    try:
        for client in hosts:
            for server in hosts:
                if server is client:
                    continue
                sent = _send(hosts, client.index, server.address)
                assert sent.returncode == 0, sent.stderr
                assert sent.stdout.split()[:2] == [server.name, "5"]
        over_ipv6 = _send(hosts, 2, hosts[1].address6)
        assert over_ipv6.stdout.split()[:2] == [hosts[1].name, "5"], over_ipv6.stderr
    finally:
        for server in servers:
            server.kill()
            server.wait()


@pytest.mark.hosts
def test_hosts_have_no_default_route_and_the_bridge_no_uplink(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(2)
    for host in hosts:
        for family in ("-4", "-6"):
            routes = hosts.run(
                host.index, ["ip", family, "route", "show", "default"], capture_output=True
            )
            assert routes.returncode == 0 and routes.stdout == b"", routes
    ports = subprocess.run(
        ["ip", "-o", "link", "show", "master", hosts.bridge], capture_output=True, text=True
    ).stdout
    assert sorted(line.split(":")[1].strip().split("@")[0] for line in ports.splitlines()) == [
        host.veth for host in hosts
    ]


@pytest.mark.hosts
def test_reachable_hosts_answer_the_machine_until_cut_off(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(2, reachable=True)
    assert Hosts.attach(hosts.prefix).reachable
    server = _listen(hosts, 2)
    try:
        with socket.create_connection((hosts[2].address, PORT), timeout=20) as c:
            c.sendall(b"hello")
            c.shutdown(socket.SHUT_WR)
            assert c.recv(256).decode().split() == [hosts[2].name, "5"]
        hosts.cut(2)
        with pytest.raises(OSError):
            socket.create_connection((hosts[2].address, PORT), timeout=2).close()
    finally:
        server.kill()
        server.wait()


@pytest.mark.hosts
def test_each_host_has_its_own_name_tmp_and_folder(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(2)
    write = (
        "import socket; open('/tmp/mine', 'w').write(socket.gethostname()); open('f', 'w');"
        "open('/dev/shm/seg', 'w')"
    )
    assert hosts.run(1, [sys.executable, "-c", write]).returncode == 0
    assert (hosts[1].dir / "tmp" / "mine").read_text() == hosts[1].name
    assert (hosts[1].dir / "shm" / "seg").exists() and not (hosts[2].dir / "shm" / "seg").exists()
    assert (hosts[1].dir / "f").exists()
    # Host 2 sees neither host 1's /tmp nor its folder.
    look = f"import os; print(os.path.exists('/tmp/mine'), os.listdir('{hosts[1].dir}'))"
    seen = hosts.run(2, [sys.executable, "-c", look], capture_output=True, text=True)
    assert seen.stdout.strip() == "False []", seen.stderr
    # Each host resolves its own name and the others' to their bridge addresses.
    lookup = "import socket, sys; print(*(socket.gethostbyname(n) for n in sys.argv[1:]))"
    argv = [sys.executable, "-c", lookup, hosts[2].name, hosts[1].name]
    resolved = hosts.run(2, argv, capture_output=True, text=True)
    assert resolved.stdout.split() == [hosts[2].address, hosts[1].address], resolved.stderr


@pytest.mark.hosts
def test_code_under_tmp_stays_visible_on_the_hosts(tmp_path: Path) -> None:
    # A checkout under /tmp (CI's clone, say) must run on hosts, whose /tmp is their own.
    # Started in tmp_path, python imports that copy rather than the installed one.
    shutil.copytree(Path(testhosts.__file__).parent, tmp_path / "testhosts")
    probe = (
        "import json, os, testhosts\n"
        "with testhosts.Hosts.up(1) as hosts:\n"
        "    ls = lambda path: hosts.run(1, ['ls', path], capture_output=True, text=True).stdout\n"
        "    here = os.path.dirname(testhosts.__file__)\n"
        "    print(json.dumps([testhosts.__file__, ls(here).split(), ls('/tmp').split()]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert done.returncode == 0, done.stderr
    where, files, host_tmp = json.loads(done.stdout)
    assert where == str(tmp_path / "testhosts" / "__init__.py")
    assert "hosts.py" in files
    # The host's own /tmp holds just the ways down to the kept folders (this copy, and the
    # Python environment where it lies under /tmp too, as in a CI clone), not the machine's.
    kept = [tmp_path, *(Path(p).resolve() for p in (sys.prefix, sys.base_prefix))]
    tops = {p.relative_to("/tmp").parts[0] for p in kept if p.is_relative_to("/tmp")}
    assert sorted(host_tmp) == sorted(tops)


@pytest.mark.hosts
def test_a_cut_off_host_keeps_its_processes_and_connects_again_after_restore(
    make_hosts: MakeHosts,
) -> None:
    hosts = make_hosts(3)
    server = _listen(hosts, 1)
    sleeper = hosts.popen(2, ["sleep", "600"])
    try:
        hosts.cut(2)
        assert _send(hosts, 2, hosts[1].address, timeout=1).returncode != 0
        assert _send(hosts, 3, hosts[2].address, timeout=1).returncode != 0
        assert _send(hosts, 3, hosts[1].address).returncode == 0  # the others still talk
        assert sleeper.poll() is None
        hosts.restore(2)
        back = _send(hosts, 2, hosts[1].address)
        assert back.stdout.split()[:2] == [hosts[1].name, "5"], back.stderr
    finally:
        for process in (server, sleeper):
            process.kill()
            process.wait()


@pytest.mark.hosts
def test_a_shaped_link_bounds_throughput(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(2)
    server = _listen(hosts, 1)
    try:
        hosts.shape(2, "20mbit")
        size = 4 << 20
        sent = _send(hosts, 2, hosts[1].address, size=size)
        name, received, seconds = sent.stdout.split()
        assert int(received) == size, sent.stderr
        # A sanity bound, not a speed claim: 4 MiB at 20 Mbit/s needs 1.68 s.
        assert float(seconds) > 0.8
        hosts.unshape(2)
        qdisc = subprocess.run(["tc", "qdisc", "show", "dev", hosts[2].veth], capture_output=True)
        assert b"tbf" not in qdisc.stdout
    finally:
        server.kill()
        server.wait()


@pytest.mark.hosts
def test_down_removes_everything_also_when_the_body_raised() -> None:
    with pytest.raises(RuntimeError, match="test body failed"):
        with Hosts.up(2) as hosts:
            sleeper = hosts.popen(1, ["sleep", "600"])
            assert _leftovers(hosts.prefix) != []
            raise RuntimeError("test body failed")
    assert sleeper.wait(timeout=30) == -9
    assert _leftovers(hosts.prefix) == []
    assert not hosts.run_dir.exists() and not hosts.base.exists()


@pytest.mark.hosts
def test_hosts_left_up_are_removed_when_the_interpreter_exits() -> None:
    crash = "from testhosts import Hosts; print(Hosts.up(2).prefix, flush=True); 1 / 0"
    done = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True)
    assert done.returncode == 1 and "ZeroDivisionError" in done.stderr
    prefix = done.stdout.strip()
    assert prefix.startswith("ffh") and _leftovers(prefix) == []


def test_rates_and_bad_input() -> None:
    assert parse_rate("20mbit") == 20_000_000
    assert parse_rate("2.5Gbit") == 2_500_000_000
    with pytest.raises(ValueError, match="'fast' is not like 20mbit"):
        parse_rate("fast")
    with pytest.raises(HostsError, match="outside 1..250"):
        Hosts.up(0)
    with pytest.raises(HostsError, match="'eth0' is no test hosts prefix"):
        Hosts("eth0", 1)


def test_the_command_line_says_what_is_wrong_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "testhosts", "cut", "--prefix", "ffh0000", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr == "Error: no test hosts named 'ffh0000'; see python -m testhosts list\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can run a test as another account")
def test_the_probe_says_why_hosts_cannot_be_made_without_root() -> None:
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = "from testhosts import hosts_missing; print(hosts_missing())"
    done = subprocess.run(
        [*nobody, sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert done.stdout.startswith("not root"), done.stderr
