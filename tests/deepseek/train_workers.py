"""Rank functions of the multi-process `deepseek.train` tests. Ranks are spawned (as in
tests/haiscale), so they import these functions by name."""

from __future__ import annotations

import traceback

import torch.distributed as dist

from deepseek.parallel import destroy_process_group, init_process_group
from deepseek.train import load_train_config, run
from haiscale.checkpoint import CheckpointStore


def _suspend_on_rank1_at(step: int):
    """A should_suspend that turns true on rank 1 alone, from its `step`-th call (after
    step `step` of a run starting at 0): rank 0 must stop with it all the same."""
    calls = [0]

    def should_suspend() -> bool:
        calls[0] += 1
        return dist.get_rank() == 1 and calls[0] >= step

    return should_suspend


def _suspend_and_resume(config_path: str, overrides: list[str], folder: str) -> dict:
    """Trains with a suspend after step 3, then resumes; what each part did and what the
    acknowledgement saw (the published checkpoints' newest step)."""
    config = load_train_config(config_path, [*overrides, f"checkpoint_dir={folder}"])
    acks: list = []

    def acknowledge() -> None:
        acks.append(CheckpointStore(folder).latest())

    first = run(config, should_suspend=_suspend_on_rank1_at(3), acknowledge_suspend=acknowledge)
    second = run(config)
    return {
        "first": first.losses,
        "reason": first.reason,
        "step": first.step,
        "second": second.losses,
        "second_reason": second.reason,
        "acks": acks,
    }


def two_ranks(config_path: str, folder: str, backend: str) -> dict:
    """DDP straight (with a metrics file), DDP suspended and resumed, expert parallel
    (ep=2), and FSDP suspended and resumed (or the error that stopped it)."""
    out: dict = {"backend": init_process_group(backend)}
    try:
        straight = [f"checkpoint_dir={folder}/straight", f"metrics_file={folder}/metrics.jsonl"]
        out["straight"] = run(load_train_config(config_path, straight)).losses
        out["suspended"] = _suspend_and_resume(config_path, [], f"{folder}/suspended")
        ep = [f"checkpoint_dir={folder}/ep", "ep=2"]
        out["ep"] = run(load_train_config(config_path, ep)).losses
        try:
            out["fsdp"] = _suspend_and_resume(config_path, ["parallel=fsdp"], f"{folder}/fsdp")
        except Exception:  # FSDP construction fails alike on every rank
            out["fsdp_error"] = traceback.format_exc()
    finally:
        destroy_process_group()
    return out


def two_nodes(config_path: str, folder: str) -> dict:
    """The demo's layout (2 virtual nodes x 2 ranks over hfreduce): DDP, then ep=2 on
    groups of 2 ranks with each share replicated on the other node."""
    init_process_group("hfreduce")
    try:
        ddp = run(load_train_config(config_path, ["data.batch_size=1"])).losses
        overrides = ["data.batch_size=1", "ep=2", f"checkpoint_dir={folder}/ep4"]
        ep = run(load_train_config(config_path, overrides)).losses
    finally:
        destroy_process_group()
    return {"ddp": ddp, "ep": ep}
