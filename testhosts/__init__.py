"""Test hosts: several Linux network namespaces on one machine, each with its own address,
hostname and folders, for tests and benchmarks that need more than one host (issue 19).

See docs/hosts.md; ``python -m testhosts --help`` drives it by hand.
"""

from testhosts.hosts import Host, Hosts, HostsError, hosts_missing, parse_rate

__all__ = ["Host", "Hosts", "HostsError", "hosts_missing", "parse_rate"]
