"""HaiJob objects in the platform's terms, and the platform's state as HaiJob status.

Pure functions over the API's JSON (camelCase) and the server's answers (the core's
dataclasses as dicts), so the operator's handlers stay a few lines each and the rules are
tested without an API server:

* :func:`job_spec`: a HaiJob's ``spec`` becomes a :class:`~hai.spec.JobSpec`, checked by
  the same code as ``hai submit`` (every bad field reported, named as in the HaiJob);
* :func:`secret_refs`: its secret variables, which a HaiJob names by reference to
  Secrets and never holds (anyone who may read HaiJobs would see them);
* :func:`haijob_status`: a job's record, runs and events become ``status``;
* :func:`suspend_action`: a change of ``spec.suspend`` becomes Suspend or Resume;
* :func:`status_changes`: only what changed is patched;
* :func:`ignored_changes`: spec fields edited after submission, which the job never takes.
"""

from __future__ import annotations

import datetime
from typing import Any

from pydantic.alias_generators import to_camel

from hai.errors import SpecError
from hai.k8s.names import ENV_NAMESPACE, ENV_OWNER
from hai.records import (
    FAILED,
    QUEUED,
    RUN_DONE,
    RUNNING,
    STOPPED,
    SUCCEEDED,
    SUSPENDED,
    SUSPENDING,
)
from hai.spec import FIELDS as spec_fields
from hai.spec import JobSpec, spec_from_dict

FIELDS = {to_camel(name): name for name in spec_fields if name != "name"}
"""HaiJob spec field -> job spec field: every JobSpec field in camelCase, as Kubernetes
objects spell them, but the name (the HaiJob's own, from its metadata)."""
RESTART_POLICIES = {"Never": "never", "OnFailure": "on_failure"}
OPERATOR_FIELDS = ("suspend",)
"""HaiJob fields the operator acts on that are not part of the job spec."""
SECRET_ENVIRONMENT = "secretEnvironment"
"""The HaiJob field that names the job's secret variables, each as a pod's
``env[].valueFrom`` does: ``{VAR: {secretKeyRef: {name: SECRET, key: KEY}}}``, a Secret in
the HaiJob's namespace."""

PHASES = {
    QUEUED: "Queued",
    RUNNING: "Running",
    SUSPENDING: "Suspending",
    SUSPENDED: "Suspended",
    SUCCEEDED: "Succeeded",
    FAILED: "Failed",
    STOPPED: "Stopped",
}
PENDING = "Pending"
"""Not yet registered with the scheduler."""
INVALID = "Invalid"
"""The spec was refused (the message says why); fix it and create the HaiJob again."""
FINISHED_PHASES = ("Succeeded", "Failed", "Stopped", INVALID)


def job_name(name: str) -> str:
    """The scheduler's name for a HaiJob: its own, cut to the 63 characters a job may have."""
    return name[:63]


