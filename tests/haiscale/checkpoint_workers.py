"""Rank functions, a small training loop and a stallable filesystem for the checkpoint tests.

Run as a script (``python checkpoint_workers.py DIR``) it is the job that gets killed: it
trains 4 steps with checkpoints at 2 and 4, then starts the checkpoint of step 6 on a
filesystem that never lets the write finish, prints ``cut`` and waits for its SIGKILL.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import fsspec
import torch
import torch.distributed as dist
from fsspec.implementations.local import LocalFileOpener, LocalFileSystem
from torch import nn

from haiscale.checkpoint import AsyncCheckpointer


# -- a filesystem whose checkpoint writes wait for a gate ----------------------------------------
class _GatedFile(LocalFileOpener):
    def write(self, data: Any) -> int:
        if self.fs.writing.is_set():
            self.fs.gate.wait()
        n = self.f.write(data)
        self.f.flush()  # the first piece is on disk, as a crash would leave it
        self.fs.writing.set()
        return n


class GatedFileSystem(LocalFileSystem):
    """Local files; a ``.safetensors`` file gets its first write, the rest wait for ``gate``."""

    protocol = "gated"

    def __init__(self, gate: threading.Event | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = gate or threading.Event()
        self.writing = threading.Event()

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        if "w" in mode and path.endswith(".safetensors"):
            return _GatedFile(path, mode, fs=self, **kwargs)
        return super()._open(path, mode, **kwargs)


fsspec.register_implementation("gated", GatedFileSystem, clobber=True)


# -- a small deterministic training run ---------------------------------------------------------
def make_model() -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 1))
    return model, torch.optim.Adam(model.parameters(), lr=0.01)


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: range, ckpt=None) -> None:
    """Trains on batches drawn from each step's seed; saves even steps when ``ckpt`` is given.

    Dropout draws from the global RNG, so a resume that lost the RNG state would differ.
    """
    for step in steps:
        g = torch.Generator().manual_seed(step)
        x = torch.randn(16, 8, generator=g)
        loss = nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if ckpt is not None and step % 2 == 0:
            ckpt.save(step, state_of(model, opt, step))


def state_of(model: nn.Module, opt: torch.optim.Optimizer, step: int) -> dict:
    return {
        "model": model.state_dict(),
        "optim": opt.state_dict(),
        "rng": torch.get_rng_state(),
        "step": step,
    }


def restore(model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> int:
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optim"])
    torch.set_rng_state(state["rng"])
    return state["step"]


def killed_job(root: str) -> None:
    model, opt = make_model()
    with AsyncCheckpointer(root, keep=2) as ckpt:
        train(model, opt, range(1, 5), ckpt)
    train(model, opt, range(5, 7))
    stalled = AsyncCheckpointer(f"gated://{root}", keep=2, skip_instance_cache=True)
    stalled.save(6, state_of(model, opt, 6))
    stalled.store.fs.writing.wait()
    print("cut", flush=True)
    time.sleep(600)


# -- ranks ---------------------------------------------------------------------------------------
def sharded_and_replicated(root: str) -> dict:
    """Three sharded saves (keep 2) and one replicated save; what each rank loads back."""
    dist.init_process_group("gloo")
    r = dist.get_rank()
    out = {}
    with AsyncCheckpointer(f"{root}/sharded", keep=2, sharded=True) as ckpt:
        for step in (1, 2, 3):
            ckpt.save(step, {"shard": torch.full((4,), 10.0 * step + r), "rank": r, "step": step})
        out["sharded"] = ckpt.load_latest()
    with AsyncCheckpointer(f"{root}/replicated") as ckpt:
        # Rank 1's copy differs on purpose: only rank 0's must be written and loaded.
        ckpt.save(7, {"w": torch.arange(3.0) + r})
        out["replicated"] = ckpt.load_latest()
    dist.destroy_process_group()
    return out


if __name__ == "__main__":
    killed_job(sys.argv[1])
