"""The chart as a whole: its values schema, its rendered manifests against committed
expected ones, and gRPC health probes on every gRPC service.

The expected manifests (golden/) are what ``helm template`` would print; after a deliberate
chart change, regenerate them with ``UPDATE_GOLDEN=1`` and read the diff before committing.
tests/hai/test_deploy.py validates the same manifests with kubernetes-validate.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import CHART, REQUIRED, render

jsonschema = pytest.importorskip("jsonschema")

GOLDEN = Path(__file__).parent / "golden"
TEST_VALUES = yaml.safe_load((CHART / "ci" / "test-values.yaml").read_text())
CASES = {
    "test-values": TEST_VALUES,  # everything on
    "defaults": REQUIRED,  # what `helm install --set` of the required values gives
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_chart_renders_the_expected_manifests(case: str) -> None:
    text = render.manifest(render.render_chart(CHART, [CASES[case]]), CHART.name)
    golden = GOLDEN / f"{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.exists(), f"{golden} is missing: run with UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"{case}: differs from {golden} (UPDATE_GOLDEN=1 if meant)"


def test_the_values_schema_is_a_valid_schema_that_the_default_values_meet() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validators.validator_for(schema).check_schema(schema)
    for layer in CASES.values():
        render.check_values(
            CHART, render.merge(yaml.safe_load((CHART / "values.yaml").read_text()), layer)
        )


BAD_VALUES = {
    "a misspelt key": (
        {"fs3": {"mgmtd": {"portt": 1}}},
        r"values: fs3\.mgmtd: .*'portt' was unexpected",
    ),
    "a misspelt top-level key": (
        {"sever": {}},
        r"values: \(the values\): .*'sever' was unexpected",
    ),
    "a port as a string": (
        {"server": {"port": "7700"}},
        r"values: server\.port: '7700' is not of type 'integer'",
    ),
    "a port out of range": (
        {"fs3": {"storage": {"grpcPort": 70000}}},
        r"fs3\.storage\.grpcPort: 70000 is greater",
    ),
    "an unknown pull policy": (
        {"image": {"pullPolicy": "Sometimes"}},
        r"image\.pullPolicy: 'Sometimes' is not one of",
    ),
    "a bad quantity": (
        {"fs3": {"storage": {"size": "100 GB"}}},
        r"fs3\.storage\.size: '100 GB' does not match",
    ),
    "an fs3 secret that is not 32 bytes in base64": (
        {"fs3": {"security": {"secret": "c2hvcnQ="}}},
        r"fs3\.security\.secret: 'c2hvcnQ=' does not match",
    ),
    "a relative host path": ({"agent": {"stateHostPath": "var/lib/hai"}}, r"agent\.stateHostPath"),
    "a float poll interval": (
        {"operator": {"pollIntervalSeconds": 0.5}},
        r"operator\.pollIntervalSeconds: 0\.5",
    ),
}


@pytest.mark.parametrize("case", list(BAD_VALUES), ids=list(BAD_VALUES))
def test_bad_values_fail_the_render_naming_the_key(case: str) -> None:
    layer, message = BAD_VALUES[case]
    with pytest.raises(render.ValuesError, match=message) as caught:
        render.render_chart(CHART, [REQUIRED, layer])
    assert "\n" not in str(caught.value)


def _containers() -> list[tuple[str, dict[str, Any]]]:
    docs = render.documents(render.render_chart(CHART, [TEST_VALUES]))
    return [
        (f"{d['metadata']['name']}/{c['name']}", c)
        for _, d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


def test_every_grpc_container_is_probed_by_grpc_health_on_its_grpc_port() -> None:
    probed = set()
    for name, container in _containers():
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        if "grpc" not in ports:
            continue
        probed.add(name)
        assert container["readinessProbe"]["grpc"] == {"port": ports["grpc"]}, name
        liveness = container["livenessProbe"]
        assert liveness.get("grpc") == {"port": ports["grpc"]} or liveness.get("tcpSocket") == {
            "port": "data"  # storage: the framed data port is no gRPC service
        }, name
    assert probed == {
        "hai-server/server",
        "hai-fs3-mgmtd/mgmtd",
        "hai-fs3-meta/meta",
        "hai-fs3-storage/storage",
    }


FS3_SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="
DISTINCT = {
    "auth": {"adminToken": "hai-admin-token-value"},
    "fs3": {
        "security": {"secret": FS3_SECRET, "existingSecret": ""},  # the chart makes the Secret
        "auth": {"adminToken": "fs3-admin-token-value"},
    },
}


def _pods(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    docs = render.documents(render.render_chart(CHART, [TEST_VALUES, values]))
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]
        for _, d in docs
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")
    }


def test_the_fs3_secret_reaches_exactly_mgmtd_meta_and_storage_as_a_private_file() -> None:
    pods = _pods(DISTINCT)
    holders = {
        name
        for name, pod in pods.items()
        for v in pod.get("volumes", [])
        if v.get("secret", {}).get("secretName") == "hai-fs3-secret"
    }
    assert holders == {"hai-fs3-mgmtd", "hai-fs3-meta", "hai-fs3-storage"}
    for name in holders:
        pod = pods[name]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["fs3-secret"]["secret"]["defaultMode"] == 0o400, name
        assert volumes["fs3-run"]["emptyDir"]["medium"] == "Memory", name  # never on disk
        # fsGroup makes the Secret's file 0440, which fs3 refuses: the init container
        # copies it 0400 into fs3-run, the one place the service reads it from.
        (init,) = pod["initContainers"]
        assert "umask 077 && cp /etc/fs3-secret/secret /run/fs3/secret" in init["command"]
        assert {m["name"]: m["mountPath"] for m in init["volumeMounts"]} == {
            "fs3-secret": "/etc/fs3-secret",
            "fs3-run": "/run/fs3",
        }
        service, *sidecars = pod["containers"]
        env = {e["name"]: e.get("value") for e in service["env"]}
        assert env["FS3_SECURITY__SECRET_FILE"] == "/run/fs3/secret", name
        mounts = {m["name"]: m for m in service["volumeMounts"]}
        assert mounts["fs3-run"] == {"name": "fs3-run", "mountPath": "/run/fs3", "readOnly": True}
        assert "fs3-secret" not in mounts, name
        for sidecar in sidecars:  # mgmtd's exporter reads mgmtd's open routing table
            assert not sidecar.get("volumeMounts"), f"{name}/{sidecar['name']}"


def test_an_existing_fs3_secret_is_mounted_and_the_chart_makes_none() -> None:
    docs = render.documents(render.render_chart(CHART, [TEST_VALUES]))
    assert "hai-fs3-secret" not in {d["metadata"]["name"] for _, d in docs if d["kind"] == "Secret"}
    pods = _pods({})
    for name in ("hai-fs3-mgmtd", "hai-fs3-meta", "hai-fs3-storage"):
        volumes = {v["name"]: v for v in pods[name]["volumes"]}
        assert volumes["fs3-secret"]["secret"]["secretName"] == "fs3-cluster-secret"


def test_the_fs3_admin_token_reaches_only_meta() -> None:
    refs = {
        (name, c["name"], e["name"])
        for name, pod in _pods(DISTINCT).items()
        for c in pod["containers"] + pod.get("initContainers", [])
        for e in c.get("env", [])
        if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "hai-fs3-admin"
    }
    assert refs == {("hai-fs3-meta", "meta", "FS3_ADMIN_TOKEN")}


def test_no_secret_value_is_written_outside_a_secret() -> None:
    docs = render.documents(render.render_chart(CHART, [TEST_VALUES, DISTINCT]))
    secrets = [d for _, d in docs if d["kind"] == "Secret"]
    assert {s["metadata"]["name"] for s in secrets} == {
        "hai-token",
        "hai-fs3-secret",
        "hai-fs3-admin",
    }
    values = (FS3_SECRET, "hai-admin-token-value", "fs3-admin-token-value")
    stored = yaml.safe_dump(secrets)
    assert FS3_SECRET in stored  # as given: base64 already is what data holds
    for _, doc in docs:
        if doc["kind"] != "Secret":
            text = yaml.safe_dump(doc)
            leaked = [v for v in values if v in text]
            assert not leaked, f"{doc['kind']} {doc['metadata']['name']} holds {leaked}"
