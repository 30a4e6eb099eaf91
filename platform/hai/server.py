"""The scheduler/API server process: the gRPC servicer over :mod:`hai.service` and the pass loop.

The servicer is a table of thin handlers: each authenticates, builds the core's arguments
from the JSON body, calls one :class:`~hai.service.Service` or
:class:`~hai.scheduler.Scheduler` method and returns its dataclass.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import grpc

from hai import rpc
from hai.auth import authenticate, create_user
from hai.config import HaiConfig
from hai.files import STATE_ENTRIES, private_dir, replace_text
from hai.metrics import SchedulerMetrics
from hai.protocol import Heartbeat, NodeInfo, RunReport
from hai.records import ROLE_ADMIN, Quota
from hai.scheduler import Scheduler
from hai.service import Service
from hai.spec import parse_priority, spec_from_dict
from hai.store import SqlStore, sqlite_url

log = logging.getLogger("hai.server")
TOKEN_FILE = "token"
"""The first admin's token, written once into the state folder (mode 0600)."""


def handlers(svc: Service, sched: Scheduler) -> dict[str, rpc.Handler]:
    store = svc.store

    def user(token: str | None):  # type: ignore[no-untyped-def]
        return authenticate(store, token)

    def heartbeat(b: dict[str, Any], t: str | None) -> Any:
        user(t)
        runs = [RunReport(**r) for r in b.pop("runs")]
        return sched.heartbeat(Heartbeat(runs=runs, **b))

    def register(b: dict[str, Any], t: str | None) -> str:
        user(t)
        sched.register(NodeInfo(**b))
        return b["name"]  # gRPC needs a non-empty reply

    return {
        "Submit": lambda b, t: svc.submit(user(t), spec_from_dict(b["spec"])),
        "List": lambda b, t: svc.list_jobs(user(t), b.get("everyone", True), b.get("all", False)),
        "Describe": lambda b, t: svc.describe(user(t), int(b["job_id"])),
        "Stop": lambda b, t: svc.stop(user(t), int(b["job_id"])),
        "Suspend": lambda b, t: svc.suspend(user(t), int(b["job_id"])),
        "Resume": lambda b, t: svc.resume(user(t), int(b["job_id"])),
        "Logs": lambda b, t: svc.logs(
            user(t),
            int(b["job_id"]),
            int(b.get("rank", 0)),
            int(b.get("offset", 0)),
            b.get("attempt"),
        ),
        "Nodes": lambda b, t: svc.nodes(user(t)),
        "Drain": lambda b, t: svc.drain(user(t), b["node"], bool(b.get("drained", True))),
        "SetQuota": lambda b, t: svc.set_quota(
            user(t),
            Quota(
                b["user"], b.get("group", "default"), parse_priority(b["priority"]), int(b["nodes"])
            ),
        ),
        "AddUser": lambda b, t: svc.add_user(user(t), b["name"], b.get("role", "user")),
        "WhoAmI": lambda b, t: svc.whoami(user(t)),
        "Register": register,
        "Heartbeat": heartbeat,
        # A run's ranks authenticate with their run token, not a user's.
        "GetWholeLifeState": lambda b, t: svc.get_whole_life_state(t),
        "SetWholeLifeState": lambda b, t: svc.set_whole_life_state(t, b["state"]),
    }


def ensure_admin(store: SqlStore, state_dir: Path) -> None:
    """On a fresh store, creates the first admin and leaves its token in the state folder."""
    if store.list_users():
        return
    name = os.environ.get("USER") or "admin"
    token = create_user(store, name, ROLE_ADMIN)
    replace_text(state_dir / TOKEN_FILE, token + "\n")  # 0600: it makes its reader an admin


class Server:
    """A running scheduler: store, pass loop, gRPC endpoint and metrics."""

    def __init__(self, config: HaiConfig, state_dir: Path) -> None:
        private_dir(state_dir, STATE_ENTRIES)
        self.config = config
        self.state_dir = state_dir
        self.store = SqlStore(config.server.database_url or sqlite_url(state_dir))
        ensure_admin(self.store, state_dir)
        self.metrics = SchedulerMetrics()
        self.scheduler = Scheduler(
            self.store, config, on_suspended=self.metrics.suspend_latency.observe
        )
        self.service = Service(self.scheduler, state_dir)
        self._stop = threading.Event()
        self._grpc: grpc.Server | None = None
        self._loop: threading.Thread | None = None

    def start(self) -> None:
        cfg = self.config.server
        self._grpc = rpc.serve(handlers(self.service, self.scheduler), cfg.host, cfg.port)
        if cfg.metrics_port:
            self.metrics.serve(cfg.metrics_port, cfg.host)
        replace_text(
            self.state_dir / "server.json",
            json.dumps({"address": f"{cfg.host}:{cfg.port}", "pid": os.getpid()}),
        )
        self._loop = threading.Thread(target=self._run_passes, name="hai-passes", daemon=True)
        self._loop.start()
        log.info("hai server on %s:%d, state in %s", cfg.host, cfg.port, self.state_dir)

    def _run_passes(self) -> None:
        while not self._stop.wait(self.config.scheduler.pass_interval_s):
            try:
                stats = self.scheduler.tick()
                self.metrics.pass_latency.observe(stats.seconds)
                self.metrics.preemptions.inc(stats.preempted)
                busy = {n for r in self.store.live_runs() for n in r.nodes}
                self.metrics.observe(self.store.list_jobs(), self.store.list_nodes(), busy)
            except Exception:
                # A failed pass (e.g. the database briefly away) is retried on the next tick.
                log.exception("scheduling pass failed")

    def stop(self) -> None:
        self._stop.set()
        if self._grpc is not None:
            self._grpc.stop(grace=1).wait(5)
        if self._loop is not None:
            self._loop.join(timeout=10)
        self.store.close()

    def wait(self) -> None:
        self._stop.wait()
