"""Training checkpoints of `deepseek.train`: what one holds, saving, resuming, reporting.

A checkpoint holds the model (FSDP: this rank's shards), optimiser, scheduler, the step
(which fixes the data position), the RNG states and the config. It is written by
`haiscale.checkpoint.AsyncCheckpointer`: training stalls only while the state is copied to
host memory, a background thread writes and publishes it, and a half-written checkpoint is
never loaded. With FSDP or expert parallelism every rank writes its own state; otherwise
the ranks' states are equal and rank 0 writes alone.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from typing import Any

import torch
import torch.distributed as dist

from deepseek.parallel import Parallelized
from deepseek.train_hooks import MetricsLog
from haiscale.checkpoint import AsyncCheckpointer, CheckpointError

log = logging.getLogger("deepseek.train")


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


class TrainCheckpoints:
    """The checkpoints of one run under `url`, and the report of each save once published.

    Collective like `AsyncCheckpointer`: every rank creates it, saves the same steps and
    waits. Rank 0 writes a "checkpoint" metrics event and a log line per publish.
    """

    def __init__(
        self,
        url: str,
        *,
        keep: int,
        sharded: bool,
        metrics: MetricsLog,
        device: torch.device,
    ) -> None:
        self.url = url
        self.ckpt = AsyncCheckpointer(url, keep=keep, sharded=sharded)
        self.metrics, self.device = metrics, device
        self.rank, self.world = self.ckpt.rank, self.ckpt.world
        self._reported = threading.Event()
        """Clear while a publish of rank 0's is still to be reported."""
        self._reported.set()

    def url_of(self, step: int) -> str:
        """The URL of the checkpoint of `step` (under the URL this was given)."""
        return f"{self.url.rstrip('/')}/{self.ckpt.store.path(step).rsplit('/', 1)[-1]}"

    def resume(
        self,
        plan: Parallelized,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> int | None:
        """Loads the newest complete checkpoint into the run; returns its step, or None."""
        found = self.ckpt.load_latest()
        if found is None:
            return None
        step, state = found
        plan.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        return step

    def save(
        self,
        step: int,
        plan: Parallelized,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        config: dict[str, Any],
    ) -> None:
        """Returns once the state is on the host; it is written and reported in the background."""
        state = {
            "model": plan.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            # Every rank seeds alike and draws alike, so when rank 0 writes alone its
            # states stand for all (each rank restores onto its own device).
            "cuda_rng": (
                torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
            ),
            "step": step,
            "config": config,
        }
        nbytes = _tensor_bytes(state)
        if self.ckpt.sharded and self.world > 1:
            total = torch.tensor([nbytes], dtype=torch.int64, device=self.device)
            dist.all_reduce(total)
            nbytes = int(total.item())
        started = time.perf_counter()
        self._reported.wait()  # the previous publish is reported first
        future = self.ckpt.save(step, state)
        stall = time.perf_counter() - started
        if self.rank == 0:
            self._reported.clear()
            future.add_done_callback(lambda done: self._report(done, step, nbytes, stall, started))

    def _report(
        self, done: Future[None], step: int, nbytes: int, stall: float, started: float
    ) -> None:
        """Runs in the checkpoint thread once rank 0's write (and publish) ended."""
        try:
            if done.exception() is None:
                write_s, url = time.perf_counter() - started, self.url_of(step)
                self.metrics.write(
                    "checkpoint", step=step, bytes=nbytes, stall_s=stall, write_s=write_s, url=url
                )
                log.info(
                    "checkpoint step %d published to %s: %.1f MB, training blocked "
                    "%.3fs, written in %.2fs",
                    step,
                    url,
                    nbytes / 2**20,
                    stall,
                    write_s,
                )
        finally:
            self._reported.set()

    def wait(self) -> None:
        """Blocks until the last checkpoint is written, published and reported. Every rank
        agrees on the outcome first (this is also the barrier that lets ranks other than
        0 know the publish happened): if any rank's write failed, CheckpointError is
        raised on all of them rather than leaving the others waiting."""
        error: CheckpointError | None = None
        try:
            self.ckpt.wait()
        except CheckpointError as exc:
            error = exc
        if self.world > 1:
            failed = torch.tensor([float(error is not None)], device=self.device)
            dist.all_reduce(failed)
            if failed.item() > 0 and error is None:
                raise CheckpointError("another rank's checkpoint write failed; see its log")
        if error is not None:
            raise error
        self._reported.wait()

    def close(self, quiet: bool = False) -> None:
        """Waits for the last write and stops the checkpoint thread; with `quiet` (an error
        is already on its way out) a failed write is only logged."""
        try:
            self.ckpt.close()
        except CheckpointError as exc:
            if not quiet:
                raise
            log.warning("%s", exc)
