"""The training configuration of `deepseek.train`: dataclasses, one YAML loader.

`load_train_config` reads a YAML file (any fsspec URL) and applies `section.field=value`
overrides from the command line; every value is checked when the dataclasses are built,
and a bad one is reported as one ConfigError line naming it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import fsspec
import yaml

from deepseek.config import ModelConfig, load_config, preset
from deepseek.data import DataConfig
from deepseek.errors import ConfigError
from deepseek.parallel import BACKENDS, PARALLEL_MODES, PIPELINE_REFUSAL


@dataclass
class ModelSection:
    preset: str = "v3-tiny"
    """A `deepseek.config.PRESETS` name, used when `config` is not given."""
    config: str | None = None
    """URL of a HF config.json to build the model from instead."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """ModelConfig fields to replace, e.g. {num_hidden_layers: 4}."""


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr: float = 3e-5
    """Cosine floor."""
    warmup_steps: int = 10
    weight_decay: float = 0.1
    """Applied to matrices only, not to norms and biases."""
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables)."""


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 100
    """Total optimiser steps (also the cosine horizon)."""
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50
    checkpoint_dir: str | None = None
    """fsspec URL of the checkpoint folder; None disables checkpoints and resume."""
    checkpoint_keep: int = 3
    """Published checkpoints to keep; older ones are deleted after each publish."""
    device: str = "auto"
    """"auto" picks cuda:LOCAL_RANK when a GPU is present, else cpu."""
    parallel: str = "ddp"
    """With more than one rank: "ddp" (haiscale DDP) or "fsdp" (haiscale FSDP, one unit
    per decoder block). "pp" is refused: this model does not cut into pipeline stages."""
    ep: int = 1
    """Expert-parallel degree: routed experts split over groups of `ep` ranks (1 = off)."""
    backend: str = "auto"
    """torch.distributed backend: "auto" (nccl on CUDA, else hfreduce), "hfreduce",
    "gloo" or "nccl"."""
    metrics_file: str | None = None
    """Local path rank 0 appends JSON-lines events to (schema: the module docstring)."""

    def __post_init__(self) -> None:
        if self.parallel not in PARALLEL_MODES:
            raise ConfigError(
                f"parallel={self.parallel!r}: choose one of {', '.join(PARALLEL_MODES[:2])}"
            )
        if self.parallel == "pp":
            raise ConfigError(PIPELINE_REFUSAL)
        if not isinstance(self.ep, int) or self.ep < 1:
            raise ConfigError(f"ep={self.ep!r}: must be a positive integer (1 = off)")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend={self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if self.checkpoint_keep < 1:
            raise ConfigError(f"checkpoint_keep={self.checkpoint_keep}: keep at least 1")
        if self.steps <= 0:
            raise ConfigError(f"steps={self.steps}: must be positive")
        if self.checkpoint_every <= 0:
            raise ConfigError(f"checkpoint_every={self.checkpoint_every}: must be positive")
        if self.data.seq_len <= 0 or self.data.batch_size <= 0:
            raise ConfigError(
                f"data.seq_len={self.data.seq_len}, data.batch_size={self.data.batch_size}: "
                "must be positive"
            )


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    nested = {"model": ModelSection, "data": DataConfig, "optim": OptimConfig}
    kwargs = {}
    for key, value in values.items():
        if cls is TrainConfig and key in nested:
            value = _build(nested[key], value or {}, key)
        elif key == "betas":
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def load_train_config(path: str, overrides: list[str] = ()) -> TrainConfig:  # type: ignore[assignment]
    """Reads a YAML file, then applies `section.field=value` overrides (values parsed as YAML).

    Raises:
        ConfigError: unknown fields, malformed overrides or invalid values.
    """
    with fsspec.open(path, "r") as f:
        values = yaml.safe_load(f) or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected section.field=value")
        *parents, leaf = key.split(".")
        target = values
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = yaml.safe_load(raw)
    return _build(TrainConfig, values, "train config")


def build_model_config(section: ModelSection) -> ModelConfig:
    base = load_config(section.config) if section.config else preset(section.preset)
    return dataclasses.replace(base, **section.overrides)
