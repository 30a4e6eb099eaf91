"""The HaiJob CustomResourceDefinition, its ``spec`` schema generated from the job spec.

``deploy/helm/hai/crds/haijobs.yaml`` is this module's output, so a HaiJob accepts what
``hai submit`` accepts, with the same defaults. After changing :class:`~hai.spec.JobSpec`
or this module, write it again (``tests/hai/test_k8s_crd.py`` fails while they differ)::

    python -m hai.k8s.crd > deploy/helm/hai/crds/haijobs.yaml

Kubernetes takes a structural subset of OpenAPI 3.0 (JSON Schema draft 4 with extensions),
so pydantic's schema is converted: titles go, ``X | None`` becomes X with ``nullable``, an
integer-or-string union becomes ``x-kubernetes-int-or-string``, and draft 2020's numeric
``exclusiveMinimum`` becomes draft 4's flag. What only Kubernetes needs is added here: the
rule that keeps a submitted job's fields fixed, and size bounds on strings, lists and maps
(the API server refuses a CEL rule whose worst-case cost it cannot bound).
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from hai.k8s.haijob import FIELDS, INVALID, PENDING, PHASES, RESTART_POLICIES, SECRET_ENVIRONMENT
from hai.k8s.names import GROUP, KIND, PLURAL, VERSION
from hai.spec import json_schema

HEADER = """\
# The HaiJob resource: a training job for the HAI platform's scheduler (docs/kubernetes.md).
# Generated from hai.spec.JobSpec by hai.k8s.crd; edit those, then write this file again:
#   python -m hai.k8s.crd > deploy/helm/hai/crds/haijobs.yaml
# spec is the job spec of `hai submit` in camelCase; status is written by the operator
# (`hai operator`) from the scheduler's record. Helm installs files in crds/ as they are,
# before the templates, and never deletes or upgrades them.
"""

FIXED = {
    "rule": "self == oldSelf",
    "message": "fixed once the job is submitted; delete and recreate the HaiJob",
}
"""Every job field's rule: the job was submitted as created; only ``suspend`` may change."""

BOUNDS: dict[str, dict[str, Any]] = {
    "entrypoint": {"maxLength": 4096},
    "arguments": {"maxItems": 1024, "items": {"maxLength": 4096}},
    "image": {"maxLength": 1024},
    "group": {"maxLength": 63},
    "environment": {"maxProperties": 256, "additionalProperties": {"maxLength": 32768}},
}
"""Sizes the API server needs to cost :data:`FIXED` (job spec field -> schema additions)."""

_NAME = {"type": "string", "minLength": 1, "maxLength": 253}
SECRET_REFERENCES: dict[str, Any] = {
    "type": "object",
    "description": "Environment variables of every rank whose values are in Secrets of the "
    "HaiJob's namespace, never in the HaiJob: VAR: {secretKeyRef: {name, key}}.",
    "maxProperties": 256,
    "additionalProperties": {
        "type": "object",
        "required": ["secretKeyRef"],
        "properties": {
            "secretKeyRef": {
                "type": "object",
                "required": ["name", "key"],
                "properties": {"name": _NAME, "key": _NAME},
            }
        },
    },
}
"""The HaiJob's ``secretEnvironment``: references, not the job spec's values (see
:data:`hai.k8s.haijob.SECRET_ENVIRONMENT`)."""

OPERATOR_PROPERTIES: dict[str, dict[str, Any]] = {
    "suspend": {
        "type": "boolean",
        "default": False,
        "description": "true suspends the job (it checkpoints first) and holds it; "
        "false resumes it.",
    },
}
"""HaiJob spec fields the operator acts on that are not part of the job spec."""


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """One JSON Schema node as a Kubernetes structural schema node (see the module doc).

    Raises:
        ValueError: the node uses something with no structural form (a reference to a
            nested model, a union other than with null or of integer and string).
    """
    if "$ref" in schema:
        raise ValueError(f"nested models have no structural form here: {schema['$ref']}")
    out = {k: v for k, v in schema.items() if k not in ("title", "anyOf")}
    if out.get("default", ...) is None:
        del out["default"]  # unset is absent on Kubernetes, not null
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        if len(options) < len(schema["anyOf"]):
            out["nullable"] = True
        if len(options) == 1:
            out = {**structural(options[0]), **out}
        elif {o.get("type") for o in options} == {"integer", "string"}:
            out["x-kubernetes-int-or-string"] = True
            out["enum"] = [value for o in options for value in o.get("enum", [])]
        else:
            raise ValueError(f"a union has no structural form here: {schema['anyOf']}")
    bound = out.get("exclusiveMinimum")
    if isinstance(bound, int | float) and not isinstance(bound, bool):
        out.update(minimum=out["exclusiveMinimum"], exclusiveMinimum=True)
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = structural(out[key])
    return out


