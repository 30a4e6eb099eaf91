"""The Kubernetes executor: the Executor conformance suite against an emulated API, and its
pure pieces (pod manifests, pod states as exit codes).

The API server is kmock's in-memory emulator (k8s_emulator.py). It has no admission, no schema
enforcement, no garbage collection and no kubelet: here FakeKubelet runs each
pod's container command as a local process and patches the pod's phase and exit code,
as a kubelet would, resolving ``secretKeyRef`` variables from the emulated Secrets as a
kubelet does. Images, resources and isolation are not exercised; neither is the garbage
collector that deletes a run's Secret with its pod (its owner reference is checked).

Of the suite, the tests that take the ``executor`` fixture run here, except the gRPC
fork regression, which is about how the local executor spawns processes (this executor
spawns none; pods are the kubelet's).
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hai.config import K8sConfig
from hai.errors import StateError
from hai.executor import Launch, RankLaunch
from hai.executor.k8s import KubernetesExecutor
from hai.k8s import pods
from hai.k8s.names import (
    ENV_NAMESPACE,
    ENV_OWNER,
    LABEL_NODE,
    LABEL_RUN,
    POD_FINALIZER,
    master_address,
)
from tests.kube.kubelet import FakeKubelet

from ..waiting import wait_for
from . import test_executor as conformance
from .k8s_emulator import KubernetesApi

# The conformance suite lives in test_executor.py; its tests run here on our fixture.
test_worst_rank_code_and_logs = conformance.test_worst_rank_code_and_logs
test_suspend_seen_by_every_rank_then_ack_then_stop = (
    conformance.test_suspend_seen_by_every_rank_then_ack_then_stop
)
test_sigkill_after_grace = conformance.test_sigkill_after_grace
test_a_missing_command_fails_its_rank_with_a_line_in_the_log = (
    conformance.test_a_missing_command_fails_its_rank_with_a_line_in_the_log
)

NODE = "gpu-0"


def _read(core, name: str, namespace: str = "jobs") -> dict:  # type: ignore[no-untyped-def]
    """The pod as JSON, or {} when it is gone (the client's models reject sparse objects)."""
    import json

    from kubernetes.client.exceptions import ApiException

    try:
        return json.loads(core.read_namespaced_pod(name, namespace, _preload_content=False).data)
    except ApiException as err:
        if err.status == 404:
            return {}
        raise


@pytest.fixture(scope="module")
def kube() -> Iterator[KubernetesApi]:
    pytest.importorskip("kmock", reason="the test extra (kmock, Python 3.11+) is not installed")
    with KubernetesApi() as api:
        yield api


@pytest.fixture
def core(kube: KubernetesApi):  # type: ignore[no-untyped-def]
    from kubernetes import client

    return client.CoreV1Api(kube.api_client())


@pytest.fixture
def executor(kube: KubernetesApi, core) -> Iterator[KubernetesExecutor]:  # type: ignore[no-untyped-def]
    """What the conformance suite runs on: pods in the emulator, run by a fake kubelet."""
    ex = KubernetesExecutor(core, K8sConfig(namespace="jobs", python=sys.executable))
    real_start = ex.start

    def start(launch: Launch) -> None:  # the suite's launches name no node: pin them here
        launch.node = launch.node or NODE
        real_start(launch)

    ex.start = start  # type: ignore[method-assign]
    with FakeKubelet(kube, nodes={NODE}):
        yield ex
        ex.shutdown()


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
    import json

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


def _pod(phase: str, states: list[dict], reason: str = "", age_s: float = 0) -> dict:
    created = (NOW - datetime.timedelta(seconds=age_s)).isoformat()
    return {
        "metadata": {"creationTimestamp": created},
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


def test_a_pod_terminating_long_past_its_grace_is_stuck(tmp_path: Path) -> None:
    meta = {
        "finalizers": [POD_FINALIZER, "other/keep"],
        "deletionTimestamp": (NOW - datetime.timedelta(seconds=100)).isoformat(),
        "deletionGracePeriodSeconds": 30,
    }
    assert pods.is_stuck({"metadata": meta}, NOW, slack_s=60)
    assert not pods.is_stuck({"metadata": meta}, NOW, slack_s=80)
    assert not pods.is_stuck({"metadata": {**meta, "deletionTimestamp": None}}, NOW, 0)
    patch = pods.without_finalizer_patch({"metadata": meta})
    assert patch[-1]["value"] == ["other/keep"]


def test_a_pod_evicted_from_its_node_reports_the_run_lost_and_is_released(
    executor: KubernetesExecutor,
    core,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    launch = conformance.launch(tmp_path, 30, "suspend", [0])
    executor.start(launch)
    name = "hai-j0-r30-n0"
    wait_for(
        f"pod {name} to run",
        lambda: _read(core, name).get("status", {}).get("phase") == "Running",
        timeout=30,
    )
    # The kubelet evicts the pod (disk pressure); then the agent deletes it.
    core.patch_namespaced_pod_status(
        name, "jobs", {"status": {"phase": "Failed", "reason": "Evicted"}}
    )
    assert executor.exit_code(30) == pods.LOST
    executor.forget(30)
    assert _read(core, name) == {}


def test_orphans_of_a_previous_agent_are_removed(core, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = KubernetesExecutor(core, K8sConfig(namespace="jobs", python=sys.executable))
    launch = _launch(tmp_path, run_id=40, secrets=SECRETS)
    launch.node = "gpu-9"
    first.start(launch)
    # The agent restarts: its new executor knows nothing of run 40 and removes its pod,
    # and the pod's Secret with it.
    second = KubernetesExecutor(core, K8sConfig(namespace="jobs", python=sys.executable))
    assert second.remove_orphans("gpu-9") == ["hai-j3-r40-n0"]
    assert second.remove_orphans("gpu-9") == []
    assert _read_secret(core, "hai-j3-r40-n0-env") == {}


def test_a_run_starts_once_and_a_pod_left_by_a_restarted_agent_is_adopted(
    core,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    ex = KubernetesExecutor(core, K8sConfig(namespace="jobs", python=sys.executable))
    launch = _launch(tmp_path, run_id=50)
    ex.start(launch)
    with pytest.raises(StateError, match="already started"):
        ex.start(launch)
    other = KubernetesExecutor(core, K8sConfig(namespace="jobs", python=sys.executable))
    other.start(launch)  # the API answers 409: the pod is there already, and is this run's
    assert other.exit_code(50) is None
    ex.shutdown()


class _RefusingApi:
    """A CoreV1Api whose every create is refused, as a quota or an admission webhook does."""

    def __init__(self) -> None:
        from kubernetes import client

        self.api_client = client.ApiClient()

    def create_namespaced_service(self, namespace: str, body: dict, **_: object) -> None:
        from kubernetes.client.exceptions import ApiException

        raise ApiException(status=403, reason="Forbidden")

    create_namespaced_pod = create_namespaced_service


def test_a_refused_pod_fails_its_ranks_with_a_line_in_the_log(tmp_path: Path) -> None:
    ex = KubernetesExecutor(_RefusingApi(), K8sConfig())
    ex.start(_launch(tmp_path, run_id=60))
    assert ex.exit_code(60) == pods.CANNOT_START
    assert (
        "Kubernetes refused pod hai-j3-r60-n0: 403 Forbidden"
        in (tmp_path / "logs" / "rank-0.log").read_text()
    )


RUN_TOKEN = "7.run-token-mac"
PASSWORD = "hunter2-db-password"
SECRETS = {"HAI_RUN_TOKEN": RUN_TOKEN, "DB_PASSWORD": PASSWORD}


def test_secret_variables_leave_the_pod_spec_for_a_secret_labelled_as_the_pod(
    tmp_path: Path,
) -> None:
    import base64
    import json

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


def _read_secret(core, name: str) -> dict:  # type: ignore[no-untyped-def]
    """The Secret as JSON, or {} when it is gone."""
    import json

    from kubernetes.client.exceptions import ApiException

    try:
        return json.loads(core.read_namespaced_secret(name, "jobs", _preload_content=False).data)
    except ApiException as err:
        if err.status == 404:
            return {}
        raise


SHOW = "import os; print(os.environ['DB_PASSWORD'], os.environ['HAI_RUN_TOKEN'], flush=True)"


def test_ranks_see_their_secrets_through_a_secret_owned_by_the_pod_and_gone_with_the_run(
    executor: KubernetesExecutor,
    core,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    launch = _launch(tmp_path, run_id=70, env={"HAI_MASTER_WAIT_S": "0"}, secrets=SECRETS)
    launch.node = NODE
    for rank in launch.ranks:
        rank.argv = [sys.executable, "-c", SHOW]
    executor.start(launch)
    assert conformance.wait_exit(executor, 70) == 0
    # The kubelet resolved both from the Secret: the ranks got the values.
    assert (tmp_path / "logs" / "rank-0.log").read_text() == f"{PASSWORD} {RUN_TOKEN}\n"
    pod = _read(core, "hai-j3-r70-n0")
    assert RUN_TOKEN not in str(pod) and PASSWORD not in str(pod)
    secret = _read_secret(core, "hai-j3-r70-n0-env")
    assert sorted(secret["data"]) == ["DB_PASSWORD", "HAI_RUN_TOKEN"]
    # Owned by the pod, which exists for every job (a HaiJob only for some).
    assert secret["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": "hai-j3-r70-n0", "uid": pod["metadata"]["uid"]}
    ]
    executor.forget(70)
    assert _read_secret(core, "hai-j3-r70-n0-env") == {}


def test_a_pod_whose_secret_is_missing_cannot_start_its_ranks(
    kube: KubernetesApi,
    core,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """The emulated kubelet holds a pod whose Secret is gone, as a real one does; after the
    start timeout the executor fails the run's ranks."""
    ex = KubernetesExecutor(
        core, K8sConfig(namespace="jobs", python=sys.executable, start_timeout_s=0.01)
    )
    launch = _launch(tmp_path, run_id=80, secrets=SECRETS)
    launch.node = NODE
    ex.start(launch)
    core.delete_namespaced_secret("hai-j3-r80-n0-env", "jobs")
    with FakeKubelet(kube, nodes={NODE}):
        assert conformance.wait_exit(ex, 80) == pods.CANNOT_START
    assert "CreateContainerConfigError" in (tmp_path / "logs" / "rank-0.log").read_text()
    ex.forget(80)
