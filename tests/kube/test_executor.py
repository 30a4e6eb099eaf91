"""The Kubernetes executor against a real kube-apiserver, with the agents' credentials.

The executor calls the API as the chart's agent service account (``hai-agent``, its
ClusterRole as deploy/helm/hai/templates/rbac.yaml makes it); the test's own hand (making
namespaces, HaiJobs, deleting things behind the agent's back) is the admin's. No kubelet
exists: FakeKubelet (tests/kube/kubelet.py) plays its part through the API, running each
pod's command as a local process, writing the pod's status and confirming deletions. Each
test has its own namespace and node name, so a kubelet never sees another test's pods.

The Executor conformance suite (tests/hai/test_executor.py) runs here too, except the gRPC
fork regression, which is about how the local executor spawns processes (this one spawns
none; pods are the kubelet's).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hai.config import K8sConfig
from hai.errors import StateError
from hai.executor import Launch
from hai.executor.k8s import KubernetesExecutor
from hai.k8s.names import ENV_NAMESPACE, ENV_OWNER, GROUP, PLURAL, POD_FINALIZER, VERSION
from hai.k8s.pods import CANNOT_START, LOST
from tests.hai import test_executor as conformance
from tests.kube.conftest import RELEASE_NAMESPACE, Kube
from tests.kube.kubelet import FakeKubelet
from tests.waiting import wait_for

pytestmark = pytest.mark.kube

# The conformance suite, on the ``executor`` fixture below.
test_worst_rank_code_and_logs = conformance.test_worst_rank_code_and_logs
test_suspend_seen_by_every_rank_then_ack_then_stop = (
    conformance.test_suspend_seen_by_every_rank_then_ack_then_stop
)
test_sigkill_after_grace = conformance.test_sigkill_after_grace
test_a_missing_command_fails_its_rank_with_a_line_in_the_log = (
    conformance.test_a_missing_command_fails_its_rank_with_a_line_in_the_log
)

AGENT = "hai-agent"
"""The chart's agent service account (release ``hai``) in the release's namespace."""
RUN_TOKEN = "7.run-token-mac"
PASSWORD = "hunter2-db-password"
SECRETS = {"HAI_RUN_TOKEN": RUN_TOKEN, "DB_PASSWORD": PASSWORD}


# ---- clients, namespaces, objects as JSON -------------------------------------------------
def core_api(kube: Kube, account: str | None = AGENT) -> Any:
    """A CoreV1Api as service account ``account`` of the release's namespace (None: admin)."""
    from kubernetes import client
    from kubernetes import config as kube_config

    if account is None:
        return client.CoreV1Api(kube.api_client())
    configuration = client.Configuration()
    kube_config.load_kube_config(
        str(kube.kubeconfig_for(account)), client_configuration=configuration
    )
    return client.CoreV1Api(client.ApiClient(configuration))


@pytest.fixture
def admin(kube: Kube) -> Any:
    return core_api(kube, None)


def _json(call: Any, *args: Any) -> dict[str, Any]:
    """The object as JSON, or {} when it is gone."""
    from kubernetes.client.exceptions import ApiException

    try:
        return json.loads(call(*args, _preload_content=False).data)
    except ApiException as err:
        if err.status == 404:
            return {}
        raise


def read_pod(admin: Any, name: str, namespace: str) -> dict[str, Any]:
    return _json(admin.read_namespaced_pod, name, namespace)


def read_secret(admin: Any, name: str, namespace: str) -> dict[str, Any]:
    return _json(admin.read_namespaced_secret, name, namespace)


def executor_for(
    kube: Kube, namespace: str, account: str = AGENT, **config: Any
) -> KubernetesExecutor:
    """An executor calling the API as ``account``, its pods by default in ``namespace``."""
    return KubernetesExecutor(
        core_api(kube, account), K8sConfig(namespace=namespace, python=sys.executable, **config)
    )


@pytest.fixture
def executor(kube: Kube, namespace: str) -> Iterator[KubernetesExecutor]:
    """What the conformance suite runs on: pods on node ``namespace``, run by a kubelet that
    the test plays through the API."""
    ex = executor_for(kube, namespace)
    real_start = ex.start

    def start(launch: Launch) -> None:  # the suite's launches name no node: pin them here
        launch.node = launch.node or namespace
        real_start(launch)

    ex.start = start  # type: ignore[method-assign]
    with FakeKubelet(kube, nodes={namespace}):
        yield ex
        ex.shutdown()


