"""One node's share of a run as Kubernetes objects, and a pod's state as an exit code.

Pure functions over plain dicts (the API's JSON, camelCase), so the Kubernetes executor
and the tests share them and the tests need no API server to check a manifest.

A run's node becomes one pod, pinned to that node with ``nodeName`` (our scheduler has
already decided; Kubernetes' scheduler must neither move nor delay it), asking for the
job's GPUs as ``nvidia.com/gpu``. Its one container runs :mod:`hai.k8s.launch`, which
starts the node's ranks with the platform's environment (``HAI_LAUNCH``) and exits with
the worst rank's code. The run's headless Service gives node rank 0's pod a DNS name,
which becomes ``MASTER_ADDR``. The control folder (``suspend``/``suspend_ack``) and the
rank logs are host folders the node's agent and the pod share: that is how a suspend
request reaches the job and its acknowledgement comes back (docs/kubernetes.md). The
run's token and secret variables are in a Secret per pod, never in the pod's spec, which
anyone who may read pods in the namespace sees.
"""

from __future__ import annotations

import base64
import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hai.config import K8sConfig
from hai.executor.base import Launch, worst_exit
from hai.k8s.names import (
    API_VERSION,
    CONTAINER,
    ENV_NAMESPACE,
    ENV_OWNER,
    KIND,
    LABEL_JOB,
    LABEL_MANAGED,
    LABEL_NODE,
    LABEL_NODE_RANK,
    LABEL_RUN,
    MANAGER,
    POD_FINALIZER,
    label_value,
    master_address,
    pod_hostname,
    pod_name,
    secret_name,
    service_name,
)

LOST = -9
"""The scheduler's code for ranks lost with their node: the job is requeued, not failed."""
CANNOT_START = 127
"""A rank whose command (here: container) cannot start, as a shell reports it."""

NODE_LOSS_REASONS = frozenset(
    {"Evicted", "NodeLost", "Shutdown", "Terminated", "NodeShutdown", "UnexpectedAdmissionError"}
)
"""Pod failure reasons that say the node, not the job, went wrong (kubelet eviction, node
shutdown, device-plugin admission): mapped to :data:`LOST`, i.e. requeued as node loss is."""
START_FAILURES = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
"""Container waiting reasons that mean the job's pod cannot start as specified."""


@dataclass
class Placement:
    """Where and how a launch's pod runs: from the job's spec and the executor's config."""

    namespace: str
    image: str
    gpus: int = 0
    owner: dict[str, Any] | None = None
    """The HaiJob's owner reference; None for jobs submitted without one (``hai submit``)."""
    python: str = "python3"
    host_network: bool = False
    service_account: str = ""
    extra_labels: dict[str, str] = field(default_factory=dict)


def owner_reference(value: str | None) -> dict[str, Any] | None:
    """The owner reference that ``HAI_K8S_OWNER`` (``NAME/UID``) names, or None."""
    if not value or "/" not in value:
        return None
    name, uid = value.rsplit("/", 1)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def placement_for(launch: Launch, config: K8sConfig) -> Placement:
    """The pod's namespace and owner (from the variables the operator put in the job's
    environment), image and GPUs (from the launch; the config's image when it has none)."""
    env = launch.ranks[0].env if launch.ranks else {}
    return Placement(
        namespace=env.get(ENV_NAMESPACE) or config.namespace,
        image=launch.image or config.image,
        gpus=launch.gpus,
        owner=owner_reference(env.get(ENV_OWNER)),
        python=config.python,
        host_network=config.host_network,
        service_account=config.service_account,
    )


def labels(launch: Launch) -> dict[str, str]:
    return {
        LABEL_MANAGED: MANAGER,
        LABEL_JOB: str(launch.job_id),
        LABEL_RUN: str(launch.run_id),
        LABEL_NODE: label_value(launch.node),
        LABEL_NODE_RANK: str(launch.node_rank),
    }


