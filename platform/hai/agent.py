"""The node agent (``hai agent``): registers its node, heartbeats, runs what it is told.

Each heartbeat reports every run this node has (exit code once all its ranks are gone,
whether the job acknowledged a suspend) and gets back every run the node should have.
:meth:`Agent.reconcile` closes the gap: start new runs, pass on suspend requests, stop
runs marked stop or no longer assigned (one marked stop before it started is reported as
ended, never started), forget runs the scheduler no longer lists. If the server is
unreachable the agent keeps its ranks running and retries (every call has a deadline, so
a host cut off from the network does not hang it), so a scheduler restart loses nothing;
a node the scheduler found dead meanwhile gets no assignments for its old runs when it is
heard again, and reconcile stops their ranks.

Ranks write their logs into the agent's state folder; :mod:`hai.logship` sends them to
the server, and a run's exit is reported once they are there.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path

import psutil

from hai.accounts import Account, RankAccounts
from hai.config import AgentConfig
from hai.errors import (
    AuthError,
    ConfigError,
    ForbiddenError,
    HaiTimeoutError,
    NotFoundError,
    Unavailable,
)
from hai.executor import Executor, Launch, RankLaunch
from hai.files import open_private, private_dir, traversable_dir
from hai.health import run_checks
from hai.logship import LogShipper
from hai.metrics import AgentMetrics
from hai.protocol import (
    DESIRED_STOP,
    DESIRED_SUSPEND,
    Assignment,
    NodeInfo,
    RunReport,
    rank_log,
)
from hai.rpc import ApiClient

NEVER_STARTED = -signal.SIGTERM
"""The exit reported for a run stopped before it started: what stopping it would give."""
CANNOT_START = 127
"""The exit reported for a run whose ranks could not be started here: the shell's code for a
command it could not run, as the local executor's ranks give for a missing command."""

FLUSH_WAIT_S = 30.0
"""How long an exited run's report waits for its logs to reach the server: past it (the
server keeps refusing or timing out on them), the exit is reported without them."""

RUN_TOKEN = "HAI_RUN_TOKEN"
"""The variable that gives a rank its run token (:mod:`hai.client` reads it); a secret."""

log = logging.getLogger("hai.agent")


def rank_environment(
    a: Assignment,
    local_rank: int,
    node: str,
    control: Path,
    server: str,
    inherit: bool = True,
    account: Account | None = None,
) -> dict[str, str]:
    """The variables a rank starts with: torch.distributed's, the node's, and hai.client's,
    over the agent's own environment when ``inherit`` (a container brings its own).
    ``control``: the run's control folder on this node; ``account``: the one the rank runs
    as (None: the agent's), whose HOME, USER and LOGNAME it gets."""
    world = a.nodes * a.ranks_per_node
    # The agent's own token stays with the agent: a job acts through its run token only.
    inherited = {k: v for k, v in os.environ.items() if k != "HAI_TOKEN"} if inherit else {}
    if account is not None:
        # An account without a home of its own (nobody's is /nonexistent) gets the control
        # folder, the one folder of the node it may write, so tools that keep caches work.
        home = account.home if account.home and os.path.isdir(account.home) else str(control)
        inherited |= {"HOME": home, "USER": account.name, "LOGNAME": account.name}
    return {
        **inherited,
        **a.environment,
        **a.secret_environment,
        "RANK": str(a.node_rank * a.ranks_per_node + local_rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(local_rank),
        "LOCAL_WORLD_SIZE": str(a.ranks_per_node),
        "NODE_RANK": str(a.node_rank),
        "MASTER_ADDR": a.master_addr,
        "MASTER_PORT": str(a.master_port),
        "HFREDUCE_NODE_ID": node,
        "HAI_JOB_ID": str(a.job_id),
        "HAI_RUN_ID": str(a.run_id),
        "HAI_RESTART_COUNT": str(a.attempt),
        "HAI_CONTROL_DIR": str(control),
        "HAI_SERVER": server,
        RUN_TOKEN: a.run_token,
    }


def route_address(server: str) -> str:
    """This machine's address on its route to ``server`` (``host:port``, ``[v6]:port``):
    the one the ranks of other nodes reach it at when they reach the server alike. A
    server on loopback gives 127.0.0.1, right for agents on the server's own host.

    Raises:
        ConfigError: ``server`` does not resolve, or no route leads to it.
    """
    host, _, port = server.rpartition(":")
    host = host.strip("[]")
    try:
        found = socket.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)
        family, kind, proto, _, where = found[0]
        with socket.socket(family, kind, proto) as probe:
            probe.connect(where)  # UDP: picks the route and source address, sends nothing
            return str(probe.getsockname()[0])
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"cannot find this node's address toward the server {server}: {err}; "
            "give it with --address"
        ) from None


