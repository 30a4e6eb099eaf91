"""How agents run job ranks: the interface and the local-process implementation."""

from hai.executor.base import Executor, Launch, RankLaunch
from hai.executor.local import LocalExecutor

__all__ = ["Executor", "Launch", "LocalExecutor", "RankLaunch"]
