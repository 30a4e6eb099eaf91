"""``python -m hfreduce.model``: what hfreduce would do on a Fire-Flyer 2 cluster.

We have one small node here, so the at-scale figures come from a cost model of the
pipeline on the paper's hardware (PCIe A100 nodes, one 200 Gb/s NIC each), with the
software's own costs calibrated on this machine:

* hfreduce: the stages overlap, so a call takes as long as its slowest resource (PCIe,
  host memory, NIC), divided by the fraction of the memory roofline our pipeline reaches
  (measured here, per-chunk software costs included), plus the time to fill the pipeline
  through the tree (its depth in hops, up and down).
* NCCL-style ring on the same hardware: every byte crosses 2(n-1)/n times each link of
  the ring, inter-node hops go GPU -> NIC peer-to-peer (capped on EPYC Rome, which has
  no chained writes), and each of the 2(n-1) steps pays a latency.

``--calibrate`` re-measures the software constants here with real processes.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

from hfreduce.config import SINGLE_NODE_CHUNK_BYTES

GB = 1e9
MiB = 1 << 20


@dataclass(frozen=True)
class Hardware:
    """One Fire-Flyer 2 node and its network (numbers from the SC24 paper, §III-IV)."""

    gpus_per_node: int = 8
    memory_bw: float = 320 * GB
    """Usable host memory bandwidth: the figure the paper divides by 24 memory ops."""
    internode_memory_ops: int = 5
    """Host-memory touches per byte for the inter-node exchange (paper §IV-D3)."""
    h2d_memory_ops: int = 2
    """Host-memory reads per byte to copy results back: GDRCopy reads once per NUMA node."""
    pcie_port_bw: float = 25 * GB
    """Practical one-way PCIe 4.0 x16 bandwidth of a root port."""
    shared_port_bw: float = 37.5 * GB
    """Both directions of the root port GPU5 and GPU6 share, which the paper names as the
    limit of its ~8 GB/s (their D2H and H2D, 4 bytes per byte reduced, cross it)."""
    nic_bw: float = 24 * GB
    """200 Gb/s InfiniBand, less encoding overhead."""
    hop_latency_s: float = 5e-6
    """One message across the fat-tree, software included."""
    gpu_nic_p2p_bw: float = 9 * (1 << 30)
    """GPU <-> NIC peer-to-peer on EPYC Rome without chained writes (paper §IV-B)."""


@dataclass(frozen=True)
class Software:
    """Our implementation's costs, measured on the development machine (2-core EPYC VM,
    2026-11-23) with ``--calibrate``."""

    efficiency: float = 0.68
    """Fraction of the memory roofline a whole call reaches with the default chunks:
    copies, adds, waits and the per-chunk Python cost together."""
    chunk_bytes: int = SINGLE_NODE_CHUNK_BYTES


def tree_depth(nodes: int) -> int:
    return 0 if nodes <= 1 else math.ceil(math.log2(nodes))


def memory_ops_per_byte(per_node: int, nodes: int, hw: Hardware) -> int:
    internode = hw.internode_memory_ops if nodes > 1 else 0
    return per_node + (per_node + 1) + internode + hw.h2d_memory_ops


def predict_hfreduce(size: int, gpus: int, hw: Hardware, sw: Software) -> tuple[float, str]:
    """Seconds for one all-reduce of ``size`` bytes per GPU, and the limiting resource."""
    nodes = max(1, gpus // hw.gpus_per_node)
    per_node = min(gpus, hw.gpus_per_node)
    # Every GPU's bytes are written once (D2H) and read once by the reduce, which writes
    # one sum: with 8 GPUs and several nodes this is the paper's 8 + 9 + 5 + 2 = 24.
    ops = memory_ops_per_byte(per_node, nodes, hw)
    # D2H and H2D run in opposite directions of a GPU's own port; GPU5 and GPU6 share
    # theirs, which matters once GPU6 is in use.
    pcie = size / hw.pcie_port_bw
    if per_node > 6:
        pcie = max(pcie, 4 * size / hw.shared_port_bw)
    stages = {
        "host memory": size * ops / hw.memory_bw / sw.efficiency,
        "PCIe": pcie,
        # Each node is interior in one tree: it receives 1.5x and sends 1.5x the data
        # there, and half as a leaf in the other tree: 2x in each direction in all.
        "NIC": 2 * size / hw.nic_bw if nodes > 1 else 0.0,
    }
    limit = max(stages, key=stages.__getitem__)
    chunk_wire = sw.chunk_bytes / (2 * per_node) / hw.nic_bw + hw.hop_latency_s
    fill = 2 * tree_depth(nodes) * chunk_wire
    return stages[limit] + fill, limit


def predict_ring(size: int, gpus: int, hw: Hardware) -> float:
    """Seconds for an NCCL-style ring all-reduce over ``gpus`` PCIe GPUs."""
    if gpus <= 1:
        return 0.0
    traffic = 2 * (gpus - 1) / gpus * size
    nodes = max(1, gpus // hw.gpus_per_node)
    # Intra-node hops go GPU -> host bridge -> GPU; on the shared root port two GPUs'
    # sends and receives meet. Inter-node hops are limited by GPU <-> NIC peer-to-peer.
    link = hw.pcie_port_bw if gpus <= 6 else hw.shared_port_bw / 4
    if nodes > 1:
        link = min(link, hw.gpu_nic_p2p_bw)
    return traffic / link + 2 * (gpus - 1) * hw.hop_latency_s


# The paper's measurements for a 186 MiB all-reduce (Fig. 7a, PCIe A100 nodes): the
# ranges over 16-1,440 GPUs and the points read off the figure.
PAPER_SIZE = 186 * MiB
PAPER_HFREDUCE = {16: 8.10, 1024: 6.31, 1440: 6.99}
PAPER_NCCL = {512: 4.83, 1024: 1.63, 1440: 1.65}
PAPER_RANGES = "hfreduce 6.3-8.1 GB/s, NCCL 1.6-4.8 GB/s"
PAPER_CEILING = 13.3
GPU_COUNTS = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 1440]


def calibrate() -> Software:
    """Measure ``efficiency`` here: two ranks on one node against their roofline."""
    from hfreduce.launch import run_ranks

    size = 64 * MiB
    measured = max(o.value for o in run_ranks(_time_allreduce, nodes=1, args=(size,)))
    # The roofline: each rank must read its tensor and write the result back through a
    # cache-sized staging buffer, while the other rank does the same.
    roof = max(o.value for o in run_ranks(_time_staged_copy, nodes=1, args=(size,)))
    return Software(efficiency=min(1.0, roof / measured))


def _median(fn, iters: int = 5) -> float:
    fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _time_allreduce(size: int) -> float:
    import torch

    import hfreduce

    comm = hfreduce.init(config=hfreduce.load_config(chunk_bytes=Software.chunk_bytes))
    x = torch.ones(size // 4)
    try:
        return _median(lambda: comm.all_reduce(x))
    finally:
        hfreduce.destroy()


def _time_staged_copy(size: int) -> float:
    import torch

    src, dst, stage = torch.ones(size // 4), torch.empty(size // 4), torch.empty(MiB // 4)

    def copy() -> None:
        for a, b in zip(src.split(MiB // 4), dst.split(MiB // 4), strict=True):
            stage.copy_(a)
            b.copy_(stage)

    return _median(copy)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m hfreduce.model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--calibrate", action="store_true", help="re-measure software costs here")
    parser.add_argument("--size-mib", type=float, default=PAPER_SIZE / MiB)
    args = parser.parse_args(argv)
    hw, sw = Hardware(), Software()
    if args.calibrate:
        sw = calibrate()
    size = int(args.size_mib * MiB)
    print(
        f"all-reduce of {size / MiB:.0f} MiB per GPU on Fire-Flyer 2 PCIe A100 nodes; our "
        f"pipeline reaches {sw.efficiency:.2f} of the memory roofline "
        f"({'measured now' if args.calibrate else 'default, measured on the dev machine'})"
    )
    ceiling = hw.memory_bw / memory_ops_per_byte(hw.gpus_per_node, 2, hw) / GB
    print(f"memory-bound ceiling: {ceiling:.1f} GB/s (paper: about {PAPER_CEILING})")
    header = (
        f"{'GPUs':>5} {'nodes':>5} {'hfreduce GB/s':>13} {'limited by':>11} "
        f"{'paper (model/paper)':>19} {'ring GB/s':>9} {'paper NCCL (model/paper)':>24}"
    )
    print(f"paper, 16-1,440 GPUs: {PAPER_RANGES}")
    print(header)
    print("-" * len(header))
    for gpus in GPU_COUNTS:
        seconds, limit = predict_hfreduce(size, gpus, hw, sw)
        ours = size / seconds / GB
        ring = size / predict_ring(size, gpus, hw) / GB
        cells = []
        for predicted, paper in ((ours, PAPER_HFREDUCE), (ring, PAPER_NCCL)):
            if size == PAPER_SIZE and gpus in paper:
                cells.append(f"{paper[gpus]:.2f} ({predicted / paper[gpus]:.2f}x)")
            else:
                cells.append("-")
        print(
            f"{gpus:5d} {max(1, gpus // hw.gpus_per_node):5d} {ours:13.2f} {limit:>11} "
            f"{cells[0]:>19} {ring:9.2f} {cells[1]:>24}"
        )
    print(
        "\nThe model has no term for congestion or for the cross-zone links that the paper's"
        " 1,024+ GPU runs cross, where both measured curves drop."
    )


if __name__ == "__main__":
    main()
