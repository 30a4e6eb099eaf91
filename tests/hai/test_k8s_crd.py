"""The HaiJob CRD generated from JobSpec: the committed file is the generator's output, and
a HaiJob defaulted by the API server becomes the same job as one without the defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hai.k8s import crd, haijob
from hai.spec import JobSpec

COMMITTED = (
    Path(__file__).resolve().parents[2] / "deploy" / "helm" / "hai" / "crds" / "haijobs.yaml"
)


def test_the_committed_crd_is_the_generated_one() -> None:
    assert COMMITTED.read_text() == crd.render(), (
        "deploy/helm/hai/crds/haijobs.yaml is stale: "
        "python -m hai.k8s.crd > deploy/helm/hai/crds/haijobs.yaml"
    )


def _spec_properties() -> dict[str, Any]:
    return crd.haijob_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][
        "spec"
    ]["properties"]


def test_the_api_servers_defaults_are_the_job_specs() -> None:
    defaults = {k: p["default"] for k, p in _spec_properties().items() if "default" in p}
    assert {"nodes", "gpusPerNode", "priority", "maxRestarts", "restartPolicy"} <= set(defaults)
    meta = {"name": "train", "namespace": "ns", "uid": "u"}
    bare = haijob.job_spec({"metadata": meta, "spec": {"entrypoint": "python train.py"}})
    defaulted = haijob.job_spec(
        {"metadata": meta, "spec": {"entrypoint": "python train.py", **defaults}}
    )
    assert defaulted == bare
    assert bare.max_restarts == JobSpec("train", "x").max_restarts == 3


def test_optional_fields_are_nullable_and_unions_have_their_kubernetes_forms() -> None:
    props = _spec_properties()
    assert props["image"]["nullable"] and "default" not in props["image"]
    assert props["maxRunTime"].items() >= {"minimum": 0, "exclusiveMinimum": True}.items()
    assert props["priority"]["x-kubernetes-int-or-string"] and "AUTO" in props["priority"]["enum"]
    assert "anyOf" not in str(props) and "title" not in str(props)


def test_a_schema_with_no_structural_form_is_refused() -> None:
    with pytest.raises(ValueError, match="union"):
        crd.structural({"anyOf": [{"type": "integer"}, {"type": "array"}]})
    with pytest.raises(ValueError, match="nested"):
        crd.structural({"$ref": "#/$defs/Other"})
