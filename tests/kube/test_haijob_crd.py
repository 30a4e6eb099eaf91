"""The HaiJob CRD on a real kube-apiserver: it is Established, the samples are accepted, bad
specs are refused with 422 naming the field, defaults are filled, unknown fields pruned,
and spec and status are written apart (the status subresource)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from hai.k8s import crd
from hai.k8s.names import GROUP, PLURAL, VERSION
from tests.kube.conftest import Kube

pytestmark = pytest.mark.kube

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"
NAMESPACE = "default"


def _custom(kube: Kube) -> Any:
    from kubernetes import client

    return client.CustomObjectsApi(kube.api_client())


def _haijob(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HaiJob",
        "metadata": {"name": name},
        "spec": {"entrypoint": "python train.py", **spec},
    }


def _create(kube: Kube, body: dict[str, Any]) -> dict[str, Any]:
    reply = _custom(kube).create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, body, _preload_content=False
    )
    return json.loads(reply.data)


def _refusal(kube: Kube, body: dict[str, Any]) -> tuple[int, str]:
    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as caught:
        _create(kube, body)
    return caught.value.status, json.loads(caught.value.body)["message"]


def _delete(kube: Kube, name: str) -> None:
    _custom(kube).delete_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, name, _preload_content=False
    )


def test_the_samples_are_accepted_and_listed_with_their_columns(kube: Kube) -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for sample in yaml.safe_load_all(path.read_text()):
            if sample and sample.get("kind") == "HaiJob":
                sample["metadata"].pop("namespace", None)
                created = _create(kube, sample)
                assert created["spec"]["entrypoint"] == sample["spec"]["entrypoint"], path
                _delete(kube, sample["metadata"]["name"])
    _create(kube, _haijob("columns", nodes=2))
    try:
        table = kube.plane.kubectl("get", "haijobs", "-n", NAMESPACE, "columns")
        assert table.split()[:6] == ["NAME", "PHASE", "JOB", "NODES", "GPUS", "PRIORITY"]
    finally:
        _delete(kube, "columns")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"nodes": 0}, "spec.nodes"),
        ({"gpusPerNode": "eight"}, "spec.gpusPerNode"),
        ({"priority": "URGENT"}, "spec.priority"),
        ({"restartPolicy": "Always"}, "spec.restartPolicy"),
        ({"maxRunTime": 0}, "spec.maxRunTime"),
        ({"secretEnvironment": {"DB_PASSWORD": "plain-text"}}, "spec.secretEnvironment"),
        ({"entrypoint": None}, "spec.entrypoint"),
    ],
)
def test_a_bad_spec_is_refused_with_422_naming_the_field(
    kube: Kube, spec: dict[str, Any], field: str
) -> None:
    body = _haijob("bad", **spec)
    body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
    status, message = _refusal(kube, body)
    assert status == 422, message
    assert field in message, message


def test_defaults_are_filled_and_unknown_fields_pruned(kube: Kube) -> None:
    created = _create(kube, _haijob("defaults", bogus=1))
    try:
        spec = created["spec"]
        schema = crd.haijob_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        fields = schema["properties"]["spec"]["properties"]
        defaults = {name: field["default"] for name, field in fields.items() if "default" in field}
        assert {"nodes", "gpusPerNode", "restartPolicy", "maxRestarts"} <= set(defaults)
        assert {name: spec.get(name) for name in defaults} == defaults
        assert spec["gpusPerNode"] == 8
        assert "bogus" not in spec
    finally:
        _delete(kube, "defaults")


def test_an_empty_string_is_kept(kube: Kube) -> None:
    """A real v1.20 server keeps "" in a custom resource (a build whose JSON library turned
    it into null refused this HaiJob with 422)."""
    created = _create(kube, _haijob("empty", environment={"A": ""}))
    try:
        assert created["spec"]["environment"] == {"A": ""}
    finally:
        _delete(kube, "empty")


def test_spec_and_status_are_written_apart_and_stale_writes_conflict(kube: Kube) -> None:
    from kubernetes.client.exceptions import ApiException

    custom = _custom(kube)
    created = _create(kube, _haijob("split"))
    try:
        # A write of the main resource ignores status; the status subresource ignores spec.
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, "split", {"status": {"phase": "Running"}},
            _preload_content=False,
        )  # fmt: skip
        custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, NAMESPACE, PLURAL, "split",
            {"spec": {"nodes": 5}, "status": {"phase": "Queued"}}, _preload_content=False,
        )  # fmt: skip
        now = json.loads(
            custom.get_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, "split", _preload_content=False
            ).data
        )
        assert now["status"]["phase"] == "Queued" and now["spec"]["nodes"] == 1
        # A write carrying an old resourceVersion is refused with 409.
        stale = {**created, "spec": {**created["spec"], "suspend": True}}
        with pytest.raises(ApiException) as caught:
            custom.replace_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, "split", stale, _preload_content=False
            )
        assert caught.value.status == 409
    finally:
        _delete(kube, "split")
