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

from tests.deploy.chart import CHART, render

jsonschema = pytest.importorskip("jsonschema")

GOLDEN = Path(__file__).parent / "golden"
TEST_VALUES = yaml.safe_load((CHART / "ci" / "test-values.yaml").read_text())
CASES = {
    "test-values": TEST_VALUES,  # everything on
    "defaults": {"auth": {"adminToken": "t"}},  # what `helm install --set` of the token gives
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
        render.render_chart(CHART, [{"auth": {"adminToken": "t"}}, layer])
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
