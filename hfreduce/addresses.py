"""Which local address a rank listens on and advertises for its links to other nodes.

In order: ``HFREDUCE_SOCKET_ADDRESS`` as given; else the first usable address of the
interfaces ``HFREDUCE_SOCKET_IFNAME`` names (gloo's and NCCL's variables work alike);
else the source address the kernel would use to reach MASTER_ADDR. When none of these
gives a usable address the rank fails naming MASTER_ADDR and the interfaces it tried:
advertising 127.0.0.1 to ranks on other hosts would only turn into a connect timeout
there, far from the cause.
"""

from __future__ import annotations

import ipaddress
import socket

import psutil

from hfreduce.errors import HfreduceError

_FIX = "set HFREDUCE_SOCKET_IFNAME to the interface other hosts reach this one on, or "
_FIX += "HFREDUCE_SOCKET_ADDRESS to this host's address"


def parse_ifnames(spec: str) -> tuple[bool, list[str]]:
    """``"eth0,eth1"`` -> (False, names to use, in order); ``"^docker0,lo"`` -> (True,
    names to skip, every other interface being used in the system's order)."""
    exclude = spec.startswith("^")
    return exclude, [name.strip() for name in spec.removeprefix("^").split(",") if name.strip()]


def advertised_address(master_addr: str, ifname: str | None, address: str | None) -> str:
    """The address this rank listens on and publishes to its partners on other nodes.

    Loopback addresses are usable only when MASTER_ADDR is loopback too (one host).
    Raises HfreduceError, one line, when no usable address is found.
    """
    if address:
        return address
    family, master_loopback = _master(master_addr)
    if ifname:
        return _from_interfaces(master_addr, family, master_loopback, ifname)
    return _from_route(master_addr, family, master_loopback)


def _master(master_addr: str) -> tuple[socket.AddressFamily, bool]:
    try:
        info = socket.getaddrinfo(master_addr, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise HfreduceError(
            f"hfreduce: MASTER_ADDR={master_addr} does not resolve ({exc.strerror})"
        ) from None
    family, *_, sockaddr = info[0]
    return family, ipaddress.ip_address(sockaddr[0]).is_loopback


def _usable(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, master_loopback: bool) -> str:
    """Why ``ip`` cannot be advertised, or "" when it can."""
    if ip.is_loopback and not master_loopback:
        return "loopback, MASTER_ADDR is not"
    if ip.is_link_local:  # an IPv6 fe80:: address needs a scope id partners do not have
        return "link-local"
    return ""


def _from_interfaces(
    master_addr: str, family: socket.AddressFamily, master_loopback: bool, spec: str
) -> str:
    table = psutil.net_if_addrs()
    exclude, names = parse_ifnames(spec)
    chosen = [n for n in table if n not in names] if exclude else names
    tried: list[str] = []
    candidates: list[tuple[int, str]] = []  # (0 for the master's family, else 1; address)
    for name in chosen:
        if name not in table:
            tried.append(f"{name} (no such interface)")
            continue
        seen = []
        for entry in table[name]:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(entry.address.split("%")[0])
            why = _usable(ip, master_loopback)
            seen.append(f"{ip}: {why}" if why else str(ip))
            if not why:
                candidates.append((0 if entry.family == family else 1, str(ip)))
        tried.append(f"{name} ({', '.join(seen) or 'no IP address'})")
    if candidates:
        # The master's family first: partners reach us the way they reach the master.
        return min(candidates, key=lambda c: c[0])[1]
    raise HfreduceError(
        f"hfreduce: no usable address to reach MASTER_ADDR={master_addr} on "
        f"HFREDUCE_SOCKET_IFNAME={spec}; tried {'; '.join(tried) or 'no interface'}: {_FIX}"
    )


def _from_route(master_addr: str, family: socket.AddressFamily, master_loopback: bool) -> str:
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((master_addr, 9))  # no packet is sent for a UDP connect
            host = probe.getsockname()[0]
        except OSError as exc:
            why = exc.strerror or str(exc)
        else:
            why = _usable(ipaddress.ip_address(host.split("%")[0]), master_loopback)
            if not why:
                return host
            why = f"the route to it leaves from {host}, {why}"
    raise HfreduceError(
        f"hfreduce: no usable address to reach MASTER_ADDR={master_addr} ({why}); "
        f"interfaces here: {_describe_interfaces()}: {_FIX}"
    )


def _describe_interfaces() -> str:
    parts = []
    for name, entries in psutil.net_if_addrs().items():
        ips = [e.address for e in entries if e.family in (socket.AF_INET, socket.AF_INET6)]
        parts.append(f"{name} ({', '.join(ips) or 'no IP address'})")
    return "; ".join(parts) or "none"


def format_endpoint(host: str, port: int) -> str:
    """``host:port``, the host bracketed when it is IPv6 (``[::1]:5000``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_endpoint(value: str) -> tuple[str, int]:
    """The inverse of :func:`format_endpoint`; also takes an unbracketed IPv4 ``host:port``."""
    host, port = value.rsplit(":", 1)
    return host.removeprefix("[").removesuffix("]"), int(port)
