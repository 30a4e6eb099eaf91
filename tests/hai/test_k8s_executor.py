"""The Kubernetes executor's pure pieces: pod manifests, the run's Secret, pod states as exit
codes. The executor itself runs against a real kube-apiserver in tests/kube/test_executor.py
(the conformance suite included).
"""

from __future__ import annotations

import base64
import datetime
import json
from pathlib import Path

import pytest

from hai.config import K8sConfig
from hai.executor import Launch, RankLaunch
from hai.k8s import pods
from hai.k8s.names import (
    ENV_NAMESPACE,
    ENV_OWNER,
    LABEL_NODE,
    LABEL_RUN,
    POD_FINALIZER,
    master_address,
)


def _launch(
    tmp_path: Path,
    run_id: int = 7,
    node_rank: int = 0,
    env: dict | None = None,
    image: str | None = None,
    gpus: int = 0,
    secrets: dict | None = None,
):
    base = {
        "WORLD_SIZE": "4",
        "MASTER_ADDR": "10.0.0.1",
        "MASTER_PORT": "29511",
        "NODE_RANK": str(node_rank),
        **(env or {}),
        **(secrets or {}),
    }
    ranks = [
        RankLaunch(
            r,
            ["python", "train.py"],
            {**base, "RANK": str(node_rank * 2 + r), "LOCAL_RANK": str(r)},
            tmp_path / "logs" / f"rank-{node_rank * 2 + r}.log",
        )
        for r in range(2)
    ]
    return Launch(
        run_id,
        tmp_path / "control",
        ranks,
        3,
        1,
        "gpu-1",
        node_rank,
        2,
        image=image,
        gpus=gpus,
        secret_names=frozenset(secrets or {}),
    )


def test_pod_manifest_pins_the_node_asks_for_gpus_and_carries_the_rank_contract(
    tmp_path: Path,
) -> None:
    owner = {ENV_NAMESPACE: "team-a", ENV_OWNER: "big/uid-1"}
    launch = _launch(tmp_path, env=owner, image="train:1", gpus=8)
    placement = pods.placement_for(launch, K8sConfig())
    pod = pods.pod_manifest(launch, placement, tmp_path / "control" / "launch.py")
    assert pod["metadata"]["name"] == "hai-j3-r7-n0"
    assert pod["metadata"]["namespace"] == "team-a"
    assert pod["metadata"]["finalizers"] == [POD_FINALIZER]
    assert pod["metadata"]["ownerReferences"][0] | {} == {
        "apiVersion": "hai.fireflyer.io/v1",
        "kind": "HaiJob",
        "name": "big",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert pod["metadata"]["labels"][LABEL_RUN] == "7"
    assert pod["metadata"]["labels"][LABEL_NODE] == "gpu-1"
    spec_ = pod["spec"]
    assert spec_["nodeName"] == "gpu-1" and spec_["restartPolicy"] == "Never"
    assert (spec_["hostname"], spec_["subdomain"]) == ("n0", "hai-r7")
    container = spec_["containers"][0]
    assert container["image"] == "train:1"
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "8"}}
    env = {e["name"]: e["value"] for e in container["env"]}
    # Shared variables are the container's; MASTER_ADDR is rank 0's pod via the service.
    assert env["WORLD_SIZE"] == "4" and env["NODE_RANK"] == "0"
    assert env["MASTER_ADDR"] == master_address(7, "team-a") == "n0.hai-r7.team-a.svc"
    per_rank = json.loads(env["HAI_LAUNCH"])
    assert [r["env"] for r in per_rank] == [
        {"RANK": "0", "LOCAL_RANK": "0"},
        {"RANK": "1", "LOCAL_RANK": "1"},
    ]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {str(tmp_path / "control"), str(tmp_path / "logs"), "/dev/shm"} <= mounts
    service = pods.service_manifest(launch, placement)
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {LABEL_RUN: "7"}
    assert service["spec"]["ports"][0]["port"] == 29511


def test_a_job_submitted_without_a_haijob_runs_in_the_default_namespace_unowned(
    tmp_path: Path,
) -> None:
    placement = pods.placement_for(_launch(tmp_path), K8sConfig(namespace="hai-jobs"))
    pod = pods.pod_manifest(_launch(tmp_path), placement, tmp_path / "launch.py")
    assert pod["metadata"]["namespace"] == "hai-jobs"
    assert "ownerReferences" not in pod["metadata"]
    assert "resources" not in pod["spec"]["containers"][0]  # no GPUs asked, none requested


NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.timezone.utc)


def _pod(
    phase: str, states: list[dict], reason: str = "", age_s: float = 0, deleted: bool = False
) -> dict:
    created = (NOW - datetime.timedelta(seconds=age_s)).isoformat()
    return {
        "metadata": {"creationTimestamp": created}
        | ({"deletionTimestamp": NOW.isoformat()} if deleted else {}),
        "status": {
            "phase": phase,
            "reason": reason,
            "containerStatuses": [{"name": "ranks", "state": s} for s in states],
        },
    }