def launch(
    tmp_path: Path,
    node: str,
    run_id: int,
    mode: str = "suspend",
    env: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
) -> Launch:
    """The suite's job (``mode`` suspend: it runs until stopped) as one rank on ``node``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    plan = conformance.launch(tmp_path, run_id, mode, [0])
    plan.node = node
    plan.job_id = 3
    for rank in plan.ranks:
        rank.env.update({**(env or {}), **(secrets or {})})
    plan.secret_names = frozenset(secrets or {})
    return plan


def rank_log(plan: Launch) -> str:
    path = plan.ranks[0].log_path
    return path.read_text() if path.exists() else ""


def wait_running(admin: Any, name: str, namespace: str) -> None:
    wait_for(
        f"pod {name} to run",
        lambda: read_pod(admin, name, namespace).get("status", {}).get("phase") == "Running",
    )


# ---- refusals: exit code 127 with the API's answer, never "lost" ------------------------
def test_a_pod_refused_for_a_missing_namespace_fails_its_ranks_with_127(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """Before, the 404 was taken for "created", then for "lost", and the job was requeued as
    node loss without end. No kubelet is needed: the pod is never made."""
    ex = executor_for(kube, namespace)
    plan = launch(tmp_path, namespace, 10, env={ENV_NAMESPACE: "no-such-namespace"})
    ex.start(plan)
    assert ex.exit_code(10) == CANNOT_START
    assert "Kubernetes refused Service no-such-namespace/hai-r10: 404 Not Found" in rank_log(plan)
    assert 'namespaces "no-such-namespace" not found' in rank_log(plan)
    ex.forget(10)
    assert ex.run_ids() == []


def test_a_haijob_owned_pod_needs_the_agents_right_to_its_owners_finalizers(
    kube: Kube, namespace: str, admin: Any, tmp_path: Path
) -> None:
    """OwnerReferencesPermissionEnforcement is on: an owner reference that blocks its owner's
    deletion needs ``update`` on ``haijobs/finalizers``. The chart's agent role has it; a
    copy of the role without it is refused with 403, and the run ends 127 at once."""
    from kubernetes import client

    custom = client.CustomObjectsApi(kube.api_client())
    haijob = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HaiJob",
        "metadata": {"name": "owner"},
        "spec": {"entrypoint": "python train.py"},
    }
    reply = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, haijob, _preload_content=False
    )
    uid = json.loads(reply.data)["metadata"]["uid"]
    owned = {ENV_NAMESPACE: namespace, ENV_OWNER: f"owner/{uid}"}
    with FakeKubelet(kube, nodes={namespace}):
        ex = executor_for(kube, namespace)
        ex.start(launch(tmp_path / "a", namespace, 20, env=owned))
        assert ex.exit_code(20) is None
        owners = read_pod(admin, "hai-j3-r20-n0", namespace)["metadata"]["ownerReferences"]
        assert [(o["kind"], o["uid"], o["blockOwnerDeletion"]) for o in owners] == [
            ("HaiJob", uid, True)
        ]
        ex.shutdown()
    account = _agent_without_finalizers(kube)
    plan = launch(tmp_path / "b", namespace, 21, env=owned)
    refused = executor_for(kube, namespace, account=account)
    refused.start(plan)
    assert refused.exit_code(21) == CANNOT_START
    assert "Kubernetes refused Service" in rank_log(plan)
    assert "403 Forbidden" in rank_log(plan) and "blockOwnerDeletion" in rank_log(plan)
    refused.forget(21)


def _agent_without_finalizers(kube: Kube) -> str:
    """A service account bound to a copy of the chart's agent ClusterRole without the rule
    on ``haijobs/finalizers``; returns its name (made once per session)."""
    from kubernetes import client

    name = "agent-without-finalizers"
    rbac = client.RbacAuthorizationV1Api(kube.api_client())
    role = json.loads(rbac.read_cluster_role(AGENT, _preload_content=False).data)
    rules = [r for r in role["rules"] if "haijobs/finalizers" not in r.get("resources", [])]
    assert len(rules) == len(role["rules"]) - 1, "the chart's agent role lost its rule"
    subject = {"kind": "ServiceAccount", "name": name, "namespace": RELEASE_NAMESPACE}
    ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}
    kube.plane.apply(
        [
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": name, "namespace": RELEASE_NAMESPACE}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": name}, "rules": rules},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": name}, "roleRef": ref, "subjects": [subject]},
        ]
    )  # fmt: skip
    return name


# ---- pods deleted: by the agent (SIGTERM/SIGKILL), by someone else (lost) ---------------
STUBBORN = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(60)"
)


@pytest.mark.parametrize(("stubborn", "code"), [(False, -15), (True, -9)])
def test_a_deleted_pod_stays_readable_until_its_exit_code_is_recorded(
    kube: Kube, namespace: str, admin: Any, tmp_path: Path, stubborn: bool, code: int
) -> None:
    """The kubelet (played through the API) stops the container, reports its code and
    confirms the deletion; the pod's finalizer keeps it until the executor has read the
    code (SIGTERM -15, SIGKILL after the grace period -9), then it goes."""
    ex = executor_for(kube, namespace)
    plan = launch(tmp_path, namespace, 30)
    if stubborn:
        plan.ranks[0].argv = [sys.executable, "-c", STUBBORN]
    name = "hai-j3-r30-n0"
    with FakeKubelet(kube, nodes={namespace}):
        ex.start(plan)
        if stubborn:  # its SIGTERM handler is set
            wait_for("the rank to start", lambda: "ready" in rank_log(plan))
        wait_running(admin, name, namespace)
        ex.stop(30, grace_s=1)
        confirmed = wait_for(
            "the kubelet to confirm the deletion",
            lambda: (
                (p := read_pod(admin, name, namespace))
                and p["metadata"].get("deletionGracePeriodSeconds") == 0
                and p
            ),
        )
        assert confirmed["metadata"]["finalizers"] == [POD_FINALIZER]  # type: ignore[index]
        assert ex.exit_code(30) == code
        wait_for(f"pod {name} to go", lambda: read_pod(admin, name, namespace) == {})
        ex.forget(30)


def test_a_pod_deleted_by_someone_else_is_lost_with_its_node_and_requeued(
    kube: Kube, namespace: str, admin: Any, tmp_path: Path
) -> None:
    """docs/kubernetes.md: "pod deleted by someone else: lost, requeued" (code -9, which the
    scheduler requeues without counting a failure). Before, the kubelet's SIGTERM made it
    -15, a failed job. The kubelet is played through the API."""
    ex = executor_for(kube, namespace)
    plan = launch(tmp_path, namespace, 40)
    name = "hai-j3-r40-n0"
    with FakeKubelet(kube, nodes={namespace}):
        ex.start(plan)
        wait_running(admin, name, namespace)
        admin.delete_namespaced_pod(name, namespace, grace_period_seconds=5)
        assert conformance.wait_exit(ex, 40) == LOST
        assert "deleted by someone other than its agent" in rank_log(plan)
        wait_for(f"pod {name} to go", lambda: read_pod(admin, name, namespace) == {})
        ex.forget(40)


def test_a_pod_evicted_from_its_node_reports_the_run_lost_and_is_released(
    kube: Kube, namespace: str, admin: Any, tmp_path: Path
) -> None:
    """The kubelet (played through the API) evicts the pod; then the agent deletes it."""
    ex = executor_for(kube, namespace)
    name = "hai-j3-r50-n0"
    with FakeKubelet(kube, nodes={namespace}):
        ex.start(launch(tmp_path, namespace, 50))
        wait_running(admin, name, namespace)
        admin.patch_namespaced_pod_status(
            name, namespace, {"status": {"phase": "Failed", "reason": "Evicted"}}
        )
        assert ex.exit_code(50) == LOST
        ex.forget(50)
        wait_for(f"pod {name} to go", lambda: read_pod(admin, name, namespace) == {})


# ---- restarted agents: adoption, orphans, label selectors ---------------------------------
def test_a_run_starts_once_and_a_pod_left_by_a_restarted_agent_is_adopted(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """The API answers the second create with 409: the pod is there already, this run's.
    No kubelet: the pod stays Pending, which is "still running"."""
    plan = launch(tmp_path, namespace, 60)
    ex = executor_for(kube, namespace)
    ex.start(plan)
    with pytest.raises(StateError, match="already started"):
        ex.start(plan)
    other = executor_for(kube, namespace)
    other.start(plan)
    assert other.exit_code(60) is None
    assert rank_log(plan) == ""


def test_a_restarted_agent_removes_only_its_own_nodes_orphans(
    kube: Kube, namespace: str, admin: Any, tmp_path: Path
) -> None:
    """The server honours the label selector: the new agent on node A lists A's pods only,
    deletes the orphan and its Secret, and node B's pod stays. The pod goes once the
    kubelet (played through the API) confirms its deletion."""
    node_a, node_b = f"{namespace}-a", f"{namespace}-b"
    with FakeKubelet(kube, nodes={node_a, node_b}):
        first = executor_for(kube, namespace)
        first.start(launch(tmp_path / "a", node_a, 70, secrets=SECRETS))
        first.start(launch(tmp_path / "b", node_b, 71, secrets=SECRETS))
        second = executor_for(kube, namespace)
        assert second.remove_orphans(node_a) == ["hai-j3-r70-n0"]
        assert second.remove_orphans(node_a) == []
        assert read_secret(admin, "hai-j3-r70-n0-env", namespace) == {}
        wait_for("the orphan to go", lambda: read_pod(admin, "hai-j3-r70-n0", namespace) == {})
        assert read_pod(admin, "hai-j3-r71-n0", namespace)["spec"]["nodeName"] == node_b
        first.shutdown()


# ---- the run's Secret ---------------------------------------------------------------------
SHOW = "import os; print(os.environ['DB_PASSWORD'], os.environ['HAI_RUN_TOKEN'], flush=True)"


def test_ranks_see_their_secrets_through_a_secret_owned_by_the_pod_and_deleted_by_forget(
    kube: Kube, namespace: str, admin: Any, tmp_path: Path
) -> None:
    """The kubelet (played through the API) resolves the ``secretKeyRef`` variables from the
    run's Secret; ``forget`` deletes it itself (the audit log says who), before the garbage
    collector would."""
    ex = executor_for(kube, namespace)
    plan = launch(tmp_path, namespace, 80, env={"HAI_MASTER_WAIT_S": "0"}, secrets=SECRETS)
    plan.ranks[0].argv = [sys.executable, "-c", SHOW]
    name = "hai-j3-r80-n0"
    with FakeKubelet(kube, nodes={namespace}):
        ex.start(plan)
        assert conformance.wait_exit(ex, 80) == 0
    assert rank_log(plan) == f"{PASSWORD} {RUN_TOKEN}\n"
    pod = read_pod(admin, name, namespace)
    assert RUN_TOKEN not in json.dumps(pod) and PASSWORD not in json.dumps(pod)
    secret = read_secret(admin, f"{name}-env", namespace)
    assert sorted(secret["data"]) == ["DB_PASSWORD", "HAI_RUN_TOKEN"]
    assert secret["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": pod["metadata"]["uid"]}
    ]
    ex.forget(80)
    assert read_secret(admin, f"{name}-env", namespace) == {}
    assert read_pod(admin, name, namespace) == {}  # ended: the API needs no kubelet's word
    deletes = [
        (e["user"]["username"], e["responseStatus"]["code"])
        for e in kube.plane.audit_events()
        if e["verb"] == "delete"
        and e["stage"] == "ResponseComplete"
        and e["objectRef"].get("name") == f"{name}-env"
    ]
    assert deletes == [(f"system:serviceaccount:{RELEASE_NAMESPACE}:{AGENT}", 200)]


def test_the_garbage_collector_deletes_a_runs_secret_with_its_pod(
    kube: Kube, namespace: str, admin: Any, tmp_path: Path
) -> None:
    """The controller-manager's garbage collector follows the Secret's owner reference: the
    pod gone (force-deleted by the admin, its finalizer dropped; no kubelet is needed for a
    pod that never ran), the Secret goes."""
    ex = executor_for(kube, namespace)
    ex.start(launch(tmp_path, namespace, 90, secrets=SECRETS))
    name = "hai-j3-r90-n0"
    assert read_secret(admin, f"{name}-env", namespace)["metadata"]["ownerReferences"]
    admin.patch_namespaced_pod(name, namespace, {"metadata": {"finalizers": None}})
    admin.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    assert read_pod(admin, name, namespace) == {}
    wait_for(
        "the garbage collector to delete the Secret",
        lambda: read_secret(admin, f"{name}-env", namespace) == {},
    )


def test_a_pod_whose_secret_is_missing_cannot_start_its_ranks(
    kube: Kube, namespace: str, admin: Any, tmp_path: Path
) -> None:
    """The kubelet (played through the API) holds a pod whose Secret is gone in
    CreateContainerConfigError, as a real one does; after ``k8s.start_timeout_s`` the
    executor fails the run's ranks with 127."""
    ex = executor_for(kube, namespace, start_timeout_s=1)
    plan = launch(tmp_path, namespace, 100, secrets=SECRETS)
    ex.start(plan)
    admin.delete_namespaced_secret("hai-j3-r100-n0-env", namespace)
    with FakeKubelet(kube, nodes={namespace}):
        assert conformance.wait_exit(ex, 100) == CANNOT_START
        assert "CreateContainerConfigError" in rank_log(plan)
        ex.forget(100)
        # Nothing ever ran: the kubelet confirms the deletion at once and the pod goes.
        wait_for("the pod to go", lambda: read_pod(admin, "hai-j3-r100-n0", namespace) == {})


