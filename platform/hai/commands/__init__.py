"""The ``hai`` command groups for the platform; :mod:`hai.cli` registers them."""

from hai.commands.cluster import cluster_commands
from hai.commands.demo import demo
from hai.commands.jobs import job_commands
from hai.commands.k8s import operator

__all__ = ["cluster_commands", "demo", "job_commands", "operator"]
