"""An fs3 cluster spread over test hosts (:mod:`testhosts`, docs/hosts.md), for the
several-hosts tests and ``python -m fs3.bench --hosts``.

:func:`placement` tells a :class:`fs3.cluster.LocalCluster` which host each process runs
on: it then listens on and announces that host's address. The cluster folder must be one
every host sees (not /tmp, which is each host's own); it stays 0700, the secret and the
admin token in it 0600.

``python -m fs3.on_hosts write|read PATH [SIZE]`` is the client a test or the benchmark
runs on a host (``FS3_CLUSTER`` and ``FS3_TOKEN`` in its environment): it writes SIZE bytes
that depend only on SIZE and PATH, or reads PATH, and prints one JSON line: ``bytes``,
``sha256``, ``seconds`` and ``local_reads`` (chunks read through the zero-copy local path).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from collections.abc import Mapping
from typing import Any

from fs3.errors import ConfigError
from fs3.processes import Placement

MiB = 1 << 20
BLOCK = 4 * MiB
"""What the client program writes and reads per call: one default chunk."""


def placement(hosts: Any, where: Mapping[str, int], ipv6: bool = False) -> Placement:
    """A placement running process ``name`` on test host ``where[name]`` (``"client"``
    included), on its IPv4 address, or its IPv6 one with ``ipv6``; each command starts
    from ``/`` (a cluster folder's parent may hold a folder named fs3).

    ``hosts`` is a ``testhosts.Hosts``. Raises ConfigError for a process ``where`` omits.
    """

    def place(name: str) -> tuple[str, Any]:
        if name not in where:
            raise ConfigError(f"no test host given for fs3 process {name}")
        host = hosts[where[name]]
        return (host.address6 if ipv6 else host.address), (
            lambda argv: hosts.command(host.index, argv, cwd="/")
        )

    return place


def data_for(path: str, size: int) -> bytes:
    """``size`` pseudo-random bytes fixed by ``path`` and ``size``: a reader elsewhere checks
    them by hash without the writer's copy."""
    rng = random.Random(f"{path}:{size}")
    # In blocks: randbytes of more than 2**31 bits at once overflows.
    return b"".join(rng.randbytes(min(BLOCK, size - off)) for off in range(0, size, BLOCK))


def _io(action: str, path: str, size: int) -> dict[str, Any]:
    from fs3.client import FS3FileSystem

    fs = FS3FileSystem(skip_instance_cache=True)
    digest = hashlib.sha256()
    if action == "write":
        data = data_for(path, size)
        view = memoryview(data)  # slices without copies
        start = time.perf_counter()
        with fs.open(path, "wb") as f:
            for off in range(0, size, BLOCK):
                f.write(view[off : off + BLOCK])
        seconds = time.perf_counter() - start
        digest.update(data)
    else:
        blocks = []  # hashed after the clock stops: the benchmark times the reads alone
        start = time.perf_counter()
        with fs.open(path, "rb") as f:
            while block := f.read(BLOCK):
                blocks.append(block)
        seconds = time.perf_counter() - start
        for block in blocks:
            digest.update(block)
        size = sum(len(b) for b in blocks)
    local = fs.chunks.local.stats.reads if fs.chunks.local else 0
    return {"bytes": size, "sha256": digest.hexdigest(), "seconds": seconds, "local_reads": local}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fs3.on_hosts", description=__doc__)
    parser.add_argument("action", choices=["write", "read"])
    parser.add_argument("path")
    parser.add_argument("size", type=int, nargs="?", default=0, help="bytes to write")
    args = parser.parse_args(argv)
    print(json.dumps(_io(args.action, args.path, args.size)), flush=True)


if __name__ == "__main__":
    main()
