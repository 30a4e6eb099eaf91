"""What the demo does on its stack: data in, a long job, an urgent job that preempts it.

1. The corpus goes to ``fs3://datasets/pydoc/`` as parquet, the jobs' configs to
   ``fs3://jobs/demo/``: every rank reads both from the shared file system.
2. A low-priority job trains a tiny DeepSeek-V3 (``python -m deepseek.train``) on every
   node: haiscale DDP over hfreduce, asynchronous checkpoints to ``fs3://checkpoints/demo``.
3. Once it has trained ``preempt_at`` of its steps, a short high-priority job that needs the
   same nodes arrives. The scheduler asks the first job to suspend; it checkpoints,
   acknowledges and is requeued; the urgent job runs; the first job resumes from its
   checkpoint on the same chain and trains to the end.

The platform knows the jobs only by their command lines and environment, as it would any
user's job.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import yaml

from hai.demo.corpus import write_corpus
from hai.demo.metrics import MetricsTail
from hai.demo.stack import DemoError, DemoStack
from hai.rpc import ApiClient
from hai.spec import PRIORITY_NAMES

DATA_URL = "fs3://datasets/pydoc"
CHECKPOINT_URL = "fs3://checkpoints/demo"
CONFIG_URL = "fs3://jobs/demo"
LOW_PRIORITY, HIGH_PRIORITY = 10, 50
FINISHED = ("succeeded", "failed", "stopped")


@dataclass
class DemoOptions:
    steps: int = 120
    """Optimiser steps of the long job."""
    preempt_at: float = 0.4
    """Share of the long job's steps after which the urgent job is submitted."""
    urgent_steps: int = 5
    checkpoint_every: int = 10
    seq_len: int = 128
    batch_size: int = 8
    """Sequences per rank and step."""
    timeout_s: float = 900.0
    """The whole scenario's deadline; a job that hangs fails the demo with its logs."""

    def __post_init__(self) -> None:
        if self.steps < 4:
            raise DemoError(f"--steps {self.steps}: need at least 4 to suspend midway and resume")
        if not 0 < self.preempt_at < 1:
            raise DemoError(f"preempt_at={self.preempt_at}: must be between 0 and 1")


@dataclass
class JobRecord:
    """One demo job as the platform saw it (``Describe``), with what its ranks reported."""

    name: str
    id: int
    detail: dict[str, Any]
    metrics: MetricsTail

    @property
    def state(self) -> str:
        return self.detail["job"]["state"]


@dataclass
class DemoOutcome:
    train: JobRecord
    urgent: JobRecord
    checkpoints: dict[int, int] = field(default_factory=dict)
    """Published checkpoint step -> its bytes on fs3."""
    submitted_urgent_at: float = 0.0


def train_config(options: DemoOptions, *, steps: int, metrics: Path, checkpoints: bool) -> dict:
    """The ``deepseek.train`` config of a demo job: tiny V3 on the pydoc corpus."""
    config: dict[str, Any] = {
        "model": {"preset": "v3-tiny"},
        "data": {
            "files": [f"{DATA_URL}/*.parquet"],
            "seq_len": options.seq_len,
            "batch_size": options.batch_size,
        },
        # A high rate suits a 0.2M-parameter model: the loss falls within tens of steps.
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": min(10, steps // 4)},
        "steps": steps,
        "log_every": 5,
        "parallel": "ddp",
        "backend": "hfreduce",
        "metrics_file": str(metrics),
    }
    if checkpoints:
        config["checkpoint_dir"] = CHECKPOINT_URL
        config["checkpoint_every"] = options.checkpoint_every
        config["checkpoint_keep"] = 3
    return config


def job_spec(name: str, priority: int, config_url: str, stack: DemoStack, fs3: str) -> dict:
    return {
        "name": name,
        "entrypoint": sys.executable,
        "arguments": ["-m", "deepseek.train", config_url],
        "environment": {
            "FS3_CLUSTER": fs3,
            # Every rank of every virtual node shares this machine's cores.
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        },
        "nodes": stack.nodes,
        "gpus_per_node": stack.gpus_per_node,
        "priority": priority,
        "suspend_grace_period": 120,
        "restart_policy": "never",
    }


