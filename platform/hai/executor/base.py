"""The executor interface: how one node's agent runs the ranks of a run.

Implementations: :class:`hai.executor.local.LocalExecutor` (processes on this machine) and
:class:`hai.executor.k8s.KubernetesExecutor` (one pod per node of a run).
``tests/hai/test_executor.py`` holds the conformance suite; ``tests/hai/test_k8s_executor.py``
runs it on the Kubernetes executor.

The job side sees the same contract everywhere: the variables of :func:`rank_environment`,
a control folder where a ``suspend`` file appears when the platform asks it to suspend
and where ``hai.client.go_suspend()`` leaves a ``suspend_ack`` file.
"""

from __future__ import annotations

import abc
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

from hai.accounts import Account
from hai.client import ACK_FILE, SUSPEND_FILE


@dataclass
class RankLaunch:
    rank: int
    argv: list[str]
    env: dict[str, str]
    log_path: Path


@dataclass
class Launch:
    run_id: int
    control_dir: Path
    """Shared by all of this node's ranks; :mod:`hai.client` reads and writes it."""
    ranks: list[RankLaunch] = field(default_factory=list)
    job_id: int = 0
    attempt: int = 0
    node: str = ""
    """The node these ranks run on (the agent's name)."""
    node_rank: int = 0
    nodes: int = 1
    """How many nodes the run spans; ``node_rank`` is this node's place among them."""
    image: str | None = None
    """The job's container image (None: the executor's default); local processes ignore it."""
    gpus: int = 0
    """GPUs this node's ranks ask for; the local executor leaves devices to the job."""
    account: Account | None = None
    """The account the ranks run as (:mod:`hai.accounts`); None: the agent's own."""
    secret_names: frozenset[str] = frozenset()
    """Variables of the ranks' ``env`` whose values are secret (the run token, the spec's
    ``secret_environment``): an executor keeps them out of objects others may read."""


class Executor(abc.ABC):
    inherits_environment = True
    """Whether ranks start with the agent's own environment under the platform's variables
    (local processes), or only with the platform's (a container brings its own)."""
    private_run_folders = True
    """Whether the agent makes each run's control folder and rank logs owner-only (0700,
    0600) before ``start``: where the agent's own process writes the logs. A container
    that may run as any user opens its folders itself (Kubernetes)."""
    switches_accounts = False
    """Whether ranks run as :attr:`Launch.account` (local processes of a root agent); a
    container runs as its image's user."""

    @abc.abstractmethod
    def start(self, launch: Launch) -> None:
        """Starts every rank of ``launch`` and returns without waiting for them.

        Raises StateError if the run was started before and not forgotten.
        """

    @abc.abstractmethod
    def launch_of(self, run_id: int) -> Launch:
        """The launch of a run started and not yet forgotten (KeyError otherwise)."""

    def request_suspend(self, run_id: int) -> None:
        """Makes ``receive_suspend_command()`` true for every rank (idempotent): the run's
        control folder is where its ranks look, whatever runs them."""
        # The rank's account owns the folder: O_NOFOLLOW, or a link it put there would
        # make the agent create (as root) whatever file the link names.
        path = self.launch_of(run_id).control_dir / SUSPEND_FILE
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600))
        except OSError as err:
            # A link or folder the rank put there: it refused the request, and its suspend
            # grace period runs out as for any rank that never acknowledges.
            if err.errno not in (errno.ELOOP, errno.EISDIR):
                raise

    def acked(self, run_id: int) -> bool:
        """Whether any rank called ``go_suspend()``."""
        return (self.launch_of(run_id).control_dir / ACK_FILE).exists()

    @abc.abstractmethod
    def stop(self, run_id: int, grace_s: float) -> None:
        """Sends SIGTERM now and SIGKILL to ranks still alive ``grace_s`` later.

        Returns at once; :meth:`exit_code` tells when they are gone. Idempotent.
        """

    @abc.abstractmethod
    def exit_code(self, run_id: int) -> int | None:
        """None while any rank runs; then the worst exit code (non-zero wins, a signal
        is its negative number)."""

    @abc.abstractmethod
    def run_ids(self) -> list[int]:
        """Runs started and not yet forgotten."""

    @abc.abstractmethod
    def forget(self, run_id: int) -> None:
        """Drops an exited run's bookkeeping (its logs stay)."""

    def end_leftovers(self, control_root: Path, node: str) -> int:
        """Kills what ranks of ``node`` started by an agent that died left running (their
        runs' control folders are ``control_root/RUN/node``); returns how many processes.
        Called once when an agent starts. Nothing by default: what a container ran dies
        with it."""
        return 0

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Kills every rank still running; used when the agent exits."""


def worst_exit(codes: list[int]) -> int:
    """The code that describes a set of ranks: the first non-zero one, else 0."""
    return next((c for c in codes if c != 0), 0)
