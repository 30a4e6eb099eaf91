"""haiscale asynchronous checkpoints: exact round trips, a stall limited to the host copy,
errors that surface, crashes that are never loaded, retention, ranks and fs3."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from haiscale.checkpoint import (
    AsyncCheckpointer,
    CheckpointError,
    CheckpointStore,
    load,
    load_latest,
)
from hfreduce.launch import run_ranks

from . import checkpoint_workers
from .checkpoint_workers import make_model, restore, state_of, train


def _state() -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "model": {
            "w": torch.randn(5, 7, generator=g),
            "t": torch.randn(4, 6, generator=g).t(),
            "half": torch.randn(3, generator=g).bfloat16(),
            "empty": torch.zeros(0, 3),
            "mask": torch.tensor([True, False]),
            "scalar": torch.tensor(7),
        },
        # int keys, as optimisers use them
        "optim": {
            "state": {0: {"step": torch.tensor(3.0)}},
            "param_groups": [{"lr": 0.1, "params": [0]}],
        },
        "rng": random.Random(5).getstate(),
        "step": 12,
        "name": "run",
        "none": None,
        "nested": [1, (2.5, "x")],
    }


def _assert_equal(got: object, want: object) -> None:
    """Bitwise for tensors (dtype and shape included), == for everything else, types kept."""
    assert type(got) is type(want), (got, want)
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want)
    elif isinstance(want, dict):
        assert list(got) == list(want)
        for key in want:
            _assert_equal(got[key], want[key])
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            _assert_equal(a, b)
    else:
        assert got == want


@pytest.mark.parametrize("where", ["local", "memory"])
def test_round_trip_is_exact(tmp_path: Path, where: str) -> None:
    url = str(tmp_path / "ck") if where == "local" else f"memory://ck-{tmp_path.name}"
    state = _state()
    with AsyncCheckpointer(url) as ckpt:
        ckpt.save(12, state)
        step, loaded = ckpt.load_latest()
    assert step == 12
    _assert_equal(loaded, state)
    # One tensor alone, from the index; and the shard is a plain safetensors file.
    assert torch.equal(ckpt.store.read_tensor(12, "model/t"), state["model"]["t"])
    with pytest.raises(KeyError, match="model/nope"):
        ckpt.store.read_tensor(12, "model/nope")
    if where == "local":
        with safe_open(tmp_path / "ck/step-000000000012/rank-00000.safetensors", "pt") as f:
            assert torch.equal(f.get_tensor("model/w"), state["model"]["w"])


def test_unsupported_values_are_named(tmp_path: Path) -> None:
    with AsyncCheckpointer(str(tmp_path)) as ckpt:
        with pytest.raises(TypeError, match="'a/b' is a set"):
            ckpt.save(1, {"a": {"b": {1, 2}}})
        with pytest.raises(TypeError, match="key"):
            ckpt.save(1, {(1, 2): 3})


def test_save_returns_after_the_host_copy(tmp_path: Path) -> None:
    gate = threading.Event()
    ckpt = AsyncCheckpointer(f"gated://{tmp_path}", gate=gate, skip_instance_cache=True)
    state = {"w": torch.arange(1000.0)}
    handle = ckpt.save(1, state)
    assert ckpt.store.fs.writing.wait(timeout=60)
    # The write is held mid-file, yet training got control back with its state copied:
    # changing it now must not reach the checkpoint.
    assert not handle.done()
    assert ckpt.store.steps() == [] and load_latest(str(tmp_path)) is None
    state["w"].add_(1)
    gate.set()
    ckpt.close()
    assert handle.done() and ckpt.store.steps() == [1]
    assert torch.equal(load_latest(str(tmp_path))[1]["w"], torch.arange(1000.0))


def test_failed_write_is_raised_by_the_next_call(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    ckpt = AsyncCheckpointer(str(tmp_path / "file" / "ck"))
    ckpt.save(1, {"w": torch.ones(3)})  # the copy succeeds; the write cannot
    with pytest.raises(CheckpointError, match="checkpoint step 1 .* failed: NotADirectoryError"):
        ckpt.save(2, {"w": torch.ones(3)})
    ckpt.save(2, {"w": torch.ones(3)})  # each failure is raised once, by the next call
    with pytest.raises(CheckpointError, match="checkpoint step 2 .* failed"):
        ckpt.wait()
    ckpt.close()


def test_keeps_the_newest_k_and_never_loads_a_tmp(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path))
    with AsyncCheckpointer(str(tmp_path), keep=2) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, {"step": step, "w": torch.full((2,), float(step))})
        ckpt.wait()
        # A crash while writing step 9 left its folder with a half-written shard.
        stale = Path(store.path(9, tmp=True))
        stale.mkdir()
        (stale / "rank-00000.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
        assert store.steps() == [2, 3]
        assert ckpt.load_latest()[1]["step"] == 3
        # Publishing a later step keeps two and drops the abandoned one below it.
        ckpt.save(10, {"step": 10})
    assert store.steps() == [3, 10]
    assert load(str(tmp_path), 3)["step"] == 3
    assert sorted(p.name for p in tmp_path.glob("step-*")) == [
        "step-000000000003",
        "step-000000000010",
    ]


def test_killed_job_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    root = str(tmp_path / "ck")
    job = subprocess.Popen(
        [sys.executable, checkpoint_workers.__file__, root], stdout=subprocess.PIPE, text=True
    )
    try:
        assert job.stdout.readline().strip() == "cut"
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=30)
    # Step 6 was cut mid-write: its shard exists, partly written, and is never loaded.
    cut = Path(root) / "step-000000000006.tmp" / "rank-00000.safetensors"
    assert cut.stat().st_size > 0
    ckpt = AsyncCheckpointer(root, keep=2)
    step, state = ckpt.load_latest()
    assert step == 4
    model, opt = make_model()
    train(model, opt, range(restore(model, opt, state) + 1, 9), ckpt)
    ckpt.close()
    assert ckpt.store.steps() == [6, 8]

    want_model, want_opt = make_model()
    train(want_model, want_opt, range(1, 9))
    _assert_equal(state_of(model, opt, 8), state_of(want_model, want_opt, 8))


def test_two_ranks_sharded_and_replicated(tmp_path: Path) -> None:
    outcomes = run_ranks(
        checkpoint_workers.sharded_and_replicated,
        nodes=1,
        ranks_per_node=2,
        args=(str(tmp_path),),
        timeout=120,
        start_method="spawn",
    )
    for o in outcomes:
        step, state = o.value["sharded"]
        assert step == 3
        _assert_equal(state, {"shard": torch.full((4,), 30.0 + o.rank), "rank": o.rank, "step": 3})
        assert o.value["replicated"][0] == 7
        _assert_equal(o.value["replicated"][1], {"w": torch.arange(3.0)})
    sharded = CheckpointStore(str(tmp_path / "sharded"))
    assert sharded.steps() == [2, 3]
    files = sorted(p.name for p in Path(sharded.path(3)).iterdir())
    assert files == [f"rank-0000{r}.{kind}" for r in (0, 1) for kind in ("json", "safetensors")]
    with pytest.raises(CheckpointError, match="no shard for rank 2"):
        sharded.read(3, rank=2)
    with pytest.raises(CheckpointError, match="written by 2 rank.* loads it as 1"):
        AsyncCheckpointer(sharded.url).load(3)
    replicated = Path(CheckpointStore(str(tmp_path / "replicated")).path(7))
    assert sorted(p.name for p in replicated.iterdir()) == [
        "rank-00000.json",
        "rank-00000.safetensors",
    ]


def test_on_fs3(fs3_address: str) -> None:
    url = f"fs3://{fs3_address}/ckpt"
    # Small chunks: the 1 MiB shard spans several chunks written in parallel.
    options = {"chunk_size": 256 * 1024, "skip_instance_cache": True}
    state = {"big": torch.randn(256, 1024), **_state()}
    with AsyncCheckpointer(url, keep=1, **options) as ckpt:
        ckpt.save(1, {"step": 1})
        ckpt.save(2, state)
        step, loaded = ckpt.load_latest()
    assert step == 2 and ckpt.store.steps() == [2]
    _assert_equal(loaded, state)
    assert torch.equal(ckpt.store.read_tensor(2, "big"), state["big"])