def secret_refs(haijob: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The HaiJob's secret variables: name -> (Secret, key), from :data:`SECRET_ENVIRONMENT`.

    Raises:
        SpecError: one line per entry that is not ``{secretKeyRef: {name, key}}``.
    """
    value = (haijob.get("spec") or {}).get(SECRET_ENVIRONMENT) or {}
    where = f"spec.{SECRET_ENVIRONMENT}"
    if not isinstance(value, dict):
        raise SpecError([f"{where}: must map each variable to {{secretKeyRef: {{name, key}}}}"])
    refs, problems = {}, []
    for name, source in value.items():
        ref = source.get("secretKeyRef") if isinstance(source, dict) else None
        if not isinstance(ref, dict) or not all(
            isinstance(ref.get(k), str) and ref[k] for k in ("name", "key")
        ):
            # Never echo the entry: a value put here by mistake is a secret.
            problems.append(
                f"{where}.{name}: must be {{secretKeyRef: {{name: SECRET, key: KEY}}}}, "
                "naming a Secret in the HaiJob's namespace (values are never put in a HaiJob)"
            )
            continue
        refs[name] = (ref["name"], ref["key"])
    if problems:
        raise SpecError(problems)
    return refs


def job_spec(haijob: dict[str, Any]) -> JobSpec:
    """The job a HaiJob asks for, with the variables that tell the Kubernetes executor where
    its pods go (:data:`~hai.k8s.names.ENV_NAMESPACE`, :data:`~hai.k8s.names.ENV_OWNER`).

    Its ``secret_environment`` names the HaiJob's secret variables with empty values: the
    operator reads them from the Secrets that :func:`secret_refs` names.

    Raises:
        SpecError: one line per bad, missing or unknown field, named ``spec.FIELD``.
    """
    meta = haijob.get("metadata") or {}
    spec = haijob.get("spec")
    if not isinstance(spec, dict):
        raise SpecError(["spec: required, a mapping of the job's fields"])
    back = {v: k for k, v in FIELDS.items()}
    problems: list[str] = []
    data: dict[str, Any] = {"name": job_name(str(meta.get("name", "")))}
    try:
        data["secret_environment"] = dict.fromkeys(secret_refs(haijob), "")
    except SpecError as err:
        problems.extend(err.problems)
    for key, value in spec.items():
        if key in OPERATOR_FIELDS or key == SECRET_ENVIRONMENT:
            continue
        if key not in FIELDS:
            known = ", ".join(sorted([*FIELDS, *OPERATOR_FIELDS]))
            problems.append(f"spec.{key}: unknown field (known: {known})")
        elif key == "restartPolicy":
            if value in RESTART_POLICIES:
                data["restart_policy"] = RESTART_POLICIES[value]
            else:
                problems.append(f"spec.restartPolicy: must be Never or OnFailure, got {value!r}")
        else:
            data[FIELDS[key]] = value
    environment = data.get("environment", {})
    if isinstance(environment, dict):
        data["environment"] = {
            **environment,
            ENV_NAMESPACE: str(meta.get("namespace", "")),
            ENV_OWNER: f"{meta.get('name', '')}/{meta.get('uid', '')}",
        }
    try:
        parsed = spec_from_dict(data)
    except SpecError as err:
        for line in err.problems:
            field, _, rest = line.partition(":")
            problems.append(f"spec.{back[field]}:{rest}" if field in back else line)
    if problems:
        raise SpecError(problems)
    return parsed


def owner_uid(job: dict[str, Any]) -> str | None:
    """The uid of the HaiJob a job (as the server lists it) was submitted for, if any."""
    owner = (job.get("spec") or {}).get("environment", {}).get(ENV_OWNER, "")
    return owner.rsplit("/", 1)[1] if "/" in owner else None


def find_job(jobs: list[dict[str, Any]], uid: str) -> dict[str, Any] | None:
    """The job already submitted for the HaiJob ``uid`` (the operator stopped between
    submitting and recording it), so a retried create does not submit twice."""
    return next((j for j in jobs if owner_uid(j) == uid), None)


def suspend_action(old: Any, new: Any, state: str) -> str | None:
    """``Suspend``, ``Resume`` or None for a change of ``spec.suspend`` (old -> new) while
    the job is in ``state``. Suspending a job that is not queued or running, or resuming
    one that is not suspended, does nothing (it may have finished meanwhile)."""
    if bool(new) == bool(old):
        return None
    if new and state in (QUEUED, RUNNING):
        return "Suspend"
    if not new and state == SUSPENDED:
        return "Resume"
    return None


def ignored_changes(haijob: dict[str, Any], submitted: dict[str, Any]) -> list[str]:
    """The HaiJob's spec fields (``spec.FIELD``) that differ from ``submitted``, the spec of
    the job the scheduler runs (``Describe``'s, secret values masked): edits made after
    submission. Only ``suspend`` may change; the CRD's ``self == oldSelf`` rules refuse the
    rest on Kubernetes 1.25+, older servers (no CEL) accept them, so the operator shows
    them in the status instead of letting the HaiJob and its job differ unseen."""
    try:
        wanted = job_spec(haijob).redacted().to_dict()
    except SpecError as err:  # edited into a spec that no job could have
        return sorted({line.partition(":")[0] for line in err.problems})
    return [f"spec.{camel}" for camel, name in sorted(FIELDS.items())
            if wanted.get(name) != submitted.get(name)]  # fmt: skip


def ignored_message(fields: list[str]) -> str:
    return (
        f"{', '.join(fields)} changed after submission and ignored: the job runs as "
        "submitted (delete and recreate the HaiJob to change it)"
    )


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(
    old: list[dict[str, Any]], kind: str, true: bool, reason: str, message: str, now: str
) -> dict[str, Any]:
    status = "True" if true else "False"
    before = next((c for c in old if c.get("type") == kind), None)
    since = before["lastTransitionTime"] if before and before.get("status") == status else now
    return _without_empty(
        {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastTransitionTime": since,
        }
    )


def _without_empty(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` less its empty strings: optional strings are left out when empty, as
    Kubernetes' own objects do (``omitempty``), never sent as ``""``."""
    return {k: v for k, v in fields.items() if v != ""}


def haijob_status(
    detail: dict[str, Any], old: dict[str, Any] | None, now: str, ignored: list[str] | None = None
) -> dict[str, Any]:
    """The HaiJob status for a job as the server describes it (``Describe``'s answer:
    ``job`` and its ``runs``); ``old`` is the current status (conditions keep their
    transition times), ``now`` an RFC 3339 time. ``ignored`` (:func:`ignored_changes`) leads
    the message while the spec differs from the job's."""
    job, runs = detail["job"], detail.get("runs") or []
    last = runs[-1] if runs else None
    live = last if last is not None and last.get("state") != RUN_DONE else None
    phase = PHASES.get(job["state"], PENDING)
    reason = phase
    conditions = (old or {}).get("conditions") or []
    said = job.get("message") or ""
    status: dict[str, Any] = {
        "phase": phase,
        "jobId": job["id"],
        "chainId": job["id"],
        "assignedNodes": list(live["nodes"]) if live else [],
        "restartCount": job.get("restarts", 0),
        "suspendCount": job.get("suspends", 0),
        "message": "; ".join(m for m in (ignored and ignored_message(ignored), said) if m),
        "conditions": [
            _condition(conditions, "Scheduled", live is not None, reason, said, now),
            _condition(
                conditions,
                "Suspended",
                job["state"] in (SUSPENDING, SUSPENDED),
                reason,
                "",
                now,
            ),
            _condition(conditions, "Finished", phase in FINISHED_PHASES, reason, "", now),
        ],
    }
    if last is not None:
        status.update(runId=last["id"], attempt=last["attempt"], priority=last["priority"])
    if job.get("exit_code") is not None:
        status["exitCode"] = job["exit_code"]
    for key, seconds in (
        ("startTime", job.get("started_at")),
        ("completionTime", job.get("finished_at")),
    ):
        if seconds is not None:
            status[key] = _iso(seconds)
    return _without_empty(status)


def status_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``new`` that differ from ``old``, and None for those ``new`` lacks (a
    merge patch's null removes them): the status patch (empty: no patch)."""
    old = old or {}
    gone = dict.fromkeys(old.keys() - new.keys())
    return gone | {k: v for k, v in new.items() if old.get(k) != v}
