"""The "hfreduce" torch.distributed backend: every collective works, and DDP trains the
same weights on it as on gloo."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist

import hfreduce  # noqa: F401 (registers the backend)
from hfreduce.launch import run_ranks

from . import rank_workers

ENV = {"HFREDUCE_CHUNK_BYTES": "4096"}


def _collectives() -> dict:
    dist.init_process_group("hfreduce")
    r, w = dist.get_rank(), dist.get_world_size()
    out: dict = {"backend": dist.get_backend()}
    t = torch.arange(5.0) * (r + 1)
    dist.all_reduce(t)
    out["all_reduce"] = t
    t = torch.full((3,), float(r))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    out["max"] = t
    t = torch.full((3,), float(r + 1))
    dist.all_reduce(t, op=dist.ReduceOp.AVG)
    out["avg"] = t
    t = torch.full((9000,), float(r))
    work = dist.all_reduce(t, async_op=True)
    chained = work.get_future().then(lambda f: f.value()[0].sum().item())
    work.wait()
    out["async"], out["chained"] = t, chained.wait()
    t = torch.full((2,), float(r))
    dist.broadcast(t, src=w - 1)
    out["broadcast"] = t
    dist.barrier()
    gathered = [torch.zeros(2) for _ in range(w)]
    dist.all_gather(gathered, torch.full((2,), float(r)))
    out["all_gather"] = torch.stack(gathered)
    flat = torch.zeros(2 * w)
    dist.all_gather_into_tensor(flat, torch.full((2,), float(r)))
    out["all_gather_into_tensor"] = flat
    block = torch.zeros(2)
    dist.reduce_scatter_tensor(block, torch.arange(2.0 * w) * (r + 1))
    out["reduce_scatter_tensor"] = block
    block = torch.zeros(2)
    dist.reduce_scatter(block, [torch.full((2,), float(i + r)) for i in range(w)])
    out["reduce_scatter"] = block
    swapped = torch.zeros(w)
    dist.all_to_all_single(swapped, torch.arange(float(w)) + 10 * r)
    out["all_to_all_single"] = swapped
    if r == 0:
        dist.send(torch.full((2,), 7.0), dst=1)
    elif r == 1:
        got = torch.zeros(2)
        dist.recv(got, src=0)
        out["recv"] = got
    try:
        dist.all_reduce(torch.ones(2), op=dist.ReduceOp.PRODUCT)
        out["product"] = "accepted"
    except hfreduce.UnsupportedError as exc:
        out["product"] = str(exc)
    dist.destroy_process_group()
    return out


@pytest.mark.parametrize(("nodes", "per_node"), [(1, 2), (2, 2)], ids=str)
def test_every_collective(nodes: int, per_node: int) -> None:
    w = nodes * per_node
    outcomes = run_ranks(_collectives, nodes=nodes, ranks_per_node=per_node, env=ENV)
    total = float(sum(range(w)))
    for o in outcomes:
        r, v = o.rank, o.value
        assert v["backend"] == "hfreduce"
        assert torch.equal(v["all_reduce"], torch.arange(5.0) * sum(range(1, w + 1)))
        assert torch.equal(v["max"], torch.full((3,), float(w - 1)))
        assert torch.equal(v["avg"], torch.full((3,), (w + 1) / 2))
        assert torch.equal(v["async"], torch.full((9000,), total))
        assert v["chained"] == pytest.approx(9000 * total)
        assert torch.equal(v["broadcast"], torch.full((2,), float(w - 1)))
        assert torch.equal(v["all_gather"], torch.arange(float(w)).repeat_interleave(2).view(w, 2))
        assert torch.equal(v["all_gather_into_tensor"], torch.arange(float(w)).repeat_interleave(2))
        summed = torch.arange(2.0 * w) * sum(range(1, w + 1))
        assert torch.equal(v["reduce_scatter_tensor"], summed[2 * r : 2 * r + 2])
        assert torch.equal(
            v["reduce_scatter"], torch.full((2,), float(sum(r + i for i in range(w))))
        )
        assert torch.equal(v["all_to_all_single"], torch.arange(float(w)) * 10 + r)
        if r == 1:
            assert torch.equal(v["recv"], torch.full((2,), 7.0))
        assert "reduce op PRODUCT is not supported" in v["product"]


def _gloo_listening_addresses() -> list[str]:
    """Where this rank listens once a collective ran on gloo, the store's port left out
    (hfreduce's own listener closes once its links are up)."""
    dist.init_process_group("hfreduce")
    t = torch.zeros(4)
    dist.broadcast(t, src=0)  # not ours: the gloo group's
    store_port = int(os.environ["MASTER_PORT"])
    listening = [
        c.laddr.ip
        for c in psutil.Process().net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port != store_port
    ]
    dist.destroy_process_group()
    return listening


def test_the_gloo_group_uses_hfreduces_link() -> None:
    # This machine's host name resolves to 127.0.0.1: gloo left alone would announce that.
    env = {"HFREDUCE_SOCKET_ADDRESS": "127.0.0.3", "GLOO_SOCKET_IFNAME": ""}
    outcomes = run_ranks(_gloo_listening_addresses, nodes=2, ranks_per_node=1, env=env)
    for o in outcomes:
        assert o.value and set(o.value) == {"127.0.0.3"}, (o.rank, o.value)


def _leave_a_cycle(marker: str) -> int:
    class Finalised:
        def __del__(self) -> None:
            Path(marker).write_text(str(sys.is_finalizing()))

    holder = Finalised()
    holder.me = holder  # type: ignore[attr-defined]  # a cycle, as DDP's hooks make one
    return 0


def test_a_rank_functions_cycles_are_freed_before_its_process_ends(tmp_path: Path) -> None:
    """A DDP model sits in a reference cycle that holds its process group. Freed only by
    interpreter shutdown (spawned ranks) or never (forked ranks end in os._exit), gloo's
    threads aborted a rank that had reported its result: the launcher collects first."""
    marker = tmp_path / "finalised"
    run_ranks(_leave_a_cycle, nodes=1, ranks_per_node=1, args=(str(marker),))
    assert marker.read_text() == "False"  # freed, and before the interpreter shut down


def test_ddp_on_hfreduce_matches_gloo() -> None:
    ours = run_ranks(
        rank_workers.train_ddp,
        nodes=2,
        ranks_per_node=1,
        args=("hfreduce",),
        env=ENV,
        start_method="spawn",
    )
    gloo = run_ranks(
        rank_workers.train_ddp, nodes=2, ranks_per_node=1, args=("gloo",), start_method="spawn"
    )
    for key, want in gloo[0].value.items():
        for o in ours:
            torch.testing.assert_close(o.value[key], want, rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    start = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    assert not torch.allclose(start[0].weight, ours[0].value["0.weight"])  # it did train
