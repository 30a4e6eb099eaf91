"""Every name the platform uses on Kubernetes objects, in one place."""

from __future__ import annotations

import re

GROUP = "hai.fireflyer.io"
VERSION = "v1"
KIND = "HaiJob"
PLURAL = "haijobs"
API_VERSION = f"{GROUP}/{VERSION}"

LABEL_JOB = f"{GROUP}/job-id"
"""On HaiJobs, pods and services: the scheduler's job (chain) id."""
LABEL_RUN = f"{GROUP}/run-id"
LABEL_NODE = f"{GROUP}/node"
LABEL_NODE_RANK = f"{GROUP}/node-rank"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
MANAGER = "hai"

POD_FINALIZER = f"{GROUP}/exit-code"
"""Keeps a deleted pod readable until its agent has recorded how its ranks ended (the Job
controller's ``batch.kubernetes.io/job-tracking`` finalizer does the same)."""
HAIJOB_FINALIZER = f"{GROUP}/haijob"
"""kopf's finalizer on HaiJobs: a HaiJob goes only once its job is stopped and pods gone."""

ENV_NAMESPACE = "HAI_K8S_NAMESPACE"
"""Set by the operator in the jobs it submits: the namespace of their HaiJob."""
ENV_OWNER = "HAI_K8S_OWNER"
"""Set by the operator: ``NAME/UID`` of the HaiJob, for the pods' owner references."""
OPERATOR_ENVIRONMENT = (ENV_NAMESPACE, ENV_OWNER)
"""Variables only admins (the operator) may put in a job: they place its pods."""
CONTAINER = "ranks"
"""The one container of a job pod; it runs all of the node's ranks."""


def pod_name(job_id: int, run_id: int, node_rank: int) -> str:
    """``hai-j<job>-r<run>-n<node rank>``: unique per run and node, readable in kubectl."""
    return f"hai-j{job_id}-r{run_id}-n{node_rank}"


def secret_name(pod: str) -> str:
    """The Secret with the secret variables of the pod named ``pod``."""
    return f"{pod}-env"


def service_name(run_id: int) -> str:
    """The run's headless Service; pod ``n<K>`` of the run is ``n<K>.<service>``."""
    return f"hai-r{run_id}"


def pod_hostname(node_rank: int) -> str:
    return f"n{node_rank}"


def master_address(run_id: int, namespace: str) -> str:
    """The DNS name of node rank 0's pod through the run's headless Service."""
    return f"{pod_hostname(0)}.{service_name(run_id)}.{namespace}.svc"


def label_value(text: str) -> str:
    """``text`` as a valid label value (63 characters of [A-Za-z0-9._-])."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63].strip("-._")