@pytest.mark.parametrize(
    ("pod", "code"),
    [
        (_pod("Pending", [{"waiting": {"reason": "ContainerCreating"}}]), None),
        (_pod("Running", [{"running": {}}]), None),
        (_pod("Succeeded", [{"terminated": {"exitCode": 0}}]), 0),
        (_pod("Failed", [{"terminated": {"exitCode": 3}}]), 3),
        (_pod("Failed", [{"terminated": {"exitCode": 143}}]), -15),  # SIGTERM
        (_pod("Failed", [{"terminated": {"exitCode": 137}}]), -9),  # SIGKILL / OOM
        # Node trouble requeues the job (-9 is the scheduler's "lost with its node").
        (_pod("Failed", [{"terminated": {"exitCode": 2}}], reason="Evicted"), pods.LOST),
        (_pod("Failed", [], reason="OutOfnvidia.com/gpu"), pods.LOST),
        (None, pods.LOST),
        # An image that cannot be pulled fails the rank, but only after the start timeout.
        (_pod("Pending", [{"waiting": {"reason": "ImagePullBackOff"}}], age_s=10), None),
        (_pod("Pending", [{"waiting": {"reason": "ErrImagePull"}}], age_s=400), 127),
    ],
)
def test_pod_states_map_to_the_platforms_exit_codes(pod: dict | None, code: int | None) -> None:
    assert pods.pod_outcome(pod, NOW, start_timeout_s=300).exit_code == code


SIGTERMED = [{"terminated": {"exitCode": 143}}]


@pytest.mark.parametrize(
    ("pod", "by_agent", "code"),
    [
        (_pod("Failed", SIGTERMED, deleted=True), True, -15),  # the agent stopped it
        # Deleted by someone else: lost with its node once the kubelet stopped its ranks.
        (_pod("Running", [{"running": {}}], deleted=True), False, None),
        (_pod("Failed", SIGTERMED, deleted=True), False, pods.LOST),
        (_pod("Succeeded", [{"terminated": {"exitCode": 0}}], deleted=True), False, pods.LOST),
        (_pod("Pending", [{"waiting": {"reason": "ContainerCreating"}}], deleted=True), False,
         pods.LOST),
    ],
)  # fmt: skip
def test_a_deleted_pods_code_depends_on_who_deleted_it(
    pod: dict, by_agent: bool, code: int | None
) -> None:
    outcome = pods.pod_outcome(pod, NOW, start_timeout_s=300, deleted_by_agent=by_agent)
    assert outcome.exit_code == code


def test_a_pod_terminating_long_past_its_grace_is_stuck(tmp_path: Path) -> None:
    meta = {
        "finalizers": [POD_FINALIZER, "other/keep"],
        "deletionTimestamp": (NOW - datetime.timedelta(seconds=100)).isoformat(),
        "deletionGracePeriodSeconds": 30,
    }
    # 100 s past the end of its grace period (the deletionTimestamp), whatever the grace.
    assert pods.is_stuck({"metadata": meta}, NOW, slack_s=90)
    assert not pods.is_stuck({"metadata": meta}, NOW, slack_s=110)
    assert not pods.is_stuck({"metadata": {**meta, "deletionTimestamp": None}}, NOW, 0)
    patch = pods.without_finalizer_patch({"metadata": meta})
    assert patch[-1]["value"] == ["other/keep"]


RUN_TOKEN = "7.run-token-mac"
PASSWORD = "hunter2-db-password"
SECRETS = {"HAI_RUN_TOKEN": RUN_TOKEN, "DB_PASSWORD": PASSWORD}


def test_secret_variables_leave_the_pod_spec_for_a_secret_labelled_as_the_pod(
    tmp_path: Path,
) -> None:
    launch = _launch(tmp_path, env={"VISIBLE": "plain"}, secrets=SECRETS)
    placement = pods.placement_for(launch, K8sConfig(namespace="jobs"))
    pod = pods.pod_manifest(launch, placement, tmp_path / "launch.py")
    text = json.dumps(pod)
    assert RUN_TOKEN not in text and PASSWORD not in text  # nor in HAI_LAUNCH
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["VISIBLE"] == {"name": "VISIBLE", "value": "plain"}
    for name in SECRETS:
        ref = {"name": "hai-j3-r7-n0-env", "key": name}
        assert env[name] == {"name": name, "valueFrom": {"secretKeyRef": ref}}
    secret = pods.secret_manifest(launch, placement)
    assert secret["metadata"]["name"] == "hai-j3-r7-n0-env"
    assert secret["metadata"]["namespace"] == "jobs"
    assert secret["metadata"]["labels"] == pod["metadata"]["labels"]
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == SECRETS
