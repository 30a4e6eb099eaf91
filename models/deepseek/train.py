"""Training entry point: `python -m deepseek.train CONFIG.yaml [section.field=value ...]`.

What platform jobs run. It parses the config, builds the model, data and optimiser, lays the
model out over the ranks (`deepseek.parallel`: haiscale DDP or FSDP, expert parallelism),
trains, and always closes the process group. Rank and world size come from the RANK /
LOCAL_RANK / WORLD_SIZE variables `hai` (or torchrun) sets; `backend` picks the process
group's backend. Checkpoints go through `haiscale.checkpoint.AsyncCheckpointer` (training
stalls only for the host copy) and hold model, optimiser, scheduler, the step (which fixes
the data position) and RNG states, so a resumed run continues the uninterrupted loss curve
exactly.

Fine-tuning: `model.init` names a Hugging Face checkpoint folder (any fsspec URL); the model
is built from its config.json and every rank loads its weights (`deepseek.hf.
load_checkpoint`) before the model is laid out, unless checkpoint_dir already holds a
checkpoint of this run: then the run resumes from that (newer) state and the init weights
are not read. `data.format: sft` trains on prompt/response examples with the loss on the
response tokens only (`deepseek.sft`).

Suspending: `run` asks `should_suspend()` after every step on every rank, and the ranks
agree (one small all-reduce, shared with the loss) so they all stop after the same step.
It then checkpoints that step, waits until the checkpoint is published, calls
`acknowledge_suspend()` and returns; `main` wires these to the hai job-side client and to
SIGTERM (`deepseek.train_hooks`).

Metrics (`metrics_file`): rank 0 appends one JSON object per line, flushed each time.
Times are Unix seconds; every event has an "event" key:

    start       time, step (first step of this run), resumed_from (checkpoint URL or null),
                init (the model.init URL whose weights were loaded, or null),
                restart_count (HAI_RESTART_COUNT), world, parallel ("ddp", "fsdp" or "none"
                for one process), backend (or "none"), ep
    allreduce   bytes, seconds, algbw_gbps: the median of 5 timed all-reduces (after a
                warm-up) of an fp32 tensor the size of the model's gradients over the
                training process group; algbw_gbps = bytes / seconds / 1e9. Multi-rank
                runs only, once.
    step        time, step (steps done), loss and ce_loss (averaged over ranks), lr (the
                one this step applied), tokens_per_s (all ranks), expert_imbalance (mean over
                MoE layers of max/mean tokens per expert; null for a dense model)
    checkpoint  step, bytes (all ranks' shards), stall_s (training blocked), write_s (from
                the save call until published), url; written once the checkpoint is published
    suspend     step, requested_at (when the ranks agreed to stop), acknowledged_at
    end         time, step, reason ("finished" or "suspended")
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from deepseek.architectures import build_model
from deepseek.data import Batches, DataConfig, TokenBatches, load_tokenizer, read_tokens
from deepseek.errors import CheckpointError as ModelCheckpointError
from deepseek.errors import ConfigError, DeepseekError
from deepseek.hf import load_checkpoint
from deepseek.model import CausalLM, DeepseekForCausalLM
from deepseek.parallel import (
    Parallelized,
    agree,
    allreduce_bandwidth,
    check_degrees,
    destroy_process_group,
    init_process_group,
    parallelize,
)
from deepseek.sft import SFTBatches, load_sft_tokenizer, read_examples
from deepseek.train_config import (
    ModelSection,
    OptimConfig,
    TrainConfig,
    build_model_config,
    load_train_config,
)
from deepseek.train_hooks import JobHooks, MetricsLog
from deepseek.train_state import TrainCheckpoints
from haiscale.checkpoint import CheckpointError, CheckpointStore

__all__ = [
    "ModelSection",
    "OptimConfig",
    "RunResult",
    "TrainConfig",
    "load_train_config",
    "lr_at",
    "main",
    "run",
]

log = logging.getLogger("deepseek.train")


def lr_at(step: int, optim: OptimConfig, steps: int) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at `steps`."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    progress = (step - optim.warmup_steps) / max(1, steps - optim.warmup_steps)
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1 + math.cos(math.pi * progress))


def _progress(total: int, start: int):
    """A rich progress bar on a terminal, else None (logs only)."""
    if not sys.stderr.isatty():
        return None
    from rich.progress import Progress

    bar = Progress(transient=True)
    bar.start()
    return bar, bar.add_task("training", total=total, completed=start)


@dataclass
class RunResult:
    """How a `run` ended."""

    losses: list[float]
    """Per-step total losses of this run, averaged over ranks."""
    step: int
    """Steps done when it ended; after a suspend, the step of its checkpoint."""
    reason: str
    """"finished" or "suspended"."""


@dataclass
class _Job:
    """What one `run` trains with: built there, stepped by `_train`."""

    config: TrainConfig
    plan: Parallelized
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: Batches
    checkpoints: TrainCheckpoints | None
    metrics: MetricsLog
    rank: int
    world: int
    device: torch.device


def _ranks() -> tuple[int, int, int]:
    """(rank, world, local rank) from torch.distributed, or the environment for one process."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        raise ConfigError(
            f"WORLD_SIZE={world} but torch.distributed is not initialised; start through "
            "`python -m deepseek.train` or call deepseek.parallel.init_process_group first"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local_rank
    return 0, 1, local_rank