class Agent:
    def __init__(
        self,
        name: str,
        client: ApiClient,
        executor: Executor,
        state_dir: Path,
        config: AgentConfig,
        group: str = "default",
        gpus: int = 0,
        virtual_gpus: bool = True,
    ) -> None:
        self.name = name
        self.client = client
        self.executor = executor
        self.state_dir = state_dir
        self.config = config
        self.virtual_gpus = virtual_gpus
        """Local clusters pretend to have GPUs; the GPU health check then probes none."""
        self.info = NodeInfo(
            name, uuid.uuid4().hex, group, gpus, os.cpu_count() or 0, psutil.virtual_memory().total
        )
        self.metrics = AgentMetrics()
        self._failures: list[str] = []
        self._next_health = 0.0
        self._registered = False
        self._never_started: set[int] = set()
        """Runs told to stop before this agent started them: reported as exited, or the
        scheduler would wait for their exit (and hold their nodes) forever."""
        self._cannot_start: dict[int, str] = {}
        """Runs whose launch failed on this node, with why: reported as exited with
        :data:`CANNOT_START`, so the run fails with the reason and the node stays alive."""
        self.accounts = (
            RankAccounts(config.run_as, config.run_as_fallback, min_uid=config.run_as_min_uid)
            if executor.switches_accounts
            else None
        )
        """Who each run's ranks run as; None: the executor's own way (a pod's user)."""
        self.control_root = self._control_root()
        """Where each run's control folder is made (``RUN/NODE`` below it)."""
        self.shipper = LogShipper(
            ApiClient(client.address, client.token, client.timeout_s),
            name,
            state_dir,
            config.log_ship_interval_s,
        )
        """Sends the ranks' logs to the server (started with the first step)."""
        self._unshipped: dict[int, float] = {}
        """Runs whose ranks have all exited but whose logs the server lacks: since when."""

    def _control_root(self) -> Path:
        if self.accounts is None or not self.accounts.switches:
            return self.state_dir / "runs"
        # Ranks of other accounts cannot enter the 0700 state folder, nor (on real nodes)
        # root's home around it: their control folders live in a folder they may pass
        # through but not list (0711), one per state folder (a machine may run several
        # clusters), in which each run's folder is 0711 too and each control folder the
        # rank's own (0700). So a rank reaches its own folder by name and nothing else.
        # It stays when the agent stops: the cluster's other agents here may still use it.
        key = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:16]
        return traversable_dir(traversable_dir(Path(self.config.run_dir)) / key)

    def step(self) -> None:
        """One heartbeat and reconcile. Raises Unavailable/HaiTimeoutError if the server
        is unreachable (the caller retries; ranks keep running)."""
        now = time.monotonic()
        if now >= self._next_health:
            self._next_health = now + self.config.health_interval_s
            self._failures = run_checks(
                self.state_dir,
                self.config.min_free_disk_bytes,
                0 if self.virtual_gpus else self.info.gpus,
            )
            for line in self._failures:
                log.warning("health check failed on %s: %s", self.name, line)
        if not self.shipper.started:
            self.shipper.start()
        if not self._registered:
            self.client.call("Register", **asdict(self.info))
            self._registered = True
        reports = [self._report(run_id) for run_id in self.executor.run_ids()]
        reports += [RunReport(run_id, NEVER_STARTED) for run_id in self._never_started]
        reports += [
            RunReport(run_id, CANNOT_START, reason=why)
            for run_id, why in self._cannot_start.items()
        ]
        try:
            reply = self.client.call(
                "Heartbeat",
                node=self.name,
                agent_id=self.info.agent_id,
                runs=[asdict(r) for r in reports],
                health_failures=self._failures,
            )
        except NotFoundError:
            self._registered = False  # the server lost us (a new store): register again
            return
        self.reconcile([Assignment(**a) for a in reply["assignments"]], reports)
        self.metrics.observe(len(self.executor.run_ids()))

    def _report(self, run_id: int) -> RunReport:
        """The run's state; an exit only once the server has the run's logs (or after
        :data:`FLUSH_WAIT_S`), so that ``hai logs`` after ``hai wait`` shows all of them."""
        code = self.executor.exit_code(run_id)
        if code is not None and not self.shipper.flushed(run_id):
            since = self._unshipped.setdefault(run_id, time.monotonic())
            if time.monotonic() - since < FLUSH_WAIT_S:
                code = None
            else:
                log.warning(
                    "%s: run %d ended; reported before its logs reached the server",
                    self.name,
                    run_id,
                )
        if code is not None:
            self._unshipped.pop(run_id, None)
        return RunReport(run_id, code, self.executor.acked(run_id))

    def reconcile(self, assignments: list[Assignment], reports: list[RunReport]) -> None:
        wanted = {a.run_id: a for a in assignments}
        exited = {r.run_id for r in reports if r.exit_code is not None}
        for run_id in self.executor.run_ids():
            if run_id not in wanted:
                if run_id in exited:
                    self._forget(run_id)
                else:
                    self.executor.stop(run_id, self.config.kill_grace_s)
        self._never_started &= set(wanted)  # the scheduler took the report: done with it
        self._cannot_start = {r: why for r, why in self._cannot_start.items() if r in wanted}
        for a in assignments:
            known = a.run_id in self.executor.run_ids()
            if a.run_id in self._cannot_start:
                continue
            if not known and a.desired == DESIRED_STOP:
                self._never_started.add(a.run_id)
            elif not known:
                self._start(a)
            if a.run_id not in self.executor.run_ids():
                continue
            if a.desired == DESIRED_SUSPEND:
                self.executor.request_suspend(a.run_id)
            elif a.desired == DESIRED_STOP:
                self.executor.stop(a.run_id, a.kill_grace_s)

    def _start(self, a: Assignment) -> None:
        """Starts the run's ranks here; a failure fails that run (reported on the next
        heartbeat with the reason), never the heartbeat loop or the node."""
        try:
            launch = self._launch(a)
            if self.executor.private_run_folders:
                _private(launch)
            self.executor.start(launch)
            self.shipper.watch(a.run_id, {r.rank: r.log_path for r in launch.ranks})
        except Exception as err:  # an OSError, an executor's refusal or bug: all end the run
            why = f"cannot start run {a.run_id} of job {a.job_id} on {self.name}: {err}"
            log.warning("%s", why)
            self._cannot_start[a.run_id] = why
            return
        log.info("%s: started run %d of job %d", self.name, a.run_id, a.job_id)

    def _forget(self, run_id: int) -> None:
        """Drops an exited run, and its control folder (its logs stay)."""
        control = self.executor.launch_of(run_id).control_dir
        self.executor.forget(run_id)
        self.shipper.drop(run_id)
        shutil.rmtree(control, ignore_errors=True)  # fd-based: safe from links ranks left
        with contextlib.suppress(OSError):  # the run's other nodes may still use theirs
            control.parent.rmdir()

    def _launch(self, a: Assignment) -> Launch:
        control = self.control_root / str(a.run_id) / self.name
        account = None if self.accounts is None else self.accounts.for_user(a.user)
        ranks = [
            RankLaunch(
                rank=a.node_rank * a.ranks_per_node + local,
                argv=a.argv,
                env=rank_environment(
                    a,
                    local,
                    self.name,
                    control,
                    self.client.address,
                    self.executor.inherits_environment,
                    account,
                ),
                log_path=rank_log(
                    self.state_dir, a.log_dir, a.node_rank * a.ranks_per_node + local
                ),
            )
            for local in range(a.ranks_per_node)
        ]
        return Launch(
            a.run_id,
            control,
            ranks,
            a.job_id,
            a.attempt,
            self.name,
            a.node_rank,
            a.nodes,
            image=a.image,
            gpus=a.gpus_per_node,
            account=account,
            secret_names=frozenset([*a.secret_environment, RUN_TOKEN]),
        )

    def run(self, stop: threading.Event) -> None:
        """Heartbeats until ``stop`` is set, then kills the ranks it still has."""
        left = self.executor.end_leftovers(self.control_root, self.name)
        if left:
            log.warning("ended %d processes that ranks of a dead agent of %s left", left, self.name)
        try:
            while not stop.is_set():
                try:
                    self.step()
                except (Unavailable, HaiTimeoutError) as err:
                    log.warning("%s: %s; retrying", self.name, err)
                except (AuthError, ForbiddenError) as err:
                    # The node was removed or its credential re-issued: the scheduler has
                    # handed its runs elsewhere, so its ranks must not run on (finally: below).
                    raise type(err)(
                        f"{self.name}: refused by the server, ranks stopped: {err}"
                    ) from None
                except Exception:
                    # One bad answer, or an executor's bug, must not take the node's ranks
                    # down with the agent: log it with its traceback and try again.
                    log.exception("%s: heartbeat failed; retrying", self.name)
                stop.wait(self.config.heartbeat_s)
        finally:
            self.shipper.close()
            self.executor.shutdown()


def _private(launch: Launch) -> None:
    """Makes ``launch``'s control folder and rank logs owner-only before any executor opens
    them (they append to what is there): logs may hold what a job printed of its secrets.
    A rank of another account gets its control folder (it writes its acknowledgement
    there); its logs stay the agent's, which writes what the rank prints."""
    if launch.account is not None:
        traversable_dir(launch.control_dir.parent)  # the run's folder, shared by its nodes
    private_dir(launch.control_dir)
    if launch.account is not None:
        os.chown(launch.control_dir, launch.account.uid, launch.account.gid)
    for rank in launch.ranks:
        private_dir(rank.log_path.parent)
        open_private(rank.log_path).close()
