"""Training entry point: `python -m deepseek.train CONFIG.yaml [section.field=value ...]`.

What platform jobs run. It parses the config, builds the model, data and optimiser, trains,
and always closes the process group. Rank and world size come from the RANK / LOCAL_RANK /
WORLD_SIZE variables `hai` (or torchrun) sets; with more than one rank the model is
wrapped in torch.distributed DDP. Checkpoints hold model, optimiser, scheduler, the step
(which fixes the data position) and RNG states, so a resumed run continues the
uninterrupted loss curve exactly.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import fsspec
import torch
import torch.distributed as dist
import yaml

from deepseek.config import ModelConfig, load_config, preset
from deepseek.data import DataConfig, TokenBatches, load_tokenizer, read_tokens
from deepseek.errors import ConfigError
from deepseek.model import DeepseekForCausalLM

log = logging.getLogger("deepseek.train")


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
    device: str = "auto"
    """"auto" picks cuda:LOCAL_RANK when a GPU is present, else cpu."""

    def __post_init__(self) -> None:
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


def lr_at(step: int, optim: OptimConfig, steps: int) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at `steps`."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    progress = (step - optim.warmup_steps) / max(1, steps - optim.warmup_steps)
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1 + math.cos(math.pi * progress))


def _optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": optim.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas)


def _checkpoint_path(root: str, step: int) -> str:
    return f"{root.rstrip('/')}/step-{step:08d}.pt"


def _latest_checkpoint(root: str) -> str | None:
    fs, path = fsspec.core.url_to_fs(root)
    if not fs.exists(path):
        return None
    names = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".pt"))
    return fs.unstrip_protocol(names[-1]) if names else None


def _save(url: str, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    # Write then rename, so a job killed mid-write never leaves a truncated latest checkpoint.
    fs.pipe_file(path + ".tmp", buffer.getvalue())
    fs.mv(path + ".tmp", path)


def _load(url: str) -> dict[str, Any]:
    with fsspec.open(url, "rb") as f:
        return torch.load(io.BytesIO(f.read()), weights_only=False)


def _progress(total: int, start: int):
    """A rich progress bar on a terminal, else None (logs only)."""
    if not sys.stderr.isatty():
        return None
    from rich.progress import Progress

    bar = Progress(transient=True)
    bar.start()
    return bar, bar.add_task("training", total=total, completed=start)


def run(config: TrainConfig, stop_at: int | None = None) -> list[float]:
    """Trains (resuming from the newest checkpoint in checkpoint_dir) and returns the
    per-step total losses of this run.

    Args:
        stop_at: stop after this step, checkpointing first, as a preempted job would.
    """
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if config.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
    torch.manual_seed(config.seed)
    model = DeepseekForCausalLM(build_model_config(config.model)).to(device).train()
    tokenizer = load_tokenizer(config.data)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ConfigError(
            f"model vocab_size={model.config.vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size}; raise model.overrides.vocab_size"
        )
    batches = TokenBatches(
        read_tokens(config.data, tokenizer),
        config.data.seq_len,
        config.data.batch_size,
        config.seed,
    )
    optimizer = _optimizer(model, config.optim)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_at(s, config.optim, config.steps) / config.optim.lr
    )
    start = 0
    latest = _latest_checkpoint(config.checkpoint_dir) if config.checkpoint_dir else None
    if latest is not None:
        state = _load(latest)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start = state["step"]
        log.info("resumed from %s at step %d", latest, start)
    step_model: torch.nn.Module = model
    if world > 1:
        # Buffers stay per rank: the routing bias moves identically everywhere because
        # update_bias all-reduces loads, and load counts must not be overwritten by rank 0.
        step_model = torch.nn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    end = min(config.steps, stop_at) if stop_at is not None else config.steps
    losses: list[float] = []
    progress = _progress(config.steps, start) if rank == 0 else None
    tokens_per_step = config.data.batch_size * config.data.seq_len * world
    clock = time.perf_counter()
    try:
        for step in range(start, end):
            inputs, labels = (t.to(device) for t in batches.batch(step, rank, world))
            with autocast:
                out = step_model(inputs, labels=labels)
            out.loss.backward()
            if config.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loads = model.update_expert_bias()
            losses.append(out.loss.item())
            done = step + 1
            if rank == 0 and (done % config.log_every == 0 or done == end):
                elapsed, clock = time.perf_counter() - clock, time.perf_counter()
                steps_logged = done % config.log_every or config.log_every
                imbalance = (
                    (loads.amax(1) / loads.mean(1).clamp(min=1)).mean().item()
                    if (loads is not None)
                    else 1.0
                )
                log.info(
                    "step %d loss %.4f ce %.4f lr %.2e tok/s %.0f expert max/mean load %.2f",
                    done,
                    losses[-1],
                    out.ce_loss.item(),
                    scheduler.get_last_lr()[0],
                    tokens_per_step * steps_logged / elapsed,
                    imbalance,
                )
            if progress is not None:
                progress[0].update(progress[1], completed=done)
            if config.checkpoint_dir and (done % config.checkpoint_every == 0 or done == end):
                if rank == 0:
                    _save(
                        _checkpoint_path(config.checkpoint_dir, done),
                        {
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "rng": torch.get_rng_state(),
                            # Every rank seeds alike and draws alike, so rank 0's states
                            # stand for all (each rank restores onto its own device).
                            "cuda_rng": (
                                torch.cuda.get_rng_state(device) if device.type == "cuda" else None
                            ),
                            "step": done,
                            "config": dataclasses.asdict(config),
                        },
                    )
                if world > 1:
                    dist.barrier()
    finally:
        if progress is not None:
            progress[0].stop()
    return losses


def main(argv: list[str] | None = None) -> int:
    """Parses `CONFIG.yaml [section.field=value ...]`, trains, and always closes."""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(
            "usage: python -m deepseek.train CONFIG.yaml [section.field=value ...]", file=sys.stderr
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = load_train_config(args[0], args[1:])
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        run(config)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
