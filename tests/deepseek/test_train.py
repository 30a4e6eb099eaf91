"""The training entry point: parquet via fsspec, loss falls, exact resume, bad data, DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

import deepseek
from deepseek.data import DataConfig, HFTokenizer, read_tokens
from deepseek.train import TrainConfig, load_train_config, lr_at, run

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
    losses = run(_config(corpus, tmp_path, steps=30))
    assert len(losses) == 30
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3


def test_stop_and_resume_reproduces_uninterrupted_curve(corpus: str, tmp_path: Path) -> None:
    straight = run(_config(corpus, tmp_path, steps=6, checkpoint_dir=str(tmp_path / "a")))
    config = _config(corpus, tmp_path, steps=6, checkpoint_dir=str(tmp_path / "b"))
    first = run(config, stop_at=3)
    assert (tmp_path / "b" / "step-00000003.pt").exists()
    second = run(config)
    assert first + second == straight


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


def _entry_point(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=170
    )


def test_command_line_runs_with_overrides(corpus: str, tmp_path: Path) -> None:
    _config(corpus, tmp_path)
    result = _entry_point(
        ["-m", "deepseek.train", "train.yaml", "steps=2", f"checkpoint_dir={tmp_path}/ck"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "step 2 loss" in result.stderr
    assert (tmp_path / "ck" / "step-00000002.pt").exists()


def test_two_process_ddp_keeps_ranks_in_sync(corpus: str, tmp_path: Path) -> None:
    _config(corpus, tmp_path)
    args = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = _entry_point(
        [*args, "-m", "deepseek.train", "train.yaml", "steps=2", f"checkpoint_dir={tmp_path}/ck"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "ck" / "step-00000002.pt", weights_only=False)
    bias = state["model"]["model.layers.1.mlp.gate.e_score_correction_bias"]
    assert bias.abs().sum() > 0