def _has_checkpoint(url: str | None, world: int) -> bool:
    """Whether checkpoint_dir holds a published checkpoint, as rank 0 sees it (every rank
    must decide alike whether to load the init weights)."""
    found = [url is not None and CheckpointStore(url).latest() is not None]
    if world > 1:
        dist.broadcast_object_list(found, src=0)
    return bool(found[0])


def _enter_dsa_stage(model: CausalLM, stage: str, parallel: str) -> None:
    """Puts a V3.2 model's sparse attention in `stage`; the dense warm-up freezes everything
    but the lightning indexers, as the V3.2 paper's warm-up does."""
    if not isinstance(model, DeepseekForCausalLM) or not model.config.has_indexer:
        raise ConfigError(
            f"model.dsa_stage={stage!r}: only deepseek_v32 models have sparse attention stages"
        )
    model.dsa_stage = stage
    if stage == "dense":
        if parallel == "fsdp":
            # FSDP flattens a block's parameters into one shard that trains or does not.
            raise ConfigError("model.dsa_stage='dense' trains the indexers alone; use ddp")
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(".indexer." in name)


def _load_init(model: CausalLM, url: str) -> None:
    """The weights of checkpoint folder `url` into `model`, every failure one line."""
    try:
        load_checkpoint(model, url)
    except OSError as err:
        if isinstance(err, DeepseekError):  # CheckpointNotFoundError says it already
            raise
        raise ModelCheckpointError(f"model.init={url}: cannot read it ({err})") from None
    except ModelCheckpointError as err:
        raise ModelCheckpointError(f"model.init={url}: {err}") from None


def _batches(data: DataConfig, seed: int, vocab_size: int, hint: str) -> Batches:
    """The training batches of `data`: a pretraining token stream or SFT examples.

    Raises:
        ConfigError: the tokenizer has more ids than the model's vocabulary (`hint` says
            what to do).
        DataError: unreadable or empty data.
    """
    if data.format == "sft":
        tokenizer, template = load_sft_tokenizer(data)
    else:
        tokenizer, template = load_tokenizer(data), None
    if tokenizer.vocab_size > vocab_size:
        raise ConfigError(
            f"model vocab_size={vocab_size} is smaller than the tokenizer's "
            f"{tokenizer.vocab_size}; {hint}"
        )
    if data.format == "sft":
        examples = read_examples(data, tokenizer, template)
        return SFTBatches(examples, data.seq_len, data.batch_size, seed, tokenizer.eos_id)
    return TokenBatches(read_tokens(data, tokenizer), data.seq_len, data.batch_size, seed)


