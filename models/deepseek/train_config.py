"""The training configuration of `deepseek.train`: pydantic models, one YAML loader.

`load_train_config` reads a YAML file (any fsspec URL) and applies `section.field=value`
overrides from the command line; every value is checked, under fs3.settings' one coercion
rule, when the models are built, and a bad one is reported as one ConfigError line naming
the field and the file or override.

Fine-tuning: `model.init` names a Hugging Face-format checkpoint folder (config.json +
safetensors, any fsspec URL). The model's architecture then comes from that config.json
and the run starts from its weights; `model.overrides` may still change fields that leave
every parameter's shape as it is (loss weights, routing constants, norm epsilon, context
length), and anything else is refused. A run that finds a checkpoint of its own in
`checkpoint_dir` resumes from it and does not read the init weights again.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

import fsspec
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from deepseek.architectures import AnyConfig, build_model
from deepseek.config import config_from_hf, load_config, preset
from deepseek.data import DataConfig
from deepseek.errors import CheckpointNotFoundError, ConfigError
from deepseek.parallel import BACKENDS, PARALLEL_MODES, PIPELINE_REFUSAL
from fs3.settings import layered

_SECTION = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ModelSection(BaseModel):
    model_config = _SECTION

    preset: str = "v3-tiny"
    """A `deepseek.config.PRESETS` name, used when neither `config` nor `init` is given."""
    config: str | None = None
    """URL of a HF config.json to build the model from instead."""
    init: str | None = None
    """fsspec URL of a HF checkpoint folder (config.json + safetensors) to fine-tune: the
    architecture comes from its config.json and training starts from its weights."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """ModelConfig fields to replace, e.g. {num_hidden_layers: 4}; with `init`, only fields
    that change no parameter shape (e.g. aux_loss_alpha, mtp_loss_weight)."""
    dsa_stage: Literal["dense", "sparse"] | None = None
    """DeepSeek-V3.2 only: "dense" is the sparse attention's warm-up (attention over every
    key; only the lightning indexers train, on their KL loss; the rest is frozen), "sparse"
    trains everything with attention on each query's top-k keys (None: "sparse")."""

    @model_validator(mode="after")
    def _one_architecture_source(self) -> ModelSection:
        if self.init is not None and ({"preset", "config"} & self.model_fields_set):
            given = sorted({"preset", "config"} & self.model_fields_set)
            raise ValueError(
                f"init={self.init!r} brings its own config.json; drop {' and '.join(given)}"
            )
        return self


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


def read_init_config(init: str) -> AnyConfig:
    """The architecture in the config.json of checkpoint folder `init`.

    Raises:
        CheckpointNotFoundError: the folder has no config.json (or cannot be reached).
        ConfigError: the config.json is not JSON or not a DeepSeek config.
    """
    fs, root = fsspec.core.url_to_fs(init)
    path = f"{root.rstrip('/')}/config.json"
    try:
        if not fs.exists(path):
            raise CheckpointNotFoundError(f"model.init={init}: no config.json there")
        # Through this fs: a URL rebuilt from its path would lose an fs3://HOST:PORT address.
        with fs.open(path, "r") as f:
            hf = json.load(f)
    except OSError as err:
        if isinstance(err, CheckpointNotFoundError):
            raise
        raise CheckpointNotFoundError(f"model.init={init}: cannot reach it ({err})") from None
    except ValueError as err:
        raise ConfigError(f"model.init={init}: config.json is not JSON ({err})") from None
    return config_from_hf(hf)


def build_model_config(section: ModelSection) -> AnyConfig:
    """The model's architecture: the init checkpoint's, a config.json's or a preset's, with
    `section.overrides` applied.

    Raises:
        ConfigError: an unknown override field, an invalid result, or (with `init`) an
            override that would change a parameter shape.
        CheckpointNotFoundError: `init` has no config.json.
    """
    if section.init is not None:
        base = read_init_config(section.init)
    elif section.config:
        base = load_config(section.config)
    else:
        base = preset(section.preset)
    try:
        config = dataclasses.replace(base, **section.overrides)
    except TypeError:
        known = {f.name for f in dataclasses.fields(base)}
        unknown = sorted(set(section.overrides) - known)
        raise ConfigError(
            f"model.overrides: unknown {type(base).__name__} field(s) {unknown}"
        ) from None
    if section.init is not None and section.overrides:
        _refuse_reshaping(base, config, section)
    return config


def _parameter_shapes(config: AnyConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation work
        model = build_model(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def _refuse_reshaping(base: AnyConfig, config: AnyConfig, section: ModelSection) -> None:
    """Overrides on top of an init checkpoint must leave its weights loadable as they are."""
    before, after = _parameter_shapes(base), _parameter_shapes(config)
    changed = sorted(
        name for name in before.keys() | after.keys() if before.get(name) != after.get(name)
    )
    if changed:
        first = changed[0]
        raise ConfigError(
            f"model.overrides {section.overrides} change the shapes of the weights of "
            f"model.init={section.init} ({len(changed)} tensors, e.g. {first}: "
            f"{before.get(first, 'absent')} -> {after.get(first, 'absent')}); with model.init "
            "override only fields that keep every shape (e.g. aux_loss_alpha, "
            "mtp_loss_weight, max_position_embeddings)"
        )
