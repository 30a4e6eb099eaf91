"""The HaiJob operator (``hai operator``): kopf handlers between HaiJobs and the scheduler.

The scheduler decides, Kubernetes runs: a new HaiJob is submitted to the scheduler as a job
(:func:`hai.k8s.haijob.job_spec`); the scheduler places it and the agents on the chosen
nodes create its pods (:mod:`hai.executor.k8s`). The operator then keeps the HaiJob's
status current from the scheduler's record, turns changes of ``spec.suspend`` into
Suspend and Resume, and on deletion stops the job and keeps its finalizer until the job's
pods are gone. Each handler is a few lines over :mod:`hai.k8s.haijob`'s pure functions.
Only ``spec.suspend`` may change after submission; servers without CEL (Kubernetes before
1.25) accept edits of the rest, so the operator names them in ``status.message`` and a
Warning Event as ignored, and the job keeps running as submitted.

kopf logs in with the kubernetes client's credentials (:func:`connection_info`), so both
use :func:`hai.k8s.kube.client_configuration`'s: a kubeconfig, the pod's service account,
or ``k8s.api_url`` with a token file and CA.

A HaiJob's secret variables name Secrets in its namespace; the operator reads their values
once, at submission, and sends them to the server as the job's ``secret_environment``
(kept there as ``hai submit``'s are, shown by no API, given to the run's pods through a
Secret of their own). It reads no other Secret and never writes a value into a HaiJob.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
from collections.abc import Callable
from typing import Any

import kopf

from hai.config import K8sConfig
from hai.errors import HaiTimeoutError, NotFoundError, SpecError, StateError, Unavailable
from hai.k8s.haijob import (
    FINISHED_PHASES,
    INVALID,
    PENDING,
    find_job,
    haijob_status,
    ignored_changes,
    job_spec,
    secret_refs,
    status_changes,
    suspend_action,
)
from hai.k8s.names import GROUP, HAIJOB_FINALIZER, LABEL_JOB, PLURAL, VERSION
from hai.k8s.pods import is_stuck, without_finalizer_patch
from hai.spec import JobSpec, spec_from_dict

log = logging.getLogger("hai.k8s.operator")

PlatformCall = Callable[..., Any]
"""``ApiClient.call``: a method name and its body, answered by the hai server."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _platform(call: PlatformCall, method: str, **body: Any) -> Any:
    """Calls the server; an unreachable one is a temporary error (kopf retries)."""
    try:
        return call(method, **body)
    except (Unavailable, HaiTimeoutError) as err:
        raise kopf.TemporaryError(str(err), delay=2) from None


def with_secret_values(
    core: Any, namespace: str, spec: JobSpec, haijob: dict[str, Any], retry_s: float
) -> JobSpec:
    """``spec`` with the values of the HaiJob's secret variables, read from ``namespace``.

    Raises:
        kopf.TemporaryError: a Secret or key is missing (it may be created after the
            HaiJob, as a pod waits for its Secrets); retried after ``retry_s``.
        SpecError: a value is not UTF-8 text or holds a NUL.
    """
    from kubernetes.client.exceptions import ApiException

    values = {}
    for variable, (name, key) in secret_refs(haijob).items():
        try:
            reply = core.read_namespaced_secret(name, namespace, _preload_content=False)
            data = json.loads(reply.data).get("data") or {}
        except ApiException as err:
            if err.status != 404:
                raise
            data = {}
        if key not in data:
            raise kopf.TemporaryError(
                f"waiting for key {key!r} of Secret {namespace}/{name} "
                f"(spec.secretEnvironment.{variable})",
                delay=retry_s,
            )
        try:
            values[variable] = base64.b64decode(data[key]).decode()
        except UnicodeDecodeError:
            raise SpecError(
                [f"spec.secretEnvironment.{variable}: Secret {name} key {key} is not UTF-8 text"]
            ) from None
    return spec_from_dict({**spec.to_dict(), "secret_environment": values}) if values else spec


class JobPods:
    """The pods of one job, through the API as plain JSON."""

    def __init__(self, core: Any, config: K8sConfig) -> None:
        self.core = core
        self.config = config

    def list(self, namespace: str, job_id: int) -> list[dict[str, Any]]:
        reply = self.core.list_namespaced_pod(
            namespace, label_selector=f"{LABEL_JOB}={job_id}", _preload_content=False
        )
        return json.loads(reply.data).get("items") or []

    def release_stuck(self, pods: list[dict[str, Any]]) -> list[str]:
        """Lets go of pods whose agent died with its node (see :func:`hai.k8s.pods.is_stuck`).

        A deleted pod bound to a node stays Terminating until that node's kubelet confirms
        its containers gone, and none is left to: the pod is deleted again with grace 0 (a
        force delete), then the executor's finalizer dropped, and the API server removes it.
        In that order, a pass that fails halfway finds the pod stuck again and retries.
        """
        from kubernetes.client.exceptions import ApiException

        now = datetime.datetime.now(datetime.timezone.utc)
        released = []
        for pod in pods:
            if not is_stuck(pod, now, self.config.stuck_after_s):
                continue
            name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
            try:
                self.core.delete_namespaced_pod(
                    name, namespace, grace_period_seconds=0, _preload_content=False
                )
                self.core.patch_namespaced_pod(
                    name,
                    namespace,
                    without_finalizer_patch(pod),
                    _content_type="application/json-patch+json",
                    _preload_content=False,
                )
            except ApiException as err:
                if err.status != 404:  # gone meanwhile: released
                    raise
            released.append(name)
        return released


