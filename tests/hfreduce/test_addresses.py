"""Which address a rank advertises to other nodes, IPv6 links, and node ids checked
against the host each rank really runs on."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
import torch

import hfreduce
from hfreduce.addresses import advertised_address, format_endpoint, parse_endpoint
from hfreduce.config import load_config
from hfreduce.errors import ConfigError, HfreduceError
from hfreduce.launch import run_ranks
from hfreduce.topology import check_node_hosts, host_identity

ENV = {"HFREDUCE_CHUNK_BYTES": "4096", "HFREDUCE_TIMEOUT": "30"}
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (unshare --net)")


def _loopback_name() -> str:
    return next(n for n, es in psutil.net_if_addrs().items() if any(e.address == "::1" for e in es))


# -- resolution order -------------------------------------------------------------------


def test_the_address_override_wins() -> None:
    assert advertised_address("127.0.0.1", "nosuch0", "192.0.2.7") == "192.0.2.7"


def test_without_settings_the_route_to_the_master_decides() -> None:
    assert advertised_address("127.0.0.1", None, None) == "127.0.0.1"
    assert advertised_address("::1", None, None) == "::1"
    assert advertised_address("localhost", None, None) in ("127.0.0.1", "::1")


def test_a_named_interface_gives_its_address_in_the_masters_family() -> None:
    lo = _loopback_name()
    assert advertised_address("127.0.0.1", lo, None) == "127.0.0.1"
    assert advertised_address("::1", lo, None) == "::1"
    # Names are tried in order: a missing first one falls through to the next.
    assert advertised_address("::1", f"nosuch0,{lo}", None) == "::1"


def test_a_bad_interface_name_is_one_line_naming_master_and_interfaces() -> None:
    with pytest.raises(HfreduceError) as caught:
        advertised_address("127.0.0.1", "nosuch0", None)
    message = str(caught.value)
    assert "MASTER_ADDR=127.0.0.1" in message and "nosuch0 (no such interface)" in message
    assert "HFREDUCE_SOCKET_ADDRESS" in message and "\n" not in message


def test_excluding_every_interface_leaves_nothing() -> None:
    every = ",".join(psutil.net_if_addrs())
    with pytest.raises(HfreduceError, match="tried no interface"):
        advertised_address("127.0.0.1", f"^{every}", None)


def test_loopback_is_refused_when_the_master_is_another_host() -> None:
    # 192.0.2.1 (TEST-NET-1) is no host's address; only lo is offered to reach it.
    with pytest.raises(HfreduceError) as caught:
        advertised_address("192.0.2.1", _loopback_name(), None)
    assert "127.0.0.1: loopback, MASTER_ADDR is not" in str(caught.value)


def test_an_unresolvable_master_is_named() -> None:
    with pytest.raises(HfreduceError, match=r"MASTER_ADDR=no-such-host\.invalid does not"):
        advertised_address("no-such-host.invalid", None, None)


def test_endpoints_round_trip_for_both_families() -> None:
    for host in ("10.1.2.3", "::1", "fd00::5"):
        assert parse_endpoint(format_endpoint(host, 4242)) == (host, 4242)
    assert format_endpoint("::1", 80) == "[::1]:80"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"HFREDUCE_SOCKET_ADDRESS": "eth0"}, "socket_address: must be an IPv4 or IPv6 address"),
        ({"HFREDUCE_SOCKET_IFNAME": "^,"}, "socket_ifname: must name at least one interface"),
    ],
)
def test_bad_socket_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        load_config()


# -- across real ranks ------------------------------------------------------------------


def _sum_once() -> torch.Tensor:
    comm = hfreduce.init()
    x = torch.arange(5000, dtype=torch.float32) * (comm.rank + 1)
    comm.all_reduce(x)
    hfreduce.destroy()
    return x


def test_two_nodes_sum_over_ipv6_loopback() -> None:
    outcomes = run_ranks(
        _sum_once, nodes=2, ranks_per_node=1, env=ENV, master_addr="::1", timeout=60
    )
    want = torch.arange(5000, dtype=torch.float32) * 3
    assert all(torch.equal(o.value, want) for o in outcomes)


def test_the_address_override_is_where_partners_connect() -> None:
    env = {**ENV, "HFREDUCE_SOCKET_ADDRESS": "::1"}  # the master is 127.0.0.1
    outcomes = run_ranks(_sum_once, nodes=2, ranks_per_node=1, env=env, timeout=60)
    assert all(torch.equal(o.value, torch.arange(5000, dtype=torch.float32) * 3) for o in outcomes)


def test_a_bad_interface_fails_every_rank_at_init() -> None:
    env = {**ENV, "HFREDUCE_SOCKET_IFNAME": "nosuch0"}
    outcomes = run_ranks(_sum_once, nodes=2, ranks_per_node=1, env=env, timeout=60, check=False)
    for o in outcomes:
        assert o.error is not None and "nosuch0 (no such interface)" in o.error


# -- node identity ----------------------------------------------------------------------


def test_ranks_of_one_node_on_two_hosts_are_refused() -> None:
    hosts = [("a", "boot 1, netns 5"), ("a", "boot 1, netns 5"), ("b", "boot 2, netns 5")]
    check_node_hosts(["n0", "n0", "n1"], hosts)  # one host per node: fine
    with pytest.raises(HfreduceError) as caught:
        check_node_hosts(["n0", "n1", "n0"], hosts)
    message = str(caught.value)
    assert "ranks 0 and 2 both have node id 'n0'" in message
    assert "a: boot 1, netns 5; b: boot 2, netns 5" in message
    assert "set HFREDUCE_NODE_ID per host" in message


_RANK = textwrap.dedent(
    """
    import sys
    from torch.distributed import FileStore
    from hfreduce.communicator import Communicator
    from hfreduce.config import load_config
    from hfreduce.errors import HfreduceError

    rank = int(sys.argv[2])
    try:
        Communicator(FileStore(sys.argv[1], 2), rank, 2, node_id="same",
                     config=load_config(timeout_s=30))
    except HfreduceError as exc:
        print(exc)
        sys.exit(1)
    """
)


@needs_root
def test_one_node_id_on_two_network_namespaces_fails_every_rank(tmp_path: Path) -> None:
    """Two hosts that share a file system but not a network namespace, as the test hosts of
    this machine do: a file store joins them without any network between them."""
    store = str(tmp_path / "store")
    commands = [
        [sys.executable, "-c", _RANK, store, "0"],
        ["unshare", "--net", sys.executable, "-c", _RANK, store, "1"],
    ]
    procs = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c in commands
    ]
    results = [p.communicate(timeout=60) for p in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 1, err
        assert "ranks 0 and 1 both have node id 'same' but run on different hosts" in out
        assert host_identity() in out  # rank 0's host is named, the other netns beside it


@needs_root
def test_no_route_to_the_master_is_an_error_not_loopback() -> None:
    """A fresh network namespace has only lo, and lo down: no route to any master."""
    probe = "from hfreduce.addresses import advertised_address as a; a('192.0.2.1', None, None)"
    proc = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", probe], capture_output=True, text=True
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "no usable address to reach MASTER_ADDR=192.0.2.1 (Network is unreachable)" in last
    assert "interfaces here: lo (" in last and "HFREDUCE_SOCKET_IFNAME" in last