def launch_plan(launch: Launch, namespace: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """(variables shared by every rank, one entry per rank with its own argv/env/log).

    Shared variables become the container's environment, so ``kubectl describe pod`` shows
    the run's contract (WORLD_SIZE, NODE_RANK, HAI_RESTART_COUNT...); the per-rank rest
    (RANK, LOCAL_RANK) travels in ``HAI_LAUNCH``. ``MASTER_ADDR`` becomes node rank 0's
    pod name in the run's headless Service. Secret variables (``launch.secret_names``) are
    in neither: they come from the pod's Secret (:func:`secret_manifest`).
    """
    envs = [{k: v for k, v in r.env.items() if k not in launch.secret_names} for r in launch.ranks]
    for env in envs:
        if "MASTER_ADDR" in env:
            env["MASTER_ADDR"] = master_address(launch.run_id, namespace)
    first = envs[0] if envs else {}
    common = {k: v for k, v in first.items() if all(e.get(k) == v for e in envs)}
    ranks = [
        {
            "rank": r.rank,
            "argv": list(r.argv),
            "env": {k: v for k, v in env.items() if k not in common},
            "log": str(r.log_path),
        }
        for r, env in zip(launch.ranks, envs, strict=True)
    ]
    return common, ranks


def secret_values(launch: Launch) -> dict[str, str]:
    """The values of the launch's secret variables (the same for every rank: the run's)."""
    env = launch.ranks[0].env if launch.ranks else {}
    return {k: env[k] for k in sorted(launch.secret_names) if k in env}


def secret_manifest(launch: Launch, placement: Placement) -> dict[str, Any]:
    """The Secret holding the secret variables of ``launch``'s pod, labelled as the pod is.

    It has no owner yet: the pod, its owner, does not exist until after it (see
    :func:`secret_owner_patch`).
    """
    data = {k: base64.b64encode(v.encode()).decode() for k, v in secret_values(launch).items()}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "immutable": True,  # a run's values never change; kubelets need not watch it
        "metadata": {
            "name": secret_name(pod_name(launch.job_id, launch.run_id, launch.node_rank)),
            "namespace": placement.namespace,
            "labels": {**labels(launch), **placement.extra_labels},
        },
        "data": data,
    }


def secret_owner_patch(pod: dict[str, Any]) -> dict[str, Any]:
    """A merge patch making ``pod`` (as the API returned it, with its uid) its Secret's
    owner: the pod always exists, whoever submitted the job, so the garbage collector
    deletes the Secret with it."""
    meta = pod["metadata"]
    owner = {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]}
    return {"metadata": {"ownerReferences": [owner]}}


def _host_folder(name: str, path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    volume = {"name": name, "hostPath": {"path": str(path), "type": "DirectoryOrCreate"}}
    return volume, {"name": name, "mountPath": str(path)}


def pod_manifest(launch: Launch, placement: Placement, launcher: Path) -> dict[str, Any]:
    """The pod that runs ``launch``'s ranks on ``launch.node``.

    ``launcher`` is :mod:`hai.k8s.launch`'s file as the node sees it (the executor copies it
    into the control folder, so a job image needs only a Python, not this package).
    """
    common, ranks = launch_plan(launch, placement.namespace)
    volumes, mounts = [], []
    folders = {"control": launch.control_dir}
    for i, log_dir in enumerate(sorted({Path(r["log"]).parent for r in ranks})):
        folders[f"logs-{i}"] = log_dir
    for name, path in folders.items():
        volume, mount = _host_folder(name, path)
        volumes.append(volume)
        mounts.append(mount)
    # NCCL and hfreduce stage through /dev/shm; a container's default is 64 MiB.
    volumes.append({"name": "shm", "emptyDir": {"medium": "Memory"}})
    mounts.append({"name": "shm", "mountPath": "/dev/shm"})
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(common.items())]
    secret = secret_name(pod_name(launch.job_id, launch.run_id, launch.node_rank))
    env += [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": k}}}
        for k in secret_values(launch)
    ]
    env.append({"name": "HAI_LAUNCH", "value": json.dumps(ranks, separators=(",", ":"))})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": placement.image,
        "command": [placement.python, str(launcher)],
        "env": env,
        "volumeMounts": mounts,
    }
    if placement.gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(placement.gpus)}}
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "hostname": pod_hostname(launch.node_rank),
        "subdomain": service_name(launch.run_id),
        "containers": [container],
        "volumes": volumes,
        # The scheduler placed the run and watches node health itself: tolerate the taints
        # that would make Kubernetes refuse or evict the pod behind its back.
        "tolerations": [{"operator": "Exists"}],
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
    }
    if launch.node:
        spec["nodeName"] = launch.node
    if placement.host_network:
        spec.update(hostNetwork=True, dnsPolicy="ClusterFirstWithHostNet")
    if placement.service_account:
        spec["serviceAccountName"] = placement.service_account
    metadata: dict[str, Any] = {
        "name": pod_name(launch.job_id, launch.run_id, launch.node_rank),
        "namespace": placement.namespace,
        "labels": {**labels(launch), **placement.extra_labels},
        "finalizers": [POD_FINALIZER],
    }
    if placement.owner:
        metadata["ownerReferences"] = [placement.owner]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def service_manifest(launch: Launch, placement: Placement) -> dict[str, Any]:
    """The run's headless Service: DNS names for its pods, ready or not (rank 0 must be
    reachable while the others start)."""
    metadata: dict[str, Any] = {
        "name": service_name(launch.run_id),
        "namespace": placement.namespace,
        "labels": {
            k: v for k, v in labels(launch).items() if k != LABEL_NODE_RANK and k != LABEL_NODE
        },
    }
    if placement.owner:
        metadata["ownerReferences"] = [placement.owner]
    spec: dict[str, Any] = {
        "clusterIP": "None",
        "selector": {LABEL_RUN: str(launch.run_id)},
        "publishNotReadyAddresses": True,
    }
    port = launch.ranks[0].env.get("MASTER_PORT") if launch.ranks else None
    if port and port.isdigit():
        spec["ports"] = [{"name": "rendezvous", "port": int(port), "protocol": "TCP"}]
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}


