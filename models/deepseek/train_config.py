"""The training configuration of `deepseek.train`: pydantic models, one YAML loader.

`load_train_config` reads a YAML file (any fsspec URL) and applies `section.field=value`
overrides from the command line; every value is checked, under fs3.settings' one coercion
rule, when the models are built, and a bad one is reported as one ConfigError line naming
the field and the file or override.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import fsspec
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from deepseek.config import ModelConfig, load_config, preset
from deepseek.data import DataConfig
from deepseek.errors import ConfigError
from deepseek.parallel import BACKENDS, PARALLEL_MODES, PIPELINE_REFUSAL
from fs3.settings import layered

_SECTION = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ModelSection(BaseModel):
    model_config = _SECTION

    preset: str = "v3-tiny"
    """A `deepseek.config.PRESETS` name, used when `config` is not given."""
    config: str | None = None
    """URL of a HF config.json to build the model from instead."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """ModelConfig fields to replace, e.g. {num_hidden_layers: 4}."""


class OptimConfig(BaseModel):
    model_config = _SECTION

    lr: float = 3e-4
    min_lr: float = 3e-5
    """Cosine floor."""
    warmup_steps: int = 10
    weight_decay: float = 0.1
    """Applied to matrices only, not to norms and biases."""
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables)."""


class TrainConfig(BaseModel):
    model_config = _SECTION

    model: ModelSection = Field(default_factory=ModelSection)
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    steps: int = Field(100, gt=0)
    """Total optimiser steps (also the cosine horizon)."""
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = Field(50, gt=0)
    checkpoint_dir: str | None = None
    """fsspec URL of the checkpoint folder; None disables checkpoints and resume."""
    checkpoint_keep: int = Field(3, ge=1)
    """Published checkpoints to keep; older ones are deleted after each publish."""
    device: str = "auto"
    """"auto" picks cuda:LOCAL_RANK when a GPU is present, else cpu."""
    parallel: str = "ddp"
    """With more than one rank: "ddp" (haiscale DDP) or "fsdp" (haiscale FSDP, one unit
    per decoder block). "pp" is refused: this model does not cut into pipeline stages."""
    ep: int = Field(1, ge=1)
    """Expert-parallel degree: routed experts split over groups of `ep` ranks (1 = off)."""
    backend: str = "auto"
    """torch.distributed backend: "auto" (nccl on CUDA, else hfreduce), "hfreduce",
    "gloo" or "nccl"."""
    metrics_file: str | None = None
    """Local path rank 0 appends JSON-lines events to (schema: the module docstring)."""

    @field_validator("parallel")
    @classmethod
    def _known_parallel(cls, value: str) -> str:
        if value == "pp":
            raise ValueError(PIPELINE_REFUSAL)
        if value not in PARALLEL_MODES:
            raise ValueError(f"choose one of {', '.join(PARALLEL_MODES[:2])}")
        return value

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(f"choose one of {', '.join(BACKENDS)}")
        return value


def load_train_config(path: str, overrides: list[str] = ()) -> TrainConfig:  # type: ignore[assignment]
    """Reads a YAML file, then applies `section.field=value` overrides (values parsed as YAML).

    Raises:
        ConfigError: unknown fields, malformed overrides or invalid values.
    """
    try:
        with fsspec.open(path, "r") as f:
            values = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read train config file {path}: {err}") from None
    given: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected section.field=value")
        *parents, leaf = key.split(".")
        target = given
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = yaml.safe_load(raw)
    layers = [(f"file {path}", values), ("overrides", given)]
    return layered(TrainConfig, layers, "train config", ConfigError)


def build_model_config(section: ModelSection) -> ModelConfig:
    base = load_config(section.config) if section.config else preset(section.preset)
    return dataclasses.replace(base, **section.overrides)