def run(
    config: TrainConfig,
    *,
    should_suspend: Callable[[], bool] | None = None,
    acknowledge_suspend: Callable[[], None] | None = None,
) -> RunResult:
    """Trains, resuming from the newest complete checkpoint in checkpoint_dir.

    With more than one rank torch.distributed must be initialised (`main` does it).

    Args:
        should_suspend: asked after every step on every rank; once it is true on any rank,
            every rank stops after that step, checkpoints it, waits until the checkpoint is
            published and returns (reason "suspended"). None: never suspend.
        acknowledge_suspend: called on every rank once that checkpoint is published.
    Raises:
        ConfigError: a layout (`parallel`, `ep`) that does not fit the world or the model,
            or `model.overrides` that reshape a `model.init` checkpoint.
        deepseek.CheckpointError: `model.init` is unreadable or does not fit its config.
    """
    rank, world, local_rank = _ranks()
    if config.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
    torch.manual_seed(config.seed)
    init = config.model.init
    model = build_model(build_model_config(config.model))
    if config.model.dsa_stage is not None:
        _enter_dsa_stage(model, config.model.dsa_stage, config.parallel)
    check_degrees(config.parallel, config.ep, world, model.config)
    hint = (
        "use the tokenizer model.init was trained with"
        if init
        else "raise model.overrides.vocab_size"
    )
    batches = _batches(config.data, config.seed, model.config.vocab_size, hint)
    if init is not None and _has_checkpoint(config.checkpoint_dir, world):
        init = None  # this run's own checkpoint is newer than the init weights
    if init is not None:
        _load_init(model, init)
        if rank == 0:
            log.info("initialised from %s", init)
    model = model.to(device).train()
    grad_numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
    plan = parallelize(model, parallel=config.parallel, ep=config.ep, world=world)
    optim = config.optim
    optimizer = torch.optim.AdamW(
        plan.param_groups(optim.weight_decay), lr=optim.lr, betas=optim.betas
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_at(s, optim, config.steps) / optim.lr
    )
    metrics = MetricsLog(config.metrics_file if rank == 0 else None)
    checkpoints = None
    progress = None
    try:
        start, resumed_from = 0, None
        if config.checkpoint_dir:
            checkpoints = TrainCheckpoints(
                config.checkpoint_dir,
                keep=config.checkpoint_keep,
                sharded=plan.sharded_checkpoint,
                metrics=metrics,
                device=device,
            )
            found = checkpoints.resume(plan, optimizer, scheduler)
            if found is not None:
                start, resumed_from = found, checkpoints.url_of(found)
                log.info("resumed from %s at step %d", resumed_from, start)
        backend = dist.get_backend() if world > 1 else "none"
        metrics.write(
            "start",
            time=time.time(),
            step=start,
            resumed_from=resumed_from,
            init=init,
            restart_count=int(os.environ.get("HAI_RESTART_COUNT", 0)),
            world=world,
            parallel=config.parallel if world > 1 else "none",
            backend=backend,
            ep=config.ep,
        )
        if world > 1:
            bandwidth = allreduce_bandwidth(grad_numel, device)
            metrics.write("allreduce", **bandwidth)
            if rank == 0:
                log.info(
                    "all-reduce of %.1f MB over %s on %d ranks: %.3f GB/s",
                    bandwidth["bytes"] / 2**20,
                    backend,
                    world,
                    bandwidth["algbw_gbps"],
                )
        progress = _progress(config.steps, start) if rank == 0 else None
        job = _Job(
            config, plan, optimizer, scheduler, batches, checkpoints, metrics, rank, world, device
        )
        result = _train(job, start, progress, should_suspend, acknowledge_suspend)
        metrics.write("end", time=time.time(), step=result.step, reason=result.reason)
        return result
    except BaseException:
        if checkpoints is not None:  # the error in flight says more than a failed write
            checkpoints.close(quiet=True)
            checkpoints = None
        raise
    finally:
        if checkpoints is not None:
            checkpoints.close()
        if progress is not None:
            progress[0].stop()
        metrics.close()


