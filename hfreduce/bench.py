"""``python -m hfreduce.bench``: hfreduce against torch.distributed's gloo, same run.

For each layout (ranks per virtual node x nodes) and size, every rank times gloo's and
hfreduce's all-reduce of the same float32 tensor (median of the timed calls after
warm-up, each call started together after a barrier), beside a single-rank memcpy of
the same size as the roofline. With a GPU it also times hfreduce on CUDA tensors
against a bare pinned device-to-host + host-to-device round trip.

With ``--hosts NODESxRANKS --link RATE`` the ranks run on test hosts instead
(docs/hosts.md: one network namespace per node, links shaped to RATE with tbf), and each
row is set beside the link bound: an all-reduce of S bytes between nodes must send at
least S bytes each way per node, so no call can take less than S / RATE.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from hfreduce.launch import rank_environment, run_ranks
from testhosts import Hosts, hosts_missing, parse_rate

SIZES = [4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20]
LAYOUTS = [(1, 2), (1, 4), (2, 2)]  # (nodes, ranks per node)


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process so far, all of its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(
    call: Callable[[], object], barrier: Callable[[], object], iters: int
) -> tuple[float, float]:
    """(median wall ms, mean CPU ms of this process) per call, after two warm-up calls.

    The CPU time shows where a layout runs out of cores: when the ranks' CPU time summed
    over ranks reaches cores x wall time, only doing less work makes a call faster.
    """
    for _ in range(2):  # warm-up: first-touch page faults, lazy set-up
        barrier()
        call()
    times = []
    cpu = 0.0
    for _ in range(iters):
        barrier()
        start, cpu_start = time.perf_counter(), _cpu_s()
        call()
        times.append(time.perf_counter() - start)
        cpu += _cpu_s() - cpu_start
    return statistics.median(times) * 1e3, cpu / iters * 1e3


def _median_ms(call: Callable[[], object], barrier: Callable[[], object], iters: int) -> float:
    return _timed(call, barrier, iters)[0]


def _rank_bench(sizes: list[int], iters: int) -> dict[int, tuple]:
    """Per size, for this rank: (gloo ms, hfreduce ms, TCP floor ms or None on one node,
    gloo CPU ms, hfreduce CPU ms)."""
    import hfreduce

    dist.init_process_group("gloo")
    comm = hfreduce.init()
    per_node = int(os.environ["LOCAL_WORLD_SIZE"])
    results = {}
    try:
        for size in sizes:
            a = torch.ones(size // 4)
            b = torch.ones(size // 4)
            gloo_ms, gloo_cpu = _timed(lambda a=a: dist.all_reduce(a), dist.barrier, iters)
            ours_ms, ours_cpu = _timed(lambda b=b: comm.all_reduce(b), dist.barrier, iters)
            results[size] = (gloo_ms, ours_ms, None, gloo_cpu, ours_cpu)
        if dist.get_world_size() > per_node:
            for size, floor_ms in _tcp_floor(sizes, per_node, iters).items():
                gloo_ms, ours_ms, _, gloo_cpu, ours_cpu = results[size]
                results[size] = (gloo_ms, ours_ms, floor_ms, gloo_cpu, ours_cpu)
    finally:
        hfreduce.destroy()
        dist.destroy_process_group()
    return results


_FLOOR_PIECE = 2 << 20


def _tcp_floor(sizes: list[int], per_node: int, iters: int) -> dict[int, float]:
    """Per size: the time for every rank to send its slice (size / ranks per node) to its
    partner on the next node while receiving one from the previous node, over bare TCP.

    Across two nodes this is exactly the traffic of hfreduce's trees (each node's half is
    reduced up one tree and broadcast back down the other), so no all-reduce over these
    links can beat it: loopback TCP is CPU copies on the same cores as everything else.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    listener = socket.create_server(("127.0.0.1", 0))
    ports: list[int] = [0] * world
    dist.all_gather_object(ports, listener.getsockname()[1])
    outgoing = socket.create_connection(("127.0.0.1", ports[(rank + per_node) % world]))
    incoming, _ = listener.accept()
    listener.close()
    results = {}
    try:
        for size in sizes:
            payload = memoryview(bytearray(size // per_node))
            into = memoryview(bytearray(size // per_node))

            def exchange(payload: memoryview = payload, into: memoryview = into) -> None:
                sender = threading.Thread(target=outgoing.sendall, args=(payload,))
                sender.start()
                for start in range(0, len(into), _FLOOR_PIECE):
                    piece = into[start : start + _FLOOR_PIECE]
                    got = 0
                    while got < len(piece):
                        got += incoming.recv_into(piece[got:], 0, socket.MSG_WAITALL)
                sender.join()

            results[size] = _median_ms(exchange, dist.barrier, iters)
    finally:
        outgoing.close()
        incoming.close()
    return results


def _rank_bench_cuda(sizes: list[int], iters: int) -> dict[int, tuple[float, float]]:
    """Per size: (pinned D2H + H2D round trip ms, hfreduce on a CUDA tensor ms)."""
    import hfreduce

    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    torch.cuda.set_device(device)
    dist.init_process_group("gloo")
    comm = hfreduce.init()
    results = {}
    try:
        for size in sizes:
            x = torch.ones(size // 4, device=device)
            host = torch.empty(size // 4, pin_memory=True)

            def round_trip(x: torch.Tensor = x, host: torch.Tensor = host) -> None:
                host.copy_(x, non_blocking=True)
                x.copy_(host, non_blocking=True)
                torch.cuda.synchronize(device)

            def ours(x: torch.Tensor = x) -> None:
                comm.all_reduce(x)
                torch.cuda.synchronize(device)

            results[size] = (
                _median_ms(round_trip, dist.barrier, iters),
                _median_ms(ours, dist.barrier, iters),
            )
    finally:
        hfreduce.destroy()
        dist.destroy_process_group()
    return results


def memcpy_ms(size: int, iters: int) -> float:
    src = torch.ones(size // 4)
    dst = torch.empty_like(src)
    return _median_ms(lambda: dst.copy_(src), lambda: None, iters)


def _bandwidths(size: int, ms: float, world: int) -> tuple[float, float]:
    """(algbw, busbw) in GB/s; busbw scales by 2(n-1)/n, the data each rank must move."""
    algbw = size / (ms * 1e-3) / 1e9
    return algbw, algbw * 2 * (world - 1) / world


def _floor_columns(outcomes: list, size: int, gloo_ms: float) -> str:
    """The TCP floor of a multi-node row, and the most any all-reduce could gain on gloo
    with that much of the cores spent on the links alone."""
    floor_ms = max(o.value[size][2] for o in outcomes)
    return f" {floor_ms:9.3f} {gloo_ms / floor_ms:9.2f}x"


def _interleaved(
    calls: dict[str, Callable[[], object]], barrier: Callable[[], object], iters: int
) -> dict[str, list[tuple[float, float]]]:
    """Per name, (wall s, CPU s of this process) of each timed call, after two warm-up
    rounds. The calls take turns, so a burst of load from elsewhere on the machine slows
    both sides alike and their ratio stays fair."""
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
    for round_ in range(iters + 2):
        for name, call in calls.items():
            barrier()
            start, cpu_start = time.perf_counter(), _cpu_s()
            call()
            if round_ >= 2:
                timings[name].append((time.perf_counter() - start, _cpu_s() - cpu_start))
    return timings


def _rank_bench_hosts(sizes: list[int], iters: int) -> dict[int, dict[str, list]]:
    """One rank of ``--hosts``: per size, gloo's and hfreduce's timings (``_interleaved``)."""
    import hfreduce

    dist.init_process_group("gloo")
    comm = hfreduce.init()
    results = {}
    try:
        for size in sizes:
            a = torch.ones(size // 4)
            b = torch.ones(size // 4)
            calls = {
                "gloo": lambda a=a: dist.all_reduce(a),
                "hfreduce": lambda b=b: comm.all_reduce(b),
            }
            results[size] = _interleaved(calls, dist.barrier, iters)
    finally:
        hfreduce.destroy()
        dist.destroy_process_group()
    return results


HOSTS_COLUMNS = ("gloo ms", "hfr ms", "hfr/gloo", "of bound", "gloo cpu", "hfr cpu")


def hosts_row(
    size: int, ranks: list[dict[str, list]], per_node: int, link_bits: int
) -> dict[str, float]:
    """One row of ``--hosts`` from every rank's timings of one size (rank order).

    A call takes as long as its slowest rank; a node's CPU time is its ranks' sum, and a
    row shows the mean node's. Each is the median over the timed calls. ``of bound`` is
    the link bound's time (size / link rate) over hfreduce's.
    """
    row = {}
    nodes = len(ranks) // per_node
    for name in ("gloo", "hfreduce"):
        calls = list(zip(*(rank[name] for rank in ranks), strict=True))
        wall = statistics.median(max(t for t, _ in call) for call in calls)
        cpu = statistics.median(sum(c for _, c in call) / nodes for call in calls)
        row[name] = wall * 1e3
        row[f"{name} cpu"] = cpu * 1e3
    bound_ms = size * 8 / link_bits * 1e3
    return {
        "gloo ms": row["gloo"],
        "hfr ms": row["hfreduce"],
        "hfr/gloo": row["gloo"] / row["hfreduce"],
        "of bound": bound_ms / row["hfreduce"],
        "gloo cpu": row["gloo cpu"],
        "hfr cpu": row["hfreduce cpu"],
    }


def parse_layout(spec: str) -> tuple[int, int]:
    """``NODESxRANKS`` (e.g. ``2x2``) as (nodes, ranks per node); ValueError names it."""
    nodes, _, per_node = spec.partition("x")
    if not (nodes.isdigit() and per_node.isdigit() and int(nodes) >= 1 and int(per_node) >= 1):
        raise ValueError(f"layout {spec!r} is not NODESxRANKS, like 2x2")
    return int(nodes), int(per_node)


_MTU = 1500  # the test hosts' eth0 (docs/hosts.md)


def tcp_ceiling(mtu: int) -> float:
    """The fraction of a link's rate left to TCP payload: a full packet carries
    ``mtu`` - 52 bytes of it (IPv4 20 + TCP with timestamps 32) in ``mtu`` + 14 bytes on
    the wire (Ethernet), which is what tbf counts."""
    return (mtu - 52) / (mtu + 14)


_RANK_START_S = 120  # a rank's start-up on a loaded machine; only bounds the wait
_SLOWEST = 10  # the most times the link bound a call may take (gloo, a loaded machine)


def host_rank_environment(hosts: Hosts, rank: int, per_node: int) -> dict[str, str]:
    """The environment of rank ``rank`` of a job with ``per_node`` ranks on each of
    ``hosts``, as the platform gives it there: it runs on host ``1 + rank // per_node``,
    MASTER_ADDR is host 1's address, the node id its host's name, and hfreduce's and gloo's
    links use eth0, the hosts' bridge."""
    return {
        **rank_environment(rank, len(hosts), per_node, 29500, master_addr=hosts[1].address),
        "HFREDUCE_NODE_ID": hosts[1 + rank // per_node].name,
        "HFREDUCE_SOCKET_IFNAME": "eth0",
        "GLOO_SOCKET_IFNAME": "eth0",
    }


def _run_on_hosts(
    nodes: int, per_node: int, link: str, sizes: list[int], iters: int
) -> list[dict[str, dict[str, list]]]:
    """Every rank's ``_rank_bench_hosts`` results: ranks on test hosts with shaped links.

    Rank r runs on host ``1 + r // per_node`` (:func:`host_rank_environment`). Its results
    and log go to the host's own folder, which this process sees too (a file in /tmp would
    be the host's own /tmp).
    """
    calls = (iters + 2) * 2  # warm-up and timed rounds, gloo and hfreduce
    deadline_s = _RANK_START_S + calls * _SLOWEST * sum(sizes) * 8 / parse_rate(link)
    with Hosts.up(nodes) as hosts:
        for host in hosts:
            hosts.shape(host.index, link)
        procs, outs, logs = [], [], []
        try:
            for rank in range(nodes * per_node):
                host = hosts[1 + rank // per_node]
                env = {**os.environ, **host_rank_environment(hosts, rank, per_node)}
                outs.append(host.dir / f"bench-{rank}.json")
                logs.append(host.dir / f"bench-{rank}.log")
                argv = [sys.executable, "-m", "hfreduce.bench", "--rank-out", str(outs[-1])]
                argv += ["--iters", str(iters), "--sizes", ",".join(map(str, sizes))]
                with open(logs[-1], "w") as log:
                    procs.append(
                        hosts.popen(host.index, argv, env=env, stdout=log, stderr=subprocess.STDOUT)
                    )
            _wait_ranks(procs, logs, time.monotonic() + deadline_s)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        return [
            {int(size): timings for size, timings in json.loads(out.read_text()).items()}
            for out in outs
        ]


def _wait_ranks(procs: list[subprocess.Popen], logs: list[Path], deadline: float) -> None:
    """Returns once every rank exited 0; a rank's failure or the deadline ends the run
    with one line naming the rank and the last line of its log."""
    while (codes := [proc.poll() for proc in procs]) != [0] * len(procs):
        failed = [r for r, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            rank, why = failed[0], f"exited {codes[failed[0]]}"
        elif time.monotonic() > deadline:
            rank, why = codes.index(None), "ran past its deadline"
        else:
            time.sleep(0.2)
            continue
        last = logs[rank].read_text(errors="replace").strip().splitlines()[-1:]
        raise SystemExit(f"hfreduce.bench: rank {rank} {why}: {' '.join(last)}")


def _check_hosts_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Ends the run with one usage line when ``--hosts`` cannot run as asked."""
    if args.link is None:
        parser.error("--hosts needs --link RATE (like 2gbit): the bound is size / rate")
    try:
        parse_layout(args.hosts)
        parse_rate(args.link)
    except ValueError as exc:
        parser.error(str(exc))
    if (why := hosts_missing()) is not None:
        parser.error(f"--hosts needs test hosts: {why}")


def bench_hosts(layout: str, link: str, sizes: list[int], iters: int) -> None:
    """``--hosts``: prints the table of hfreduce and gloo across test hosts."""
    nodes, per_node = parse_layout(layout)
    link_bits = parse_rate(link)
    results = _run_on_hosts(nodes, per_node, link, sizes, iters)
    print(
        f"all-reduce of float32 across {nodes} test hosts x {per_node} ranks, links shaped "
        f"to {link}; median of {iters} calls each, taking turns"
    )
    header = f"{'size':>8} {'bound ms':>9} " + " ".join(f"{c:>9}" for c in HOSTS_COLUMNS)
    print(header)
    print("-" * len(header))
    for size in sizes:
        row = hosts_row(size, [r[size] for r in results], per_node, link_bits)
        bound_ms = size * 8 / link_bits * 1e3
        print(
            f"{_human(size):>8} {bound_ms:9.3f} {row['gloo ms']:9.3f} {row['hfr ms']:9.3f} "
            f"{row['hfr/gloo']:8.2f}x {row['of bound']:9.2f} {row['gloo cpu']:9.1f} "
            f"{row['hfr cpu']:9.1f}"
        )
    cores = len(os.sched_getaffinity(0))
    print(
        f"bound: size / link rate, the least time to send each node's size across; of bound: "
        f"bound / hfr ms.\nThe link also carries each packet's headers: over TCP at eth0's "
        f"MTU of {_MTU}, payload gets at most\n{tcp_ceiling(_MTU):.3f} of the rate (beyond "
        f"that only tbf's bucket, full when a call starts).\n"
        f"cpu: CPU ms per call per host (its {per_node} ranks' user + system time, every "
        f"thread). All\nhosts share this machine's {cores} cores, so a call takes at least "
        f"cpu x {nodes} / {cores} ms."
    )


def _human(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size >> shift} {unit}"
    return f"{size} B"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hfreduce.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--iters", type=int, default=5, help="timed calls per size (median)")
    parser.add_argument("--max-size", type=int, default=SIZES[-1], help="largest size, bytes")
    parser.add_argument("--sizes", help="bytes,... instead of the sizes up to --max-size")
    parser.add_argument(
        "--layouts", default=",".join(f"{n}x{r}" for n, r in LAYOUTS), help="NODESxRANKS,..."
    )
    parser.add_argument(
        "--hosts", metavar="NODESxRANKS", help="run across test hosts (root; docs/hosts.md)"
    )
    parser.add_argument("--link", metavar="RATE", help="with --hosts: shape links (2gbit)")
    # A rank of --hosts, started by the run on its test host.
    parser.add_argument("--rank-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [s for s in SIZES if s <= args.max_size]
    if args.sizes is not None:
        sizes = [int(s) for s in args.sizes.split(",")]
    if args.rank_out is not None:
        torch.set_num_threads(1)  # the hosts' ranks share this machine's cores
        args.rank_out.write_text(json.dumps(_rank_bench_hosts(sizes, args.iters)))
        return
    if args.hosts is not None:
        _check_hosts_args(parser, args)
        bench_hosts(args.hosts, args.link, sizes, args.iters)
        return
    layouts = [parse_layout(spec) for spec in args.layouts.split(",")]
    # A memcpy is cheap to repeat: many calls steady the small sizes' roofline.
    roof = {size: memcpy_ms(size, max(args.iters, 50)) for size in sizes}
    header = (
        f"{'size':>8} {'layout':>11} {'gloo ms':>9} {'hfr ms':>9} {'speedup':>7} "
        f"{'gloo alg':>8} {'gloo bus':>8} {'hfr alg':>8} {'hfr bus':>8} {'hfr/memcpy':>10} "
        f"{'gloo cpu':>8} {'hfr cpu':>8} {'tcp floor':>9} {'gloo/floor':>10}"
    )
    print("all-reduce of float32, median of", args.iters, "calls; bandwidths in GB/s")
    print(header)
    print("-" * len(header))
    for nodes, per_node in layouts:
        world = nodes * per_node
        outcomes = run_ranks(
            _rank_bench,
            nodes=nodes,
            ranks_per_node=per_node,
            args=(sizes, args.iters),
            timeout=1800,
        )
        for size in sizes:
            # A call is as slow as its slowest rank.
            gloo_ms = max(o.value[size][0] for o in outcomes)
            ours_ms = max(o.value[size][1] for o in outcomes)
            g_alg, g_bus = _bandwidths(size, gloo_ms, world)
            h_alg, h_bus = _bandwidths(size, ours_ms, world)
            gloo_cpu, ours_cpu = (sum(o.value[size][k] for o in outcomes) for k in (3, 4))
            floor = "" if nodes == 1 else _floor_columns(outcomes, size, gloo_ms)
            print(
                f"{_human(size):>8} {f'{nodes}x{per_node} ranks':>11} {gloo_ms:9.3f} "
                f"{ours_ms:9.3f} {gloo_ms / ours_ms:6.2f}x {g_alg:8.2f} {g_bus:8.2f} "
                f"{h_alg:8.2f} {h_bus:8.2f} {ours_ms / roof[size]:10.1f} "
                f"{gloo_cpu:8.1f} {ours_cpu:8.1f}{floor}"
            )
    cores = len(os.sched_getaffinity(0))
    print(
        f"cpu: CPU ms per call summed over all ranks (user + system, every thread); with "
        f"{cores} cores here\na call can take no less than cpu / {cores} ms, whoever does it."
    )
    if any(nodes > 1 for nodes, _ in layouts):
        print(
            "tcp floor: every rank only swaps its slice (size / ranks per node) with its "
            "partner node over bare\nloopback TCP, as hfreduce's trees must; gloo/floor "
            "caps the speed-up of any all-reduce on these links."
        )
    if torch.cuda.is_available():
        print("\nhfreduce on CUDA tensors (2 ranks, one node) vs a pinned D2H + H2D round trip")
        print(f"{'size':>8} {'D2H+H2D ms':>10} {'hfr ms':>9} {'fraction of bound':>17}")
        outcomes = run_ranks(
            _rank_bench_cuda,
            nodes=1,
            ranks_per_node=2,
            args=(sizes, args.iters),
            timeout=1800,
            start_method="spawn",
        )
        for size in sizes:
            bound = max(o.value[size][0] for o in outcomes)
            ours = max(o.value[size][1] for o in outcomes)
            print(f"{_human(size):>8} {bound:10.3f} {ours:9.3f} {bound / ours:17.2f}")


if __name__ == "__main__":
    main()