# ---- through a hai server and an agent: what the scheduler makes of the codes --------------
class Platform:
    """A hai server (SQLite) and one agent on node ``node`` driving the executor as the
    chart's agent service account; ``call`` is the server's admin."""

    def __init__(self, kube: Kube, root: Path, port: int, node: str) -> None:
        from hai.agent import Agent
        from hai.config import load_config
        from hai.rpc import ApiClient
        from hai.server import Server

        config = load_config(
            env={},
            overrides={
                "server": {"port": port},
                "scheduler": {"pass_interval_s": 0.1, "node_lease_s": 10, "kill_grace_s": 1},
                "agent": {"heartbeat_s": 0.1, "kill_grace_s": 1, "health_interval_s": 3600},
                "policy": {"min_run_s": 0},
            },
        )
        self.server = Server(config, root)
        self.server.start()
        address = f"127.0.0.1:{port}"
        self.client = ApiClient(address, (root / "token").read_text().strip())
        self.call = self.client.call
        agent_client = ApiClient(address, self.call("AddNode", name=node)["token"])
        executor = executor_for(kube, node)
        self.agent = Agent(node, agent_client, executor, root, config.agent, gpus=1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.agent.run, args=(self.stop,), daemon=True)
        self.thread.start()
        self._closing = [agent_client, self.client]

    def runs(self, job_id: int) -> list[dict[str, Any]]:
        return self.call("Describe", job_id=job_id)["runs"]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for client in self._closing:
            client.close()
        self.server.stop()