def _train(
    job: _Job,
    start: int,
    progress: Any,
    should_suspend: Callable[[], bool] | None,
    acknowledge_suspend: Callable[[], None] | None,
) -> RunResult:
    """The step loop of `run`, from step `start`."""
    config, plan, rank, world, device = job.config, job.plan, job.rank, job.world, job.device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    optim, end = config.optim, config.steps
    losses: list[float] = []
    tokens_per_step = config.data.batch_size * config.data.seq_len * world
    clock = time.perf_counter()
    done = start
    for step in range(start, end):
        began = time.perf_counter()
        inputs, labels = (t.to(device) for t in job.batches.batch(step, rank, world))
        with autocast:
            loss, ce_loss = plan.module(inputs, labels)
        loss.backward()
        plan.finish_gradients()
        if optim.grad_clip > 0:
            plan.clip_grad_norm_(optim.grad_clip)
        lr = job.scheduler.get_last_lr()[0]
        plan.decay_fsdp_shards(lr, optim.weight_decay)
        job.optimizer.step()
        job.scheduler.step()
        job.optimizer.zero_grad(set_to_none=True)
        loads = plan.update_expert_bias()
        asked = should_suspend is not None and bool(should_suspend())
        (loss_value, ce_value), suspend = agree([loss, ce_loss], asked, world)
        requested_at = time.time()
        losses.append(loss_value)
        done = step + 1
        imbalance = (
            (loads.amax(1) / loads.mean(1).clamp(min=1)).mean().item()
            if loads is not None
            else None
        )
        job.metrics.write(
            "step",
            time=time.time(),
            step=done,
            loss=loss_value,
            ce_loss=ce_value,
            lr=lr,
            expert_imbalance=imbalance,
            tokens_per_s=tokens_per_step / (time.perf_counter() - began),
        )
        if rank == 0 and (done % config.log_every == 0 or done == end):
            elapsed, clock = time.perf_counter() - clock, time.perf_counter()
            steps_logged = done % config.log_every or config.log_every
            log.info(
                "step %d loss %.4f ce %.4f lr %.2e tok/s %.0f expert max/mean load %.2f",
                done,
                loss_value,
                ce_value,
                lr,
                tokens_per_step * steps_logged / elapsed,
                1.0 if imbalance is None else imbalance,
            )
        if progress is not None:
            progress[0].update(progress[1], completed=done)
        if job.checkpoints and (done % config.checkpoint_every == 0 or done == end or suspend):
            job.checkpoints.save(done, plan, job.optimizer, job.scheduler, config.model_dump())
        if suspend and done < end:
            _suspend(job, done, requested_at, acknowledge_suspend)
            return RunResult(losses, done, "suspended")
    if job.checkpoints is not None:
        job.checkpoints.wait()
    return RunResult(losses, done, "finished")


def _suspend(
    job: _Job, step: int, requested_at: float, acknowledge_suspend: Callable[[], None] | None
) -> None:
    """After the ranks agreed (at `requested_at`) to stop at `step` and its checkpoint was
    saved: wait until it is published, acknowledge, report."""
    if job.rank == 0:
        log.info("suspend requested: stopping after step %d", step)
    if job.checkpoints is not None:
        job.checkpoints.wait()
    elif job.rank == 0:
        log.warning(
            "suspending without a checkpoint (no checkpoint_dir): the next run "
            "starts again from step 0"
        )
    if acknowledge_suspend is not None:
        acknowledge_suspend()  # on every rank: the platform's acknowledgement is idempotent
    acknowledged_at = time.time()
    job.metrics.write(
        "suspend", step=step, requested_at=requested_at, acknowledged_at=acknowledged_at
    )
    if job.rank == 0:
        where = job.checkpoints.url_of(step) if job.checkpoints else "no checkpoint"
        log.info(
            "suspended after step %d (%s); acknowledged after %.2fs",
            step,
            where,
            acknowledged_at - requested_at,
        )


def main(argv: list[str] | None = None) -> int:
    """Parses `CONFIG.yaml [section.field=value ...]`, trains, and always closes.

    Returns 0 when training finished or suspended, 1 when a training checkpoint could not be
    written or read, 2 on a usage or configuration error, bad data or an init checkpoint
    that cannot be loaded (each reported as one line).
    """
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(
            "usage: python -m deepseek.train CONFIG.yaml [section.field=value ...]", file=sys.stderr
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    hooks = None
    try:
        config = load_train_config(args[0], args[1:])
        if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not dist.is_initialized():
            init_process_group(config.backend)
        hooks = JobHooks.install()
        run(
            config,
            should_suspend=hooks.should_suspend,
            acknowledge_suspend=hooks.acknowledge_suspend,
        )
    except DeepseekError as err:
        print(f"deepseek.train: {err}", file=sys.stderr)
        return 2
    except CheckpointError as err:
        print(f"deepseek.train: {err}", file=sys.stderr)
        return 1
    finally:
        if hooks is not None:
            hooks.uninstall()
        if dist.is_initialized():
            destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
