"""The HaiJob operator's pure rules, its login, and its command's wiring. The operator at
work, against a real kube-apiserver, is in tests/kube/test_operator.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hai.errors import ConfigError, SpecError
from hai.k8s import haijob
from hai.k8s.names import ENV_NAMESPACE, ENV_OWNER, GROUP, VERSION

HAIJOB = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "HaiJob",
    "metadata": {"name": "train-7b", "namespace": "team-a", "uid": "u-1"},
    "spec": {
        "entrypoint": "python train.py",
        "arguments": ["--lr", "3e-4"],
        "image": "fireflyer:1",
        "nodes": 2,
        "gpusPerNode": 8,
        "priority": "HIGH",
        "group": "h800",
        "environment": {"SEED": "1"},
        "maxRunTime": 3600,
        "restartPolicy": "OnFailure",
        "maxRestarts": 2,
        "suspendGracePeriod": 30,
        "suspend": False,
    },
}


def test_a_haijob_becomes_the_job_spec_hai_submit_would_send() -> None:
    spec = haijob.job_spec(HAIJOB)
    assert (spec.name, spec.entrypoint, spec.arguments) == (
        "train-7b",
        "python train.py",
        ["--lr", "3e-4"],
    )
    assert (spec.nodes, spec.gpus_per_node, spec.priority, spec.group) == (2, 8, 30, "h800")
    assert (spec.restart_policy, spec.max_restarts, spec.max_run_time) == ("on_failure", 2, 3600)
    assert spec.suspend_grace_period == 30 and spec.image == "fireflyer:1"
    # Where its pods go: the HaiJob's namespace, owned by the HaiJob.
    assert spec.environment == {"SEED": "1", ENV_NAMESPACE: "team-a", ENV_OWNER: "train-7b/u-1"}


def test_secret_variables_are_named_by_reference_and_never_held_in_the_haijob() -> None:
    ref = {"secretKeyRef": {"name": "db", "key": "password"}}
    with_ref = {**HAIJOB, "spec": {**HAIJOB["spec"], "secretEnvironment": {"DB_PASSWORD": ref}}}
    assert haijob.secret_refs(with_ref) == {"DB_PASSWORD": ("db", "password")}
    # The operator fills the value in from the Secret; the spec only names the variable.
    assert haijob.job_spec(with_ref).secret_environment == {"DB_PASSWORD": ""}
    by_value = {**HAIJOB, "spec": {**HAIJOB["spec"], "secretEnvironment": {"DB_PASSWORD": "pw1"}}}
    with pytest.raises(SpecError) as err:
        haijob.job_spec(by_value)
    assert err.value.problems == [
        "spec.secretEnvironment.DB_PASSWORD: must be {secretKeyRef: {name: SECRET, key: KEY}}, "
        "naming a Secret in the HaiJob's namespace (values are never put in a HaiJob)"
    ]
    both = {**with_ref, "spec": {**with_ref["spec"], "environment": {"DB_PASSWORD": "x"}}}
    with pytest.raises(SpecError, match="both set DB_PASSWORD"):
        haijob.job_spec(both)


def test_every_bad_field_is_reported_under_its_haijob_name() -> None:
    bad = {**HAIJOB, "spec": {"gpusPerNode": -1, "priority": 7, "restartPolicy": "Always", "x": 1}}
    with pytest.raises(SpecError) as err:
        haijob.job_spec(bad)
    assert sorted(err.value.problems) == [
        "spec.entrypoint: required field is missing",
        "spec.gpusPerNode: input should be greater than or equal to 0, got -1",
        "spec.priority: must be one of 50, 40, 30, 20, 10 or AUTO, got 7",
        "spec.restartPolicy: must be Never or OnFailure, got 'Always'",
        "spec.x: unknown field (known: arguments, entrypoint, environment, gpusPerNode, group, "
        "image, maxRestarts, maxRunTime, nodes, priority, restartPolicy, secretEnvironment, "
        "suspend, suspendGracePeriod)",
    ]


def test_a_retried_create_finds_the_job_it_already_submitted() -> None:
    jobs = [
        {"id": 1, "spec": {"environment": {}}},
        {"id": 2, "spec": {"environment": {ENV_OWNER: "train-7b/u-1"}}},
    ]
    assert haijob.find_job(jobs, "u-1")["id"] == 2
    assert haijob.find_job(jobs, "u-2") is None


@pytest.mark.parametrize(
    ("old", "new", "state", "action"),
    [
        (None, True, "running", "Suspend"),
        (False, True, "queued", "Suspend"),
        (True, False, "suspended", "Resume"),
        (True, False, "running", None),  # resumed some other way already
        (False, True, "succeeded", None),  # nothing left to suspend
        (True, True, "running", None),
    ],
)
def test_suspend_field_changes(old: object, new: object, state: str, action: str | None) -> None:
    assert haijob.suspend_action(old, new, state) == action


def test_status_mirrors_the_scheduler_and_keeps_transition_times() -> None:
    job = {
        "id": 4,
        "state": "running",
        "restarts": 1,
        "suspends": 2,
        "message": "",
        "exit_code": None,
        "started_at": 0.0,
        "finished_at": None,
        "priority": -1,
    }
    runs = [
        {"id": 8, "attempt": 0, "priority": 20, "nodes": ["a"], "state": "done"},
        {"id": 9, "attempt": 1, "priority": 20, "nodes": ["a", "b"], "state": "running"},
    ]
    first = haijob.haijob_status({"job": job, "runs": runs}, None, "T1")
    assert first["phase"] == "Running"
    assert (first["jobId"], first["chainId"], first["runId"], first["attempt"]) == (4, 4, 9, 1)
    assert first["assignedNodes"] == ["a", "b"] and first["priority"] == 20
    assert (first["restartCount"], first["suspendCount"]) == (1, 2)
    assert first["startTime"] == "1970-01-01T00:00:00Z" and "completionTime" not in first
    scheduled = {c["type"]: c for c in first["conditions"]}["Scheduled"]
    assert (scheduled["status"], scheduled["lastTransitionTime"]) == ("True", "T1")
    # Nothing changed: nothing to patch. The job suspends: only what changed is patched.
    assert (
        haijob.status_changes(first, haijob.haijob_status({"job": job, "runs": runs}, first, "T2"))
        == {}
    )
    held = {**job, "state": "suspended"}
    runs[-1]["state"] = "done"
    later = haijob.haijob_status({"job": held, "runs": runs}, first, "T3")
    changes = haijob.status_changes(first, later)
    assert changes["phase"] == "Suspended" and changes["assignedNodes"] == []
    conditions = {c["type"]: c for c in later["conditions"]}
    assert conditions["Suspended"]["lastTransitionTime"] == "T3"
    assert conditions["Finished"]["lastTransitionTime"] == "T1"  # still False since T1


def test_a_fixed_field_edited_after_submission_is_named_in_the_status() -> None:
    submitted = haijob.job_spec(HAIJOB).redacted().to_dict()  # as Describe shows it
    assert haijob.ignored_changes(HAIJOB, submitted) == []
    suspended = {**HAIJOB, "spec": {**HAIJOB["spec"], "suspend": True}}
    assert haijob.ignored_changes(suspended, submitted) == []  # the one field that may change
    edited = {**HAIJOB, "spec": {**HAIJOB["spec"], "entrypoint": "python x.py", "nodes": 3}}
    assert haijob.ignored_changes(edited, submitted) == ["spec.entrypoint", "spec.nodes"]
    broken = {**HAIJOB, "spec": {**HAIJOB["spec"], "environment": {"1X": "y"}}}
    assert haijob.ignored_changes(broken, submitted) == ["spec.environment"]
    job = {"id": 4, "state": "queued", "message": "waiting for 2 nodes"}
    status = haijob.haijob_status({"job": job}, None, "T1", ["spec.nodes"])
    assert status["message"] == (
        "spec.nodes changed after submission and ignored: the job runs as submitted "
        "(delete and recreate the HaiJob to change it); waiting for 2 nodes"
    )
    assert haijob.haijob_status({"job": job}, None, "T1")["message"] == "waiting for 2 nodes"
    # An empty message is left out (as Kubernetes' omitempty does), and removed when gone.
    quiet = haijob.haijob_status({"job": {**job, "message": None}}, None, "T1")
    assert "message" not in quiet
    assert all("message" not in c for c in quiet["conditions"])
    assert haijob.status_changes(status, quiet)["message"] is None


def test_kopf_logs_in_with_the_clients_credentials(tmp_path: Path) -> None:
    pytest.importorskip("kopf", reason="kopf (Python 3.11+) is not installed")
    from hai.config import K8sConfig
    from hai.k8s.kube import client_configuration
    from hai.k8s.operator import connection_info

    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("t-1\n")
    ca.write_text("PEM")
    config = K8sConfig(api_url="https://kube:6443", token_file=str(token), ca_file=str(ca))
    configuration = client_configuration(config)
    info = connection_info(configuration)
    assert (info.server, info.scheme, info.token) == ("https://kube:6443", "Bearer", "t-1")
    assert (info.ca_path, info.insecure) == (str(ca), False)
    token.write_text("t-2\n")  # rotated: read again at the next login
    assert connection_info(configuration).token == "t-2"
    with pytest.raises(ConfigError, match="k8s.token_file and k8s.ca_file need k8s.api_url"):
        client_configuration(K8sConfig(ca_file=str(ca)))


def test_hai_operator_forwards_its_options(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("kopf", reason="kopf (Python 3.11+) is not installed")
    from click.testing import CliRunner

    from hai.cli import main
    from hai.k8s import kube
    from hai.k8s import operator as haijob_operator

    seen: dict = {}
    monkeypatch.setattr(kube, "core_api", lambda config: "core")
    monkeypatch.setattr(
        haijob_operator,
        "run",
        lambda call, core, config, namespaces, liveness: seen.update(
            core=core, namespaces=namespaces, liveness=liveness, poll=config.poll_interval_s
        ),
    )
    monkeypatch.setenv("HAI_TOKEN", "t")
    monkeypatch.setenv("HAI_K8S__POLL_INTERVAL_S", "2.5")
    args = ["operator", "--server", "h:1", "-n", "a", "-n", "b", "--liveness", "http://x/healthz"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert seen == {
        "core": "core",
        "namespaces": ("a", "b"),
        "liveness": "http://x/healthz",
        "poll": 2.5,
    }


def test_hai_operator_without_credentials_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("kopf", reason="kopf (Python 3.11+) is not installed")
    from click.testing import CliRunner

    from hai.cli import main

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HAI_TOKEN", "t")
    result = CliRunner().invoke(main, ["operator", "--server", "h:1"])
    assert result.exit_code != 0
    assert result.output.count("\n") == 1, result.output
    assert "no Kubernetes credentials: not in a pod and no usable kubeconfig" in result.output
