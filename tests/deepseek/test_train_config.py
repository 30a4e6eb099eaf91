"""The training configuration: file, then overrides, with the one coercion rule of settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepseek.errors import ConfigError
from deepseek.train_config import load_train_config


def test_overrides_replace_single_fields_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("data: {seq_len: 16, batch_size: 2}\noptim: {betas: [0.8, 0.9]}\n")
    config = load_train_config(str(path), ["data.batch_size=3", "optim.lr=1", "steps='7'"])
    assert (config.data.seq_len, config.data.batch_size) == (16, 3)
    assert config.optim.betas == (0.8, 0.9) and config.optim.lr == 1.0
    assert isinstance(config.optim.lr, float) and config.steps == 7


def test_wrong_types_name_the_field_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("data: {seq_len: long}\n")
    with pytest.raises(ConfigError, match=f"file {path}\\): data.seq_len: .*got 'long'"):
        load_train_config(str(path))
    path.write_text("optim: {lr: 0.1, momentum: 0.9}\n")
    with pytest.raises(ConfigError, match="optim.momentum: unknown setting; known: .*betas"):
        load_train_config(str(path))
    path.write_text("steps: 3\n")
    with pytest.raises(ConfigError, match=r"\(overrides\): data.batch_size: .*greater than 0"):
        load_train_config(str(path), ["data.batch_size=0"])
    with pytest.raises(ConfigError, match="cannot read train config file"):
        load_train_config(str(tmp_path / "missing.yaml"))
