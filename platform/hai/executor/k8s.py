"""The Kubernetes executor: one pod per node of a run, created by that node's agent.

The agent runs as a DaemonSet pod on every GPU node and drives this executor exactly as
it drives the local one; only the runner differs. :meth:`start` creates the run's pod on
this node (and, on node rank 0, the run's headless Service), :meth:`stop` deletes it with
the grace period, :meth:`exit_code` reads the pod's containers. Suspend travels through
the run's control folder, a host folder the agent and the pod share: the agent writes
``suspend``, ``hai.client.go_suspend()`` in the pod writes ``suspend_ack``.

Pods carry :data:`~hai.k8s.names.POD_FINALIZER`, so a deleted pod stays readable until
this executor has recorded how its ranks ended; it then drops the finalizer. A pod deleted
by anyone but this executor (kubectl delete, a drain) ends its run as lost with its node
(-9, requeued), not with the code the kubelet's SIGTERM leaves. A pod, Secret or Service
the API refuses to create (RBAC, quota, admission, a missing namespace) ends the run with
127 and the API's answer in the rank logs.

The run's token and the job's secret variables go into a Secret per pod, created before
the pod and then owned by it: the garbage collector deletes it with the pod, and
:meth:`forget` deletes it too. The executor never reads a Secret back.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hai.config import K8sConfig
from hai.errors import StateError, Unavailable
from hai.executor.base import Executor, Launch
from hai.k8s import launch as launcher_module
from hai.k8s.names import (
    LABEL_MANAGED,
    LABEL_NODE,
    MANAGER,
    POD_FINALIZER,
    label_value,
    secret_name,
    service_name,
)
from hai.k8s.pods import (
    CANNOT_START,
    placement_for,
    pod_manifest,
    pod_outcome,
    secret_manifest,
    secret_owner_patch,
    secret_values,
    service_manifest,
    without_finalizer_patch,
)

log = logging.getLogger("hai.executor.k8s")
LAUNCHER = "launch.py"
"""The launcher's name in a run's control folder."""


@dataclass
class _PodRun:
    launch: Launch
    namespace: str
    name: str
    deleting: bool = False
    code: int | None = None


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class KubernetesExecutor(Executor):
    inherits_environment = False
    private_run_folders = False  # the pod's user, whoever it is, writes ack and logs there

    def __init__(
        self,
        api: Any,
        config: K8sConfig,
        clock: Callable[[], datetime.datetime] = _utcnow,
    ) -> None:
        """``api`` is a ``kubernetes.client.CoreV1Api``; each launch brings its job's image
        and GPUs (the assignment carries them), so nothing here asks the server."""
        self.api = api
        self.config = config
        self._clock = clock
        self._runs: dict[int, _PodRun] = {}

    # ---- Kubernetes calls, with errors in the platform's terms ----------------------------
    def _call(
        self, what: str, fn: Callable[..., Any], *args: Any, missing: bool = True, **kwargs: Any
    ) -> Any:
        """Calls the API and returns the answer as JSON (the client's models are left out:
        they reject objects a newer server adds fields to); None on 404 while ``missing``
        allows it (a create's 404, a namespace that does not exist, is a refusal).

        Raises Unavailable when the API cannot be reached (the agent retries on its next
        heartbeat); other API errors propagate.
        """
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            reply = fn(*args, _preload_content=False, **kwargs)
            return json.loads(reply.data) if reply.data else {}
        except ApiException as err:
            if err.status == 404 and missing:
                return None
            raise
        except HTTPError as err:
            raise Unavailable(f"Kubernetes API unreachable while trying to {what}: {err}") from None

    def _read_pod(self, run: _PodRun) -> dict[str, Any] | None:
        return self._call("read a pod", self.api.read_namespaced_pod, run.name, run.namespace)

    def _delete_pod(self, run: _PodRun, grace_s: float) -> None:
        # The API takes whole seconds, and 0 would mean "skip the grace" only with force.
        grace = max(1, math.ceil(grace_s))
        self._call(
            "delete a pod",
            self.api.delete_namespaced_pod,
            run.name,
            run.namespace,
            grace_period_seconds=grace,
        )
        run.deleting = True

    def _release(self, namespace: str, name: str, pod: dict[str, Any] | None = None) -> None:
        """Drops our finalizer, so a deleted pod can go (a JSON patch guarded by a test)."""
        from kubernetes.client.exceptions import ApiException

        for _ in range(3):
            if pod is None:
                pod = self._call("read a pod", self.api.read_namespaced_pod, name, namespace)
                if pod is None:
                    return
            if POD_FINALIZER not in (pod.get("metadata", {}).get("finalizers") or []):
                return
            try:
                self._call(
                    "release a pod",
                    self.api.patch_namespaced_pod,
                    name,
                    namespace,
                    without_finalizer_patch(pod),
                    _content_type="application/json-patch+json",
                )
                return
            except ApiException as err:  # the finalizers changed under us: read again
                if err.status not in (409, 422):
                    raise
                pod = None

    def _delete_secret(self, namespace: str, pod: str) -> None:
        """Deletes the Secret of ``pod`` now rather than when the garbage collector gets to
        it (and one that an agent which died right after creating the pod left unowned)."""
        self._call(
            "delete a Secret", self.api.delete_namespaced_secret, secret_name(pod), namespace
        )

    # ---- the Executor interface -----------------------------------------------------------
    def start(self, launch: Launch) -> None:
        if launch.run_id in self._runs:
            raise StateError(f"run {launch.run_id} already started on this node")
        # The job's container may run as any user: it must be able to write its
        # acknowledgement and logs into the run's folders (the agent runs as root).
        for folder in {launch.control_dir, *(r.log_path.parent for r in launch.ranks)}:
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o777)
        launcher = launch.control_dir / LAUNCHER
        shutil.copyfile(launcher_module.__file__, launcher)
        placement = placement_for(launch, self.config)
        pod = pod_manifest(launch, placement, launcher)
        run = _PodRun(launch, placement.namespace, pod["metadata"]["name"])
        objects = []
        if launch.node_rank == 0:
            objects.append(service_manifest(launch, placement))
        if secret_values(launch):
            objects.append(secret_manifest(launch, placement))
        objects.append(pod)
        refusal = self._create_all(objects)
        if refusal:
            # Refused (RBAC, quota, admission, a missing namespace): the ranks cannot start,
            # which the restart policy handles like any command that cannot start.
            self._log(launch, f"hai: Kubernetes refused {refusal}")
            run.code = CANNOT_START
        elif secret_values(launch):
            self._own_secret(run)
        self._runs[launch.run_id] = run
        log.info("run %d: pod %s/%s on %s", launch.run_id, run.namespace, run.name, launch.node)

    def _create_all(self, objects: list[dict[str, Any]]) -> str:
        """Creates ``objects`` in order and returns "", or stops at the first one the API
        refuses (any status but 409, 404 for a missing namespace included) and returns which
        one and the API's answer. One that exists already (409) is taken as ours: the same
        run's, made by this node's agent before it restarted."""
        from kubernetes.client.exceptions import ApiException

        create = {
            "Service": self.api.create_namespaced_service,
            "Secret": self.api.create_namespaced_secret,
            "Pod": self.api.create_namespaced_pod,
        }
        for body in objects:
            what, namespace = _what(body), body["metadata"]["namespace"]
            try:
                self._call(f"create {what}", create[body["kind"]], namespace, body, missing=False)
            except ApiException as err:
                if err.status != 409:
                    return f"{what}: {_answer(err)}"
        return ""

    def _own_secret(self, run: _PodRun) -> None:
        """Makes the pod its Secret's owner, so the garbage collector deletes it with the pod."""
        pod = self._read_pod(run)
        if pod is not None:
            self._call(
                "give a Secret its owner",
                self.api.patch_namespaced_secret,
                secret_name(run.name),
                run.namespace,
                secret_owner_patch(pod),
            )

    def launch_of(self, run_id: int) -> Launch:
        return self._runs[run_id].launch

    def stop(self, run_id: int, grace_s: float) -> None:
        run = self._runs[run_id]
        if not run.deleting and run.code is None:
            self._delete_pod(run, grace_s)

    def exit_code(self, run_id: int) -> int | None:
        run = self._runs[run_id]
        if run.code is not None:
            return run.code
        try:
            pod = self._read_pod(run)
        except Unavailable as err:
            log.warning("%s", err)
            return None
        outcome = pod_outcome(
            pod, self._clock(), self.config.start_timeout_s, deleted_by_agent=run.deleting
        )
        if outcome.exit_code is None:
            return None
        run.code = outcome.exit_code
        if outcome.message:
            self._log(run.launch, f"hai: pod {run.name}: {outcome.message}")
        if pod is not None:
            if outcome.exit_code == CANNOT_START and not run.deleting:
                self._delete_pod(run, 0)
            if run.deleting or pod.get("metadata", {}).get("deletionTimestamp"):
                self._release(run.namespace, run.name, pod)
        return run.code

    def run_ids(self) -> list[int]:
        return list(self._runs)

    def forget(self, run_id: int) -> None:
        run = self._runs.pop(run_id, None)
        if run is None:
            return
        if not run.deleting:
            self._delete_pod(run, 0)
        # The Secret before the finalizer: the pod's release would hand it to the garbage
        # collector, and the run token should not outlive the run by the collector's delay.
        self._delete_secret(run.namespace, run.name)
        self._release(run.namespace, run.name)
        if run.launch.node_rank == 0:
            self._call(
                "delete a service",
                self.api.delete_namespaced_service,
                service_name(run_id),
                run.namespace,
            )

    def shutdown(self) -> None:
        """Deletes this node's pods: ranks do not outlive their agent (the scheduler has
        already requeued their jobs once the agent is gone)."""
        for run_id in list(self._runs):
            try:
                self.forget(run_id)
            except Exception:
                log.exception("could not delete the pod of run %d", run_id)

    def remove_orphans(self, node: str) -> list[str]:
        """Deletes pods on ``node`` that a previous agent left (the scheduler counted their
        runs as lost when this agent registered); returns their names. A deleted pod stays
        listed until its kubelet confirms that its containers are gone: one already deleted
        and released is left to it."""
        pods = self._call(
            "list pods",
            self.api.list_pod_for_all_namespaces,
            label_selector=f"{LABEL_MANAGED}={MANAGER},{LABEL_NODE}={label_value(node)}",
        )
        known = {(r.namespace, r.name) for r in self._runs.values()}
        removed = []
        for item in (pods or {}).get("items") or []:
            meta = item["metadata"]
            name, namespace = meta["name"], meta["namespace"]
            released = POD_FINALIZER not in (meta.get("finalizers") or [])
            if (namespace, name) in known or (meta.get("deletionTimestamp") and released):
                continue
            self._call("delete a pod", self.api.delete_namespaced_pod, name, namespace)
            self._delete_secret(namespace, name)
            self._release(namespace, name)
            removed.append(name)
        return removed

    @staticmethod
    def _log(launch: Launch, line: str) -> None:
        for rank in launch.ranks:
            rank.log_path.parent.mkdir(parents=True, exist_ok=True)
            with rank.log_path.open("a") as f:
                f.write(line.rstrip("\n") + "\n")


def _what(body: dict[str, Any]) -> str:
    """``Kind namespace/name`` of a manifest, for messages."""
    meta = body["metadata"]
    return f"{body['kind']} {meta['namespace']}/{meta['name']}"


def _answer(err: Any) -> str:
    """The API's answer to a refused request: its status and the Status object's message."""
    try:
        message = json.loads(err.body)["message"]
    except (TypeError, ValueError, KeyError):
        message = err.body or ""
    return f"{err.status} {err.reason}: {message}".rstrip(": ")