FIRST = ("type", "nullable", "x-kubernetes-int-or-string", "description")
"""Keys a reader looks for first in a property of the written file."""


def _ordered(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        **{k: schema[k] for k in FIRST if k in schema},
        **{k: v for k, v in schema.items() if k not in FIRST},
    }


def _bounded(schema: dict[str, Any], bounds: dict[str, Any]) -> dict[str, Any]:
    out = dict(schema)
    for key, value in bounds.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) else value
    return out


def spec_schema() -> dict[str, Any]:
    """The HaiJob's ``spec``: every job spec field but the name (the HaiJob's own), in
    camelCase, restart policies spelt as pods spell theirs, plus the operator's fields."""
    job = json_schema()
    policies = {ours: theirs for theirs, ours in RESTART_POLICIES.items()}
    properties: dict[str, Any] = {}
    for camel, name in FIELDS.items():
        field = _bounded(structural(job["properties"][name]), BOUNDS.get(name, {}))
        if camel == SECRET_ENVIRONMENT:
            field = SECRET_REFERENCES
        if name == "restart_policy":
            field["enum"] = [policies[p] for p in field["enum"]]
            field["default"] = policies[field["default"]]
        properties[camel] = {**_ordered(field), "x-kubernetes-validations": [FIXED]}
    return {
        "type": "object",
        "description": "The job spec of `hai submit` in camelCase. Only suspend may change "
        "once the HaiJob exists; the rest is the submitted job's and fixed.",
        "required": [camel for camel, name in FIELDS.items() if name in job["required"]],
        "properties": {**properties, **OPERATOR_PROPERTIES},
    }


def status_schema() -> dict[str, Any]:
    """The HaiJob's ``status``, as :func:`hai.k8s.haijob.haijob_status` writes it."""
    integer, string = {"type": "integer"}, {"type": "string"}
    time = {"type": "string", "format": "date-time"}
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string", "enum": ["Scheduled", "Suspended", "Finished"]},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": string,
            "message": string,
            "lastTransitionTime": time,
        },
    }
    return {
        "type": "object",
        "properties": {
            "phase": {"type": "string", "enum": [PENDING, *PHASES.values(), INVALID]},
            "jobId": {
                **integer,
                "description": "The scheduler's job id; a job is a chain of runs.",
            },
            "chainId": integer,
            "runId": {**integer, "description": "The latest run of the chain."},
            "attempt": {
                **integer,
                "description": "The latest run's place in the chain (HAI_RESTART_COUNT).",
            },
            "priority": integer,
            "assignedNodes": {"type": "array", "items": string},
            "restartCount": {**integer, "description": "Runs restarted after a failure."},
            "suspendCount": {
                **integer,
                "description": "Runs suspended or requeued (preemption, node loss, hai suspend).",
            },
            "exitCode": integer,
            "message": string,
            "startTime": time,
            "completionTime": time,
            "conditions": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
                "items": condition,
            },
        },
    }


PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Job",
        "type": "integer",
        "description": "The scheduler's job (chain) id, for hai describe/logs.",
        "jsonPath": ".status.jobId",
    },
    {"name": "Nodes", "type": "integer", "jsonPath": ".spec.nodes"},
    {
        "name": "GPUs",
        "type": "integer",
        "description": "GPUs per node.",
        "jsonPath": ".spec.gpusPerNode",
    },
    {
        "name": "Priority",
        "type": "integer",
        "description": "The level the latest run got (AUTO resolves to one).",
        "jsonPath": ".status.priority",
    },
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restartCount"},
    {"name": "Assigned", "type": "string", "priority": 1, "jsonPath": ".status.assignedNodes"},
    {"name": "Message", "type": "string", "priority": 1, "jsonPath": ".status.message"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def haijob_crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition, as ``kubectl apply`` takes it."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "fireflyer"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "plural": PLURAL,
                "singular": KIND.lower(),
                "kind": KIND,
                "listKind": f"{KIND}List",
                "shortNames": ["hj"],
                "categories": ["hai"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A training job run by the HAI platform's "
                            "scheduler, one pod per node.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema(),
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True  # the schema repeats small pieces; the file spells each one out


def render() -> str:
    """The CRD file's text: :data:`HEADER`, then the CRD as YAML."""
    return HEADER + yaml.dump(haijob_crd(), Dumper=_Dumper, sort_keys=False, width=100)


if __name__ == "__main__":
    sys.stdout.write(render())