class Scenario:
    """Drives the demo's jobs through the platform's API, as a user's script would."""

    def __init__(
        self,
        stack: DemoStack,
        options: DemoOptions,
        on_change: Callable[[Scenario], None] = lambda s: None,
        disturb: Callable[[int, int], None] | None = None,
        interrupted: Callable[[], bool] = lambda: False,
    ) -> None:
        """``disturb(step, steps)``: called with the training job's progress on every poll
        (``hai demo --hosts`` cuts a storage host off with it). ``interrupted()``: whether
        Ctrl-C came, asked on every poll in case its KeyboardInterrupt was lost."""
        assert stack.fs3 is not None and stack.platform is not None, "stack not started"
        self.stack, self.options, self.on_change = stack, options, on_change
        self.disturb, self.interrupted = disturb, interrupted
        self.fs3_address = stack.fs3.address
        token = (stack.hai_dir / "token").read_text().strip()
        self.client = ApiClient(stack.platform.address, token)
        self.fs = fsspec.filesystem("fs3", address=self.fs3_address)
        self.jobs: list[JobRecord] = []
        self.started = time.monotonic()

    def close(self) -> None:
        self.client.close()

    # -- set-up -----------------------------------------------------------------------

    def _put_config(self, name: str, config: dict) -> str:
        url = f"{CONFIG_URL}/{name}.yaml"
        self.fs.pipe_file(url, yaml.safe_dump(config).encode())
        return url

    def _submit(self, name: str, priority: int, config: dict) -> JobRecord:
        spec = job_spec(
            name, priority, self._put_config(name, config), self.stack, self.fs3_address
        )
        job = self.client.call("Submit", spec=spec)
        record = JobRecord(
            name,
            job["id"],
            {"job": job, "runs": [], "events": []},
            MetricsTail(Path(config["metrics_file"])),
        )
        self.jobs.append(record)
        return record

    # -- the run ----------------------------------------------------------------------

    def run(self) -> DemoOutcome:
        """Plays the scenario to its end; raises DemoError when a job fails or hangs."""
        options, work = self.options, self.stack.work_dir
        write_corpus(DATA_URL, address=self.fs3_address)
        me = self.client.call("WhoAmI")["name"]
        self.client.call("SetQuota", user=me, priority=HIGH_PRIORITY, nodes=self.stack.nodes)
        train = self._submit(
            "train-v3-tiny",
            LOW_PRIORITY,
            train_config(
                options, steps=options.steps, metrics=work / "train-metrics.jsonl", checkpoints=True
            ),
        )
        preempt_step = max(1, int(options.steps * options.preempt_at))
        self._wait(
            f"the training job to reach step {preempt_step}",
            lambda: train.metrics.last_step >= preempt_step,
        )
        urgent = self._submit(
            "urgent-v3-tiny",
            HIGH_PRIORITY,
            train_config(
                options,
                steps=options.urgent_steps,
                metrics=work / "urgent-metrics.jsonl",
                checkpoints=False,
            ),
        )
        submitted_urgent_at = time.time()
        self._wait("both jobs to finish", lambda: all(j.state in FINISHED for j in self.jobs))
        for job in self.jobs:
            if job.state != "succeeded":
                raise DemoError(self._failure(job))
        if not train.metrics.of("suspend"):
            raise DemoError(
                f"the training job finished its {options.steps} steps before the preemption "
                "reached it; give it more --steps"
            )
        return DemoOutcome(train, urgent, self._checkpoint_sizes(), submitted_urgent_at)

    def _refresh(self) -> None:
        for job in self.jobs:
            job.detail = self.client.call("Describe", job_id=job.id)
            job.metrics.poll()
        if self.disturb and self.jobs:
            self.disturb(self.jobs[0].metrics.last_step, self.options.steps)
        self.on_change(self)

    def _wait(self, what: str, done: Callable[[], bool]) -> None:
        deadline = self.started + self.options.timeout_s
        while True:
            self._refresh()
            if self.interrupted():
                raise KeyboardInterrupt("interrupted while waiting for " + what)
            failed = [j for j in self.jobs if j.state in ("failed", "stopped")]
            if failed:
                raise DemoError(self._failure(failed[0]))
            if done():
                return
            if time.monotonic() > deadline:
                raise DemoError(
                    f"timed out after {self.options.timeout_s:g}s waiting for {what}; "
                    f"see `hai logs` with HAI_STATE_DIR={self.stack.hai_dir}"
                )
            time.sleep(0.5)

    def _failure(self, job: JobRecord) -> str:
        runs = job.detail["runs"]
        attempt = runs[-1]["attempt"] if runs else 0
        log = self.stack.hai_dir / "logs" / f"job-{job.id}" / f"run-{attempt}" / "rank-0.log"
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
        message = job.detail["job"].get("message") or ""
        lines = "\n  ".join(tail) or "(no output)"
        return f"job {job.id} ({job.name}) {job.state}: {message}\n  rank 0, {log}:\n  {lines}"

    def _checkpoint_sizes(self) -> dict[int, int]:
        sizes: dict[int, int] = {}
        if not self.fs.exists(CHECKPOINT_URL):
            return sizes
        for entry in self.fs.ls(CHECKPOINT_URL, detail=True):
            name = entry["name"].rsplit("/", 1)[-1]
            if entry["type"] == "directory" and name.startswith("step-") and "." not in name:
                sizes[int(name[5:])] = sum(self.fs.du(entry["name"], total=False).values())
        return sizes


def priority_name(level: int) -> str:
    return next((name for name, value in PRIORITY_NAMES.items() if value == level), str(level))
