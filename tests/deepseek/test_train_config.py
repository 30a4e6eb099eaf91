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


def test_init_brings_the_architecture_and_allows_only_shape_keeping_overrides(
    tmp_path: Path,
) -> None:
    import deepseek
    from deepseek.train_config import build_model_config

    saved = deepseek.preset("v2-tiny", num_hidden_layers=2, aux_loss_alpha=0.0)
    deepseek.save_pretrained(deepseek.DeepseekForCausalLM(saved), str(tmp_path / "init"))
    path = tmp_path / "train.yaml"
    path.write_text(f"model: {{init: {tmp_path / 'init'}}}\n")
    config = build_model_config(load_train_config(str(path)).model)
    assert (config.model_type, config.num_hidden_layers) == ("deepseek_v2", 2)
    kept = load_train_config(str(path), ["model.overrides.aux_loss_alpha=0.01"])
    assert build_model_config(kept.model).aux_loss_alpha == 0.01
    wider = load_train_config(str(path), ["model.overrides.n_routed_experts=16"])
    with pytest.raises(
        ConfigError, match=r"\{'n_routed_experts': 16\} change the shapes .* -> \(16, 64, 32\)"
    ):
        build_model_config(wider.model)
    with pytest.raises(ConfigError, match=r"drop preset"):
        load_train_config(str(path), ["model.preset=v3-tiny"])
    unknown = load_train_config(str(path), ["model.overrides.hiden_size=8"])
    with pytest.raises(ConfigError, match=r"unknown ModelConfig field\(s\) \['hiden_size'\]"):
        build_model_config(unknown.model)