@dataclass
class PodOutcome:
    """What a pod says about its ranks: None while they run, else their exit code."""

    exit_code: int | None
    message: str = ""


def container_code(terminated: dict[str, Any]) -> int:
    """A terminated container's code in the platform's terms: a signal is its negative
    number (a container killed by signal N reports 128 + N, as a shell does)."""
    if terminated.get("signal"):
        return -int(terminated["signal"])
    code = int(terminated.get("exitCode", 0))
    return -(code - 128) if 128 < code <= 128 + 64 else code


def _when(stamp: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _age_s(pod: dict[str, Any], now: datetime.datetime) -> float:
    created = pod.get("metadata", {}).get("creationTimestamp")
    return (now - _when(str(created))).total_seconds() if created else 0.0


def pod_outcome(
    pod: dict[str, Any] | None,
    now: datetime.datetime,
    start_timeout_s: float,
    *,
    deleted_by_agent: bool = False,
) -> PodOutcome:
    """Reads an observed pod (None: it is gone) into an exit code.

    * all containers terminated: the worst of their codes;
    * gone, failed for a node reason (eviction, node shutdown, admission), or deleted by
      someone other than its agent (``deleted_by_agent`` False) and its containers stopped:
      :data:`LOST`, which the scheduler requeues like node loss;
    * a container unable to start (image pull, bad config) for ``start_timeout_s``:
      :data:`CANNOT_START`, which the restart policy handles like a failed command;
    * otherwise None: still starting or running.
    """
    if pod is None:
        return PodOutcome(LOST, "the pod is gone")
    status = pod.get("status") or {}
    containers = status.get("containerStatuses") or []
    deleted = (pod.get("metadata") or {}).get("deletionTimestamp")
    if deleted and not deleted_by_agent:
        # Deleted behind its agent's back (kubectl delete, a drain): the node was taken from
        # the ranks, as on node loss, whatever code the kubelet's signal left; the run ends
        # once the kubelet has stopped them. Ranks that ended on their own just before are
        # requeued too: no timestamp tells them apart (deletionTimestamp is when the grace
        # period ends, until the kubelet's confirmation makes it that moment).
        if any("running" in (c.get("state") or {}) for c in containers):
            return PodOutcome(None)
        return PodOutcome(LOST, "the pod was deleted by someone other than its agent")
    reason = status.get("reason") or ""
    if status.get("phase") == "Failed" and (
        reason in NODE_LOSS_REASONS or reason.startswith("OutOf") or not containers
    ):
        why = f"{reason or 'no reason given'}: {status.get('message', '')}".rstrip(": ")
        return PodOutcome(LOST, f"pod failed for its node: {why}")
    terminated = [
        c["state"]["terminated"] for c in containers if (c.get("state") or {}).get("terminated")
    ]
    if containers and len(terminated) == len(containers):
        return PodOutcome(worst_exit([container_code(t) for t in terminated]))
    for c in containers:
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in START_FAILURES and _age_s(pod, now) >= start_timeout_s:
            return PodOutcome(
                CANNOT_START,
                f"container cannot start: {waiting['reason']}: {waiting.get('message', '')}",
            )
    return PodOutcome(None)


def is_stuck(pod: dict[str, Any], now: datetime.datetime, slack_s: float) -> bool:
    """Whether a deleted pod has outlived its grace period by ``slack_s``: its agent (which
    removes :data:`POD_FINALIZER`) is gone with its node. The API server sets
    ``deletionTimestamp`` to when the grace period ends, not to when the delete came."""
    meta = pod.get("metadata") or {}
    deleted = meta.get("deletionTimestamp")
    if not deleted or POD_FINALIZER not in (meta.get("finalizers") or []):
        return False
    return (now - _when(str(deleted))).total_seconds() > slack_s


def without_finalizer_patch(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """A JSON patch that drops :data:`POD_FINALIZER` and keeps any other finalizer; its
    ``test`` makes it fail rather than race with a concurrent change."""
    current = list((pod.get("metadata") or {}).get("finalizers") or [])
    return [
        {"op": "test", "path": "/metadata/finalizers", "value": current},
        {
            "op": "replace",
            "path": "/metadata/finalizers",
            "value": [f for f in current if f != POD_FINALIZER],
        },
    ]
