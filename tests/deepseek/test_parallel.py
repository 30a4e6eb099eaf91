"""`deepseek.train` on several CPU ranks (haiscale DDP over hfreduce and gloo, expert
parallelism, FSDP): ranks together train what one process trains on the concatenated
batch, a suspend requested on one rank stops them all after the same step, and the resumed
run continues the uninterrupted loss curve exactly. Also the degree checks and the metrics
file of a multi-rank run."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import deepseek
from deepseek.config import preset
from deepseek.parallel import check_degrees
from deepseek.train import load_train_config, run
from haiscale.checkpoint import CheckpointStore
from hfreduce.launch import run_ranks

from . import train_workers

TEXT = [
    "the quick brown fox jumps over the lazy dog.",
    "a stitch in time saves nine.",
    "all that glitters is not gold.",
] * 12
STEPS = 6
# Rank r of w reads windows (s·w + r)·B … (s·w + r + 1)·B at step s (deepseek.data), so w
# ranks with B/w rows each read exactly the rows of one process with B.
ROWS = 4
# Sums over ranks and over one process's batch round differently in fp32.
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[float]]:
    """(config path with 2 rows per rank, the one-process losses on all 4 rows)."""
    folder = tmp_path_factory.mktemp("parallel")
    for i in range(2):
        pq.write_table(pa.table({"text": TEXT[i::2]}), folder / f"part-{i}.parquet")
    config = {
        "model": {"preset": "v3-tiny", "overrides": {"num_hidden_layers": 2}},
        "data": {"files": [f"file://{folder}/*.parquet"], "seq_len": 32, "batch_size": 2},
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2},
        "steps": STEPS,
        "log_every": 3,
        "checkpoint_every": 4,
    }
    path = folder / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    one_process = run(load_train_config(str(path), [f"data.batch_size={ROWS}"])).losses
    return str(path), one_process


@pytest.fixture(scope="module", params=["hfreduce", "gloo"])
def two_ranks(request, setup, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp(f"two-ranks-{request.param}")
    outcomes = run_ranks(
        train_workers.two_ranks,
        nodes=1,
        ranks_per_node=2,
        args=(setup[0], str(folder), request.param),
        timeout=150,
        start_method="spawn",
    )
    return {"folder": folder, "ranks": [o.value for o in outcomes]}


def _close(got: list[float], want: list[float]) -> None:
    assert got == pytest.approx(want, rel=TOLERANCE["rtol"], abs=TOLERANCE["atol"])


def test_ddp_trains_what_one_process_trains_on_the_whole_batch(two_ranks, setup) -> None:
    one_process = setup[1]
    for rank in two_ranks["ranks"]:
        assert rank["backend"] in ("hfreduce", "gloo")
        assert len(rank["straight"]) == STEPS
        _close(rank["straight"], one_process)
    assert two_ranks["ranks"][0]["straight"] == two_ranks["ranks"][1]["straight"]


def test_suspend_on_one_rank_stops_both_and_resume_is_exact(two_ranks) -> None:
    for rank in two_ranks["ranks"]:
        suspended = rank["suspended"]
        assert (suspended["reason"], suspended["step"]) == ("suspended", 3)
        assert suspended["second_reason"] == "finished"
        # Acknowledged once per rank, after the checkpoint of step 3 was published.
        assert suspended["acks"] == [3]
        assert suspended["first"] + suspended["second"] == rank["straight"]


def test_expert_parallel_trains_what_one_process_trains(two_ranks, setup) -> None:
    for rank in two_ranks["ranks"]:
        _close(rank["ep"], setup[1])
    # Each rank checkpointed its own 4 of the 8 routed experts per MoE layer.
    store = CheckpointStore(str(two_ranks["folder"] / "ep"))
    for r in range(2):
        shard = store.read(STEPS, r)["model"]["model.layers.1.mlp.experts.gate_up_proj"]
        assert shard.shape[0] == 4


def test_fsdp_trains_and_resumes_like_ddp(two_ranks) -> None:
    for rank in two_ranks["ranks"]:
        error = rank.get("fsdp_error")
        assert error is None, error
        fsdp = rank["fsdp"]
        assert (fsdp["reason"], fsdp["acks"]) == ("suspended", [3])
        _close(fsdp["first"] + fsdp["second"], rank["straight"])
    steps = CheckpointStore(str(two_ranks["folder"] / "fsdp")).steps()
    assert steps[-1] == STEPS
    # Sharded: every rank wrote its own shard.
    names = sorted(p.name for p in (two_ranks["folder"] / "fsdp" / f"step-{STEPS:012d}").iterdir())
    assert names == [f"rank-{r:05d}.{ext}" for r in range(2) for ext in ("json", "safetensors")]


def test_metrics_file_has_the_events_in_order(two_ranks) -> None:
    lines = (two_ranks["folder"] / "metrics.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]  # rank 0 alone writes
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["start", "allreduce"] and kinds[-1] == "end"
    assert kinds.count("step") == STEPS and kinds.count("checkpoint") == 2
    start, allreduce, end = events[0], events[1], events[-1]
    backend = two_ranks["ranks"][0]["backend"]
    assert start == {
        **start,
        "step": 0,
        "resumed_from": None,
        "restart_count": 0,
        "world": 2,
        "parallel": "ddp",
        "backend": backend,
    }
    assert allreduce["bytes"] > 0 and allreduce["seconds"] > 0 and allreduce["algbw_gbps"] > 0
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, STEPS + 1))
    assert [e["loss"] for e in steps] == two_ranks["ranks"][0]["straight"]
    for e in steps:
        assert e["ce_loss"] < e["loss"] and e["lr"] > 0 and e["tokens_per_s"] > 0
        assert e["expert_imbalance"] >= 1.0
    checkpoints = [e for e in events if e["event"] == "checkpoint"]
    assert [c["step"] for c in checkpoints] == [4, STEPS]
    for c in checkpoints:
        assert c["bytes"] > 100_000 and 0 < c["stall_s"] <= c["write_s"]
        assert c["url"].endswith(f"straight/step-{c['step']:012d}")
        # Reported after the step that saved it, never before.
        assert kinds.index("checkpoint") > [e.get("step") for e in events].index(4)
    assert (end["step"], end["reason"]) == (STEPS, "finished")
    times = [e["time"] for e in events if "time" in e]
    assert times == sorted(times)


def test_two_nodes_of_two_ranks_over_hfreduce(setup, tmp_path: Path) -> None:
    """The demo's layout; ep=2 there makes expert groups of 2 with a replica on each node."""
    outcomes = run_ranks(
        train_workers.two_nodes,
        nodes=2,
        ranks_per_node=2,
        args=(setup[0], str(tmp_path)),
        timeout=150,
        start_method="spawn",
    )
    for o in outcomes:
        _close(o.value["ddp"], setup[1])
        _close(o.value["ep"], setup[1])
    assert len(list((tmp_path / "ep4" / f"step-{STEPS:012d}").glob("*.safetensors"))) == 4


@pytest.mark.parametrize(
    ("parallel", "ep", "world", "message"),
    [
        (
            "ddp",
            3,
            4,
            "ep=3 must divide both the world size (4 ranks) and the routed experts "
            "per MoE layer (8)",
        ),
        ("ddp", 4, 2, "ep=4 must divide both the world size (2 ranks)"),
        ("fsdp", 2, 2, "ep=2 with parallel=fsdp: expert parallelism runs under ddp only"),
        ("pp", 1, 2, "parallel=pp: DeepseekForCausalLM cannot be cut"),
    ],
)
def test_layouts_that_do_not_fit_are_refused(parallel, ep, world, message) -> None:
    with pytest.raises(deepseek.ConfigError) as caught:
        check_degrees(parallel, ep, world, preset("v3-tiny"))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_expert_parallel_needs_routed_experts() -> None:
    with pytest.raises(deepseek.ConfigError, match="ep=2: the model has no routed experts"):
        check_degrees("ddp", 2, 2, preset("llm-tiny"))