@pytest.fixture
def platform(
    kube: Kube,
    namespace: str,
    tmp_path: Path,
    free_port: Callable[[], int],
    without_health_checks: None,
) -> Iterator[Platform]:
    """A server and an agent on node ``namespace``, whose kubelet the test plays through
    the API."""
    with FakeKubelet(kube, nodes={namespace}):
        p = Platform(kube, tmp_path / "hai", free_port(), namespace)
        try:
            yield p
        finally:
            p.close()


def _submit(platform: Platform, argv: list[str], **environment: str) -> int:
    spec = {
        "name": "k8s",
        "entrypoint": argv[0],
        "arguments": argv[1:],
        "nodes": 1,
        "gpus_per_node": 1,
        "environment": {"HAI_MASTER_WAIT_S": "0", **environment},
    }
    return int(platform.call("Submit", spec=spec)["id"])


def test_a_job_whose_pods_are_refused_fails_once_instead_of_requeueing_forever(
    platform: Platform,
) -> None:
    """Before, the 404 of a missing namespace was read as a lost node: 9 runs in 40 s and
    never an end. Now the run fails with 127 and the restart policy (never) ends the job.
    The kubelet is played through the API (it has nothing to run here)."""
    job_id = _submit(platform, ["true"], **{ENV_NAMESPACE: "no-such-namespace"})
    state = lambda: platform.call("Describe", job_id=job_id)["job"]["state"]  # noqa: E731
    wait_for("the job to fail", lambda: state() == "failed", timeout=60)
    assert [r["exit_code"] for r in platform.runs(job_id)] == [CANNOT_START]


