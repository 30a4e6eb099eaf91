"""The scheduler/API server process: the gRPC servicer over :mod:`hai.service` and the pass loop.

The servicer is a table of thin handlers: each builds the core's arguments from the JSON
body, calls one :class:`~hai.service.Service` or :class:`~hai.scheduler.Scheduler` method
and returns its dataclass. Which kind of caller may call each method is part of the table
(:data:`CALLERS`), and the token is checked for that kind before the handler runs: users
with their token, nodes with the credential of the node the body names, runs with their
run token.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from fs3.types import host_port
from hai import rpc
from hai.auth import authenticate, authenticate_node, create_user
from hai.config import HaiConfig
from hai.files import STATE_ENTRIES, private_dir, replace_text
from hai.logship import FOLDER_FILE, LogSink, parse_appends
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


USER, NODE, RUN = "user", "node", "run"
CALLERS: dict[str, str] = {
    **dict.fromkeys(
        "Submit List Describe Stop Suspend Resume Logs Nodes AddNode RemoveNode Drain "
        "SetQuota AddUser Users RemoveUser RotateToken WhoAmI".split(),
        USER,
    ),
    "Register": NODE,
    "Heartbeat": NODE,
    "AppendLogs": NODE,
    "GetWholeLifeState": RUN,
    "SetWholeLifeState": RUN,
}
"""Every method and the one kind of caller that may call it (docs/services.md): users with
their token (admin-only methods check the role in :mod:`hai.service`), nodes with the
credential of the node the body names, runs with their own run token."""
NODE_FIELD = {"Register": "name", "Heartbeat": "node", "AppendLogs": "node"}
"""The body field naming the node a node call acts as."""


def handlers(svc: Service, sched: Scheduler, sink: LogSink) -> dict[str, rpc.Handler]:
    """The servicer's methods. Each first checks the token for its kind of caller
    (:data:`CALLERS`), then gets the caller: the :class:`User`, the node's name, or (for
    the service to check against the run it names) the run token."""
    store = svc.store

    def caller(method: str, b: dict[str, Any], t: str | None) -> Any:
        kind = CALLERS[method]
        if kind == USER:
            return authenticate(store, t)
        if kind == NODE:
            node = str(b.get(NODE_FIELD[method], ""))
            authenticate_node(store, t, node)
            return node
        return t

    def register(b: dict[str, Any]) -> str:
        sched.register(NodeInfo(**b))
        return b["name"]  # gRPC needs a non-empty reply

    def heartbeat(b: dict[str, Any]) -> Any:
        runs = [RunReport(**r) for r in b.pop("runs")]
        return sched.heartbeat(Heartbeat(runs=runs, **b))

    calls: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
        "Submit": lambda u, b: svc.submit(u, spec_from_dict(b["spec"])),
        "List": lambda u, b: svc.list_jobs(u, b.get("everyone", True), b.get("all", False)),
        "Describe": lambda u, b: svc.describe(u, int(b["job_id"])),
        "Stop": lambda u, b: svc.stop(u, int(b["job_id"])),
        "Suspend": lambda u, b: svc.suspend(u, int(b["job_id"])),
        "Resume": lambda u, b: svc.resume(u, int(b["job_id"])),
        "Logs": lambda u, b: svc.logs(
            u, int(b["job_id"]), int(b.get("rank", 0)), int(b.get("offset", 0)), b.get("attempt")
        ),
        "Nodes": lambda u, b: svc.nodes(u),
        "AddNode": lambda u, b: svc.add_node(u, b["name"]),
        "RemoveNode": lambda u, b: svc.remove_node(u, b["name"]),
        "Drain": lambda u, b: svc.drain(u, b["node"], bool(b.get("drained", True))),
        "SetQuota": lambda u, b: svc.set_quota(
            u,
            Quota(
                b["user"], b.get("group", "default"), parse_priority(b["priority"]), int(b["nodes"])
            ),
        ),
        "AddUser": lambda u, b: svc.add_user(u, b["name"], b.get("role", "user")),
        "Users": lambda u, b: svc.list_users(u),
        "RemoveUser": lambda u, b: svc.remove_user(u, b["name"]),
        "RotateToken": lambda u, b: svc.rotate_token(u, b.get("name")),
        "WhoAmI": lambda u, b: svc.whoami(u),
        "Register": lambda node, b: register(b),
        "Heartbeat": lambda node, b: heartbeat(b),
        "AppendLogs": lambda node, b: sink.append(
            node, str(b.get("folder", "")), parse_appends(b.get("appends"))
        ),
        "GetWholeLifeState": lambda t, b: svc.get_whole_life_state(t),
        "SetWholeLifeState": lambda t, b: svc.set_whole_life_state(t, b["state"]),
    }
    assert calls.keys() == CALLERS.keys(), "every method names its kind of caller"

    def checked(method: str, call: Callable[[Any, dict[str, Any]], Any]) -> rpc.Handler:
        return lambda b, t: call(caller(method, b, t), b)

    return {method: checked(method, call) for method, call in calls.items()}


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
        self.logs = LogSink(
            self.store, state_dir, secrets.token_hex(16), config.server.rank_log_bytes
        )
        self._stop = threading.Event()
        self._grpc: grpc.Server | None = None
        self._loop: threading.Thread | None = None

    def start(self) -> None:
        cfg = self.config.server
        self._grpc = rpc.serve(
            handlers(self.service, self.scheduler, self.logs), cfg.host, cfg.port
        )
        if cfg.metrics_port:
            self.metrics.serve(cfg.metrics_port, cfg.host)
        where = {"address": host_port(cfg.host, cfg.port), "pid": os.getpid()}
        replace_text(
            self.state_dir / FOLDER_FILE, json.dumps({**where, "folder": self.logs.folder_id})
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