def connection_info(configuration: Any) -> kopf.ConnectionInfo:
    """kopf's credentials from a ``kubernetes.client.Configuration`` (the one that ``core``
    uses, :func:`hai.k8s.kube.client_configuration`'s): kopf and the client log in alike.
    Asked again whenever the API answers 401, so a rotated token is read anew."""
    header = configuration.get_api_key_with_prefix("BearerToken")  # refreshes the token
    scheme, _, token = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


def make_registry(call: PlatformCall, core: Any, config: K8sConfig) -> kopf.OperatorRegistry:
    """The operator's handlers on a registry of their own (``kopf.run(registry=...)``).

    ``call`` reaches the hai server (``ApiClient(...).call``); ``core`` is a
    ``kubernetes.client.CoreV1Api``, whose credentials kopf logs in with too.
    """
    registry = kopf.OperatorRegistry()
    pods = JobPods(core, config)
    resource = (GROUP, VERSION, PLURAL)
    # A handler that fails unexpectedly is retried after one poll interval, not kopf's
    # default of 60 s: the status must not freeze for a minute over one bad answer.
    retry = {"backoff": config.poll_interval_s, "registry": registry}

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = HAIJOB_FINALIZER
        # Handler progress in annotations: the status is ours and the CRD's schema prunes
        # anything else from it.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration"
        )
        settings.posting.level = logging.WARNING
        # A HaiJob deleted while its refresh timer is in a server call keeps its finalizer
        # until the timer exits, and kopf looks again only after this: at its default 60 s
        # a delete waited a minute for a call that ended in milliseconds.
        settings.background.cancellation_polling = config.poll_interval_s

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(core.api_client.configuration)

    @kopf.on.create(*resource, **retry)
    def create(body: Any, meta: Any, spec: Any, status: Any, patch: kopf.Patch, **_: Any) -> None:
        haijob = dict(body)
        try:
            wanted = job_spec(haijob)
            wanted = with_secret_values(
                core, meta["namespace"], wanted, haijob, config.poll_interval_s
            )
        except SpecError as err:
            patch.status.update(phase=INVALID, message=str(err))
            raise kopf.PermanentError(str(err)) from None
        except kopf.TemporaryError as err:  # a Secret it names is not there yet
            patch.status.update(phase=PENDING, message=str(err))
            raise
        existing = find_job(_platform(call, "List", everyone=True, all=True), meta["uid"])
        job = existing or _platform(call, "Submit", spec=wanted.to_dict())
        patch.metadata.setdefault("labels", {})[LABEL_JOB] = str(job["id"])
        if spec.get("suspend") and job["state"] == "queued":
            job = _platform(call, "Suspend", job_id=job["id"])
        first = haijob_status({"job": job, "runs": []}, {}, _now())
        patch.status.update(status_changes(dict(status), first))  # a Pending message goes
        log.info("HaiJob %s/%s is job %d", meta["namespace"], meta["name"], job["id"])

    @kopf.on.field(*resource, field="spec.suspend", **retry)
    def suspend(old: Any, new: Any, status: Any, **_: Any) -> None:
        job_id = status.get("jobId")
        if job_id is None:
            return  # at creation: the create handler saw spec.suspend
        state = _platform(call, "Describe", job_id=job_id)["job"]["state"]
        action = suspend_action(old, new, state)
        if action is not None:
            try:
                _platform(call, action, job_id=job_id)
            except StateError as err:  # it changed state meanwhile: nothing left to do
                log.info("job %d: %s", job_id, err)

    def unfinished(status: Any, **_: Any) -> bool:
        return status.get("phase") not in FINISHED_PHASES

    # Finished HaiJobs are not polled: a finished job never changes again. (A pod stuck on
    # a dead node after its job finished is released when the HaiJob is deleted.)
    @kopf.timer(*resource, interval=config.poll_interval_s, when=unfinished, **retry)
    def refresh(body: Any, meta: Any, status: Any, patch: kopf.Patch, **_: Any) -> None:
        job_id = status.get("jobId")
        if job_id is None:
            return
        try:
            detail = _platform(call, "Describe", job_id=job_id)
        except NotFoundError:
            patch.status.update(phase="Failed", message=f"the scheduler has no job {job_id}")
            return
        ignored = ignored_changes(dict(body), detail["job"]["spec"])
        new = haijob_status(detail, dict(status), _now(), ignored)
        changes = status_changes(dict(status), new)
        if changes:
            patch.status.update(changes)
        if ignored and "message" in changes:  # an Event too, for kubectl describe
            kopf.warn(body, reason="SpecChangeIgnored", message=new["message"])
        pods.release_stuck(pods.list(meta["namespace"], job_id))

    @kopf.on.delete(*resource, **retry)
    def delete(meta: Any, status: Any, **_: Any) -> None:
        job_id = status.get("jobId")
        if job_id is None:
            return
        try:
            _platform(call, "Stop", job_id=job_id)
        except (StateError, NotFoundError):
            pass  # finished already, or unknown to a new store: nothing to stop
        left = pods.list(meta["namespace"], job_id)
        pods.release_stuck(left)
        if left:
            raise kopf.TemporaryError(
                f"job {job_id}: waiting for {len(left)} pods to stop", delay=config.poll_interval_s
            )

    return registry


def run(
    call: PlatformCall,
    core: Any,
    config: K8sConfig,
    namespaces: tuple[str, ...] = (),
    liveness: str | None = None,
) -> None:
    """Runs the operator until SIGTERM/SIGINT: HaiJobs in ``namespaces``, or all."""
    kopf.run(
        registry=make_registry(call, core, config),
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
    )
