"""Which local account a rank runs as: never root, and never the agent's own account when
the agent is root, so that a job cannot read the agent's state folder (its admin token,
database and every job's logs are 0600/0700, the agent's).

As Slurm does, a job runs as its submitter's own local account where one exists, else as
a fallback account (``nobody`` by default); or every job runs as one fixed account. Only
root can switch accounts: an agent started as anyone else runs its ranks as itself.
"""

from __future__ import annotations

import logging
import os
import pwd
from dataclasses import dataclass

from hai.errors import ConfigError

log = logging.getLogger("hai.accounts")

SUBMITTER = "submitter"
"""``run_as``: the local account named like the job's user, else ``run_as_fallback``."""
AGENT = "agent"
"""``run_as``: the agent's own account, for single-user machines (ranks can read the state
folder, and everything else the agent can)."""
ROOT_NAMES = ("root", "0")


@dataclass(frozen=True)
class Account:
    """Credentials a rank's process takes before it runs the job's command."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    """Supplementary groups (the account's groups in the group database)."""
    name: str
    home: str
    """The account's home folder; empty when it has none in the password database."""


def lookup(value: str) -> Account:
    """The account named ``value``, or with numeric uid ``value``.

    A uid with no password entry (common in containers) has its own number as group, no
    supplementary groups and no home.

    Raises:
        KeyError: no such account name.
    """
    try:
        entry = pwd.getpwuid(int(value)) if value.isdigit() else pwd.getpwnam(value)
    except KeyError:
        if not value.isdigit():
            raise
        return Account(int(value), int(value), (), value, "")
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return Account(entry.pw_uid, entry.pw_gid, groups, entry.pw_name, entry.pw_dir)


class RankAccounts:
    """Resolves the account each run's ranks take, as ``run_as`` says.

    Built when the agent starts, so that a fixed account that cannot be used stops it
    with one line; a run whose account cannot be found later fails alone.
    """

    def __init__(
        self, run_as: str, fallback: str, agent_uid: int | None = None, min_uid: int = 1000
    ) -> None:
        """``min_uid``: the lowest uid a submitter's own account may have (below: system
        accounts, which a hai user of the same name must not get).

        Raises ConfigError: a fixed account that does not exist or is root, or that names
        another account than the agent's on an agent that is not root."""
        self.run_as, self.fallback, self.min_uid = run_as, fallback, min_uid
        self.agent_uid = os.geteuid() if agent_uid is None else agent_uid
        self.switches = self.agent_uid == 0 and run_as != AGENT
        """Whether ranks take another account than the agent's (root only can)."""
        if run_as == AGENT:
            log.warning(
                "run_as=agent: ranks run as the agent's account (uid %d) and can read its "
                "state folder (admin token, database, logs); use it on single-user machines "
                "only",
                self.agent_uid,
            )
        elif not self.switches:
            if run_as != SUBMITTER and self._fixed(run_as, "run_as").uid != self.agent_uid:
                raise ConfigError(
                    f"run_as {run_as!r}: the agent runs as uid {self.agent_uid}, not root, "
                    "so it cannot switch ranks to another account; start it as root, or "
                    "leave run_as at 'submitter'"
                )
            log.warning(
                "the agent runs as uid %d, not root: ranks share its account and can read "
                "its state folder; run agents as root on shared nodes",
                self.agent_uid,
            )
        elif run_as == SUBMITTER:
            self._fixed(fallback, "run_as_fallback")
        else:
            self._fixed(run_as, "run_as")

    def for_user(self, user: str) -> Account | None:
        """The account for a job of ``user``; None where ranks keep the agent's account.

        Raises:
            ConfigError: the fixed or fallback account no longer exists, or is root.
        """
        if not self.switches:
            return None
        if self.run_as != SUBMITTER:
            return self._fixed(self.run_as, "run_as")
        try:
            own = lookup(user) if user and not user.isdigit() else None  # names, not uids
        except KeyError:
            own = None
        if own is not None and own.uid >= self.min_uid and own.uid != self.agent_uid:
            return own
        return self._fixed(self.fallback, "run_as_fallback")

    @staticmethod
    def _fixed(value: str, field: str) -> Account:
        try:
            account = lookup(value)
        except KeyError:
            raise ConfigError(
                f"{field} {value!r} names no local account: create it, or give another "
                "name or a numeric uid"
            ) from None
        if account.uid == 0:
            raise ConfigError(f"{field} {value!r} is root (uid 0): ranks never run as root")
        return account
