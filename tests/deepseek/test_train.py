"""The training entry point: parquet via fsspec, loss falls, exact resume through the
suspend hook, bad data and config, the command line (one process, torchrun, SIGTERM and the
hai suspend file), fine-tuning from an init checkpoint on two ranks. Multi-rank layouts:
test_parallel.py; SFT data and one-process fine-tuning: test_sft.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import deepseek
from deepseek.data import DataConfig, HFTokenizer, read_tokens
from deepseek.train import TrainConfig, load_train_config, lr_at, run
from haiscale.checkpoint import CheckpointStore, load_latest

from ..waiting import wait_for

TEXT = [
    "the quick brown fox jumps over the lazy dog.",
    "a stitch in time saves nine.",
    "all that glitters is not gold.",
] * 12


@pytest.fixture
def corpus(tmp_path: Path) -> str:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(2):
        pq.write_table(pa.table({"text": TEXT[i::2]}), folder / f"part-{i}.parquet")
    return f"file://{folder}/*.parquet"


def _config(corpus: str, tmp_path: Path, **values) -> TrainConfig:
    path = tmp_path / "train.yaml"
    base = {
        "model": {"preset": "v3-tiny", "overrides": {"num_hidden_layers": 2}},
        "data": {"files": [corpus], "seq_len": 32, "batch_size": 4},
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2},
        "steps": 8,
        "log_every": 4,
        "checkpoint_every": 4,
    }
    path.write_text(yaml.safe_dump({**base, **values}))
    return load_train_config(str(path))


def test_loss_falls(corpus: str, tmp_path: Path) -> None:
    result = run(_config(corpus, tmp_path, steps=30))
    losses = result.losses
    assert len(losses) == 30 and (result.step, result.reason) == (30, "finished")
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3


@pytest.mark.parametrize("where", ["local", "memory"])
def test_suspend_and_resume_reproduces_uninterrupted_curve(
    corpus: str, tmp_path: Path, where: str
) -> None:
    """Through the suspend hook, to a local folder and to another fsspec filesystem."""
    root = str(tmp_path) if where == "local" else f"memory://{tmp_path.name}"
    straight = run(_config(corpus, tmp_path, steps=6, checkpoint_dir=f"{root}/a"))
    config = _config(corpus, tmp_path, steps=6, checkpoint_dir=f"{root}/b")
    calls, acks = [], []
    first = run(
        config,
        should_suspend=lambda: calls.append(1) or len(calls) >= 3,
        acknowledge_suspend=lambda: acks.append(CheckpointStore(f"{root}/b").latest()),
    )
    assert (first.step, first.reason) == (3, "suspended")
    assert acks == [3]  # acknowledged once, with the checkpoint of step 3 already published
    second = run(config)
    assert second.reason == "finished"
    assert first.losses + second.losses == straight.losses
    assert CheckpointStore(f"{root}/b").steps() == [3, 4, 6]


def test_checkpoint_keep_drops_older_checkpoints(corpus: str, tmp_path: Path) -> None:
    config = _config(
        corpus,
        tmp_path,
        steps=4,
        checkpoint_every=1,
        checkpoint_keep=2,
        checkpoint_dir=str(tmp_path / "ck"),
    )
    run(config)
    assert CheckpointStore(str(tmp_path / "ck")).steps() == [3, 4]


def test_lr_schedule_warms_up_then_decays() -> None:
    optim = TrainConfig().optim
    lrs = [lr_at(s, optim, 100) for s in range(100)]
    assert lrs[0] < lrs[optim.warmup_steps - 1] == pytest.approx(optim.lr)
    assert lrs[-1] < lrs[50] < lrs[optim.warmup_steps]
    assert lrs[-1] >= optim.min_lr


def test_corrupt_parquet_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(deepseek.DataError, match="bad.parquet"):
        read_tokens(DataConfig(files=[str(bad)]), deepseek_byte())


def test_empty_dataset_is_reported(tmp_path: Path) -> None:
    with pytest.raises(deepseek.DataError, match="no parquet files"):
        read_tokens(DataConfig(files=[f"{tmp_path}/*.parquet"]), deepseek_byte())
    pq.write_table(pa.table({"text": ["hi"]}), tmp_path / "tiny.parquet")
    with pytest.raises(deepseek.DataError, match="shorter than one sequence"):
        read_tokens(DataConfig(files=[str(tmp_path / "tiny.parquet")]), deepseek_byte())


def deepseek_byte():
    from deepseek.data import ByteTokenizer

    return ByteTokenizer()


def test_hf_tokenizer_json(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<eos>": 0, "[UNK]": 1, "the": 2, "fox": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    hf = HFTokenizer(str(tmp_path / "tokenizer.json"), eos_token="<eos>")
    assert hf.vocab_size == 4 and hf.eos_id == 0
    assert hf.encode("the fox jumps") == [2, 3, 1]


def test_unknown_config_field_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("stepz: 3\n")
    with pytest.raises(deepseek.ConfigError, match="stepz"):
        load_train_config(str(tmp_path / "c.yaml"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("parallel=tp", "(overrides): parallel: choose one of ddp, fsdp, got 'tp'"),
        ("parallel=pp", "parallel=pp: DeepseekForCausalLM cannot be cut into haiscale.pipeline"),
        ("backend=mpi", "backend: choose one of auto, hfreduce, gloo, nccl, got 'mpi'"),
        ("ep=0", "ep: Input should be greater than or equal to 1, got 0"),
        ("checkpoint_keep=0", "checkpoint_keep: Input should be greater than or equal to 1, got 0"),
    ],
)
def test_bad_layout_values_are_one_clear_line(tmp_path: Path, override: str, message: str) -> None:
    (tmp_path / "c.yaml").write_text("steps: 3\n")
    with pytest.raises(deepseek.ConfigError) as caught:
        load_train_config(str(tmp_path / "c.yaml"), [override])
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_expert_degree_that_does_not_fit_one_process_is_refused(
    corpus: str, tmp_path: Path
) -> None:
    with pytest.raises(deepseek.ConfigError, match=r"ep=2 must divide both the world size \(1"):
        run(_config(corpus, tmp_path, ep=2))


def _entry_point(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=_environment(env),
        capture_output=True,
        text=True,
        timeout=170,
    )


def _environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "HAI_CONTROL_DIR", "HAI_RESTART_COUNT")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "OMP_NUM_THREADS": "1", **(extra or {})}


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_command_line_runs_with_overrides(corpus: str, tmp_path: Path) -> None:
    _config(corpus, tmp_path)
    result = _entry_point(
        ["-m", "deepseek.train", "train.yaml", "steps=2", f"checkpoint_dir={tmp_path}/ck"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "step 2 loss" in result.stderr
    assert CheckpointStore(f"{tmp_path}/ck").steps() == [2]


def test_command_line_config_error_is_one_line(corpus: str, tmp_path: Path) -> None:
    _config(corpus, tmp_path)
    result = _entry_point(["-m", "deepseek.train", "train.yaml", "ep=3"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "deepseek.train: ep=3 must divide both the world size (1 ranks) and the routed "
        "experts per MoE layer (8); choose a common divisor"
    )


@pytest.mark.parametrize("trigger", ["sigterm", "hai-suspend-file"])
def test_command_line_suspends_with_a_checkpoint(corpus: str, tmp_path: Path, trigger: str) -> None:
    """A platform job told to suspend (the hai suspend file, or SIGTERM when it has no
    other channel) finishes its step, checkpoints it, acknowledges and exits 0."""
    _config(corpus, tmp_path)
    control = tmp_path / "control"
    control.mkdir()
    metrics = tmp_path / "metrics.jsonl"
    env = {"HAI_CONTROL_DIR": str(control), "HAI_RESTART_COUNT": "1"}
    args = [
        "-m",
        "deepseek.train",
        "train.yaml",
        "steps=100000",
        "checkpoint_every=100000",
        f"checkpoint_dir={tmp_path}/ck",
        f"metrics_file={metrics}",
    ]
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=tmp_path,
        text=True,
        stderr=subprocess.PIPE,
        env=_environment(env if trigger != "sigterm" else None),
    )

    def stepped() -> bool:
        if any(e["event"] == "step" for e in _events(metrics)):
            return True
        assert proc.poll() is None, proc.communicate()[1]  # it died before its first step
        return False

    try:
        wait_for("the first training step", stepped, timeout=120)
        if trigger == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            (control / "suspend").touch()
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    events = _events(metrics)
    suspend, end = events[-2], events[-1]
    assert suspend["event"] == "suspend" and end == {**end, "event": "end", "reason": "suspended"}
    step = suspend["step"]
    assert end["step"] == step and CheckpointStore(f"{tmp_path}/ck").steps() == [step]
    assert f"suspended after step {step}" in stderr
    assert (control / "suspend_ack").exists() == (trigger != "sigterm")
    assert events[0]["restart_count"] == (0 if trigger == "sigterm" else 1)


def test_two_process_ddp_keeps_ranks_in_sync(corpus: str, tmp_path: Path) -> None:
    """torchrun, as a platform launches ranks: main() picks hfreduce on a CPU machine."""
    _config(corpus, tmp_path)
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    train = [
        "-m",
        "deepseek.train",
        "train.yaml",
        "steps=2",
        f"checkpoint_dir={tmp_path}/ck",
        f"metrics_file={tmp_path}/metrics.jsonl",
    ]
    result = _entry_point([*args, *train], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    step, state = load_latest(f"{tmp_path}/ck")
    assert step == 2
    bias = state["model"]["model.layers.1.mlp.gate.e_score_correction_bias"]
    assert bias.abs().sum() > 0
    start = _events(tmp_path / "metrics.jsonl")[0]
    assert (start["backend"], start["world"], start["parallel"]) == ("hfreduce", 2, "ddp")


def test_two_process_finetuning_loads_init_on_every_rank(tmp_path: Path) -> None:
    """torchrun, DDP over hfreduce, SFT data and an init checkpoint: both ranks agree there
    is no checkpoint of the run yet, load init and train; the first loss is the
    checkpoint's on the two ranks' first batches."""
    import torch

    from deepseek.sft import SFTBatches, load_sft_tokenizer, read_examples

    torch.manual_seed(5)
    init = tmp_path / "init"
    deepseek.save_pretrained(
        deepseek.DeepseekForCausalLM(deepseek.preset("v3-tiny", num_hidden_layers=2)), str(init)
    )
    lines = [json.dumps({"prompt": f"say {w}: ", "response": w}) for w in TEXT[0].split()]
    (tmp_path / "sft.jsonl").write_text("\n".join(lines) + "\n")
    files = [str(tmp_path / "sft.jsonl")]
    config = {
        "model": {"init": str(init)},
        "data": {"format": "sft", "files": files, "seq_len": 24, "batch_size": 2},
        "steps": 2,
    }
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    train = ["-m", "deepseek.train", "train.yaml", f"metrics_file={tmp_path}/metrics.jsonl"]
    result = _entry_point([*args, *train], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    events = _events(tmp_path / "metrics.jsonl")
    assert (events[0]["init"], events[0]["world"]) == (str(init), 2)
    data = load_train_config(str(tmp_path / "train.yaml")).data
    batches = SFTBatches(read_examples(data, *load_sft_tokenizer(data)), 24, 2, 0, 0)
    reference = deepseek.from_pretrained(str(init)).train()
    with torch.no_grad():
        losses = [reference(*batches.batch(0, rank, 2)).loss.item() for rank in (0, 1)]
    first = next(e for e in events if e["event"] == "step")
    assert first["loss"] == pytest.approx(sum(losses) / 2, rel=1e-5)


def test_v4_trains_through_the_entry_point(corpus: str, tmp_path: Path) -> None:
    model = {"preset": "v4-tiny", "overrides": {"vocab_size": 256}}
    result = run(_config(corpus, tmp_path, model=model, steps=20))
    assert result.reason == "finished"
    losses = result.losses
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3


def test_dsa_dense_stage_trains_the_indexers_alone(corpus: str, tmp_path: Path) -> None:
    from deepseek.train import _enter_dsa_stage

    model = deepseek.DeepseekForCausalLM(deepseek.preset("v32-tiny"))
    _enter_dsa_stage(model, "dense", "ddp")
    assert model.dsa_stage == "dense"
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".indexer." in name for name in trained)
    assert any(".indexer." not in name for name, _ in model.named_parameters())

    v32 = {"preset": "v32-tiny", "dsa_stage": "dense"}
    result = run(_config(corpus, tmp_path, model=v32, steps=4))
    assert result.reason == "finished" and all(loss == loss for loss in result.losses)
    with pytest.raises(deepseek.ConfigError, match="only deepseek_v32"):
        run(_config(corpus, tmp_path, model={"preset": "v3-tiny", "dsa_stage": "sparse"}))
    with pytest.raises(deepseek.ConfigError, match="use ddp"):
        _enter_dsa_stage(model, "dense", "fsdp")