def test_a_job_whose_pod_is_deleted_by_someone_else_is_requeued_not_failed(
    kube: Kube, platform: Platform, namespace: str, admin: Any
) -> None:
    """The admin deletes the running pod; the kubelet (played through the API) stops it. The
    run ends lost (-9) and the job runs again; before, -15 failed it. The chart's agent role
    was enough for all the agent did (no 403 this session)."""
    job_id = _submit(platform, [sys.executable, "-c", "import time; time.sleep(60)"])
    run = wait_for("the job's first run", lambda: platform.runs(job_id))[0]  # type: ignore[index]
    name = f"hai-j{job_id}-r{run['id']}-n0"
    wait_running(admin, name, namespace)
    admin.delete_namespaced_pod(name, namespace, grace_period_seconds=5)
    wait_for("a second run", lambda: len(platform.runs(job_id)) == 2, timeout=60)
    assert platform.runs(job_id)[0]["exit_code"] == LOST
    assert platform.call("Describe", job_id=job_id)["job"]["state"] != "failed"
    platform.call("Stop", job_id=job_id)
    wait_for(
        "the job to stop",
        lambda: platform.call("Describe", job_id=job_id)["job"]["state"] == "stopped",
    )
    agent = f"system:serviceaccount:{RELEASE_NAMESPACE}:{AGENT} "
    assert [line for line in kube.forbidden() if line.startswith(agent)] == []
