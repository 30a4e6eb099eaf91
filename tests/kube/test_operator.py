"""The HaiJob operator on a real kube-apiserver (tests/kube/control_plane.py), logged in as
the chart's service accounts: ``hai operator`` runs as its own process, the agents drive
the Kubernetes executor in this one, and a hai server (SQLite) decides.

No kubelet exists: FakeKubelet (tests/kube/kubelet.py) plays its part through the API,
running each pod's command as a local process, writing the pod's status and confirming
deletions. Each test has a namespace of its own; the control plane is the session's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hai.k8s.names import GROUP, LABEL_JOB, PLURAL, VERSION
from tests.kube.conftest import RELEASE_NAMESPACE, Kube
from tests.waiting import wait_for

pytestmark = pytest.mark.kube

PASSWORD = "pw-from-a-secret"
JOB = """
import hashlib, os, sys, time
from hai import client
print("rank", os.environ["RANK"], "of", os.environ["WORLD_SIZE"],
      "restart", os.environ["HAI_RESTART_COUNT"], "master", os.environ["MASTER_ADDR"], flush=True)
print("password", hashlib.sha256(os.environ["DB_PASSWORD"].encode()).hexdigest(), flush=True)
while not client.receive_suspend_command():
    time.sleep(0.05)
print("checkpointed", flush=True)
client.go_suspend()
time.sleep(60)
"""
SERVICE_ACCOUNTS = ("hai-operator", "hai-agent")


def haijob_body(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HaiJob",
        "metadata": {"name": name},
        # No DNS for the run's Service here: ranks need not wait for MASTER_ADDR.
        "spec": {"environment": {"HAI_MASTER_WAIT_S": "0"}, **spec},
    }


class Operator:
    """``hai operator`` as a process of its own, watching one namespace."""

    def __init__(self, namespace: str, env: dict[str, str], log: Path) -> None:
        self.args = [sys.executable, "-m", "hai", "operator", "-n", namespace]
        self.env = env
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def end(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def __enter__(self) -> Operator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()
        print(self.output()[-20000:])  # shown by pytest when the test fails


class Platform:
    """A hai server, agents on the test's Kubernetes nodes, the operator, and the API as
    the test's own hand (admin) in the test's namespace."""

    def __init__(self, kube: Kube, root: Path, port: int, namespace: str) -> None:
        from kubernetes import client

        from hai.config import load_config
        from hai.rpc import ApiClient
        from hai.server import Server

        self.kube = kube
        self.namespace = namespace
        self.config = load_config(
            env={},
            overrides={
                "server": {"port": port},
                "scheduler": {"pass_interval_s": 0.1, "node_lease_s": 10, "kill_grace_s": 1},
                "agent": {"heartbeat_s": 0.1, "kill_grace_s": 1, "health_interval_s": 3600},
                "policy": {"min_run_s": 0},
                "k8s": {"python": sys.executable, "poll_interval_s": 0.2, "namespace": namespace},
            },
        )
        self.root = root
        self.state = root / "hai"
        self.server = Server(self.config, self.state)
        self.server.start()
        self.address = f"127.0.0.1:{port}"
        self.token = (self.state / "token").read_text().strip()
        self.client = ApiClient(self.address, self.token)
        self.api = kube.api_client()
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self._agents: list[tuple[threading.Thread, threading.Event, Any]] = []

    def operator(self, login: dict[str, str] | None = None) -> Operator:
        """``hai operator`` as the chart's operator account: with its kubeconfig, or with
        the variables ``login``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HAI_", "KUBE"))}
        env |= {"HAI_SERVER": self.address, "HAI_TOKEN": self.token,
                "HAI_K8S__POLL_INTERVAL_S": "0.3"}  # fmt: skip
        if login is None:
            login = {"KUBECONFIG": str(self.kube.kubeconfig_for("hai-operator"))}
        return Operator(self.namespace, env | login, self.root / "operator.log")

    def add_node(self, name: str) -> None:
        """A Node object with one allocatable GPU, as its kubelet and device plugin would
        report it, and the node's agent (the Kubernetes executor as the agents' account)."""
        from kubernetes import client

        from hai.agent import Agent
        from hai.executor.k8s import KubernetesExecutor
        from hai.rpc import ApiClient

        self.core.create_node({"metadata": {"name": name}}, _preload_content=False)
        status = {"status": {"capacity": {"nvidia.com/gpu": "1"},
                             "allocatable": {"nvidia.com/gpu": "1"}}}  # fmt: skip
        self.core.patch_node_status(name, status, _preload_content=False)
        agent_api = client.ApiClient(_configuration(self.kube.kubeconfig_for("hai-agent")))
        executor = KubernetesExecutor(client.CoreV1Api(agent_api), self.config.k8s)
        token = self.client.call("AddNode", name=name)["token"]
        node_client = ApiClient(self.address, token)
        # Agents share the server's state folder, as on a cluster with a shared file system.
        agent = Agent(name, node_client, executor, self.state, self.config.agent, gpus=1)
        stop = threading.Event()
        thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        thread.start()
        self._agents.append((thread, stop, node_client))

    def close(self) -> None:
        for thread, stop, node_client in self._agents:
            stop.set()
            thread.join(timeout=10)
            node_client.close()
        self.client.close()
        self.server.stop()

    # ---- the API as JSON ----------------------------------------------------------------
    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        reply = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body, _preload_content=False
        )
        return json.loads(reply.data)

    def haijob(self, name: str) -> dict[str, Any]:
        """The HaiJob ``name``; {} once it is gone."""
        from kubernetes.client.exceptions import ApiException

        try:
            reply = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, _preload_content=False
            )
        except ApiException as err:
            if err.status == 404:
                return {}
            raise
        return json.loads(reply.data)

    def status(self, name: str) -> dict[str, Any]:
        return self.haijob(name).get("status") or {}

    def phase(self, name: str) -> str:
        return self.status(name).get("phase", "")

    def patch_spec(self, name: str, **fields: object) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": fields},
            _preload_content=False,
        )  # fmt: skip

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, _preload_content=False
        )

    def pods(self, selector: str = "") -> list[dict[str, Any]]:
        reply = self.core.list_namespaced_pod(
            self.namespace, label_selector=selector, _preload_content=False
        )
        return json.loads(reply.data)["items"]

    def job_pods(self, job_id: int) -> list[dict[str, Any]]:
        return self.pods(f"{LABEL_JOB}={job_id}")

    def running_pods(self, job_id: int, run_id: int, count: int) -> list[dict[str, Any]]:
        pods = [
            p
            for p in self.job_pods(job_id)
            if p["metadata"]["name"].startswith(f"hai-j{job_id}-r{run_id}-")
            and (p.get("status") or {}).get("phase") == "Running"
        ]
        return pods if len(pods) == count else []

    def jobs_of(self, uid: str) -> list[dict[str, Any]]:
        """The scheduler's jobs submitted for the HaiJob ``uid``."""
        from hai.k8s.haijob import owner_uid

        jobs = self.client.call("List", everyone=True, all=True)
        return [j for j in jobs if owner_uid(j) == uid]


def _configuration(kubeconfig: Path) -> Any:
    from kubernetes import client
    from kubernetes import config as kube_config

    configuration = client.Configuration()
    kube_config.load_kube_config(str(kubeconfig), client_configuration=configuration)
    return configuration


def forbidden(kube: Kube) -> list[str]:
    """403s answered to the operator's and the agents' accounts this session."""
    prefixes = tuple(f"system:serviceaccount:{RELEASE_NAMESPACE}:{a} " for a in SERVICE_ACCOUNTS)
    return [line for line in kube.forbidden() if line.startswith(prefixes)]


def watches_ended(platform: Platform) -> int:
    """How many of the operator's watches of HaiJobs in the test's namespace have ended."""
    user = f"system:serviceaccount:{RELEASE_NAMESPACE}:hai-operator"
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{platform.namespace}/{PLURAL}?"
    return sum(
        1
        for e in platform.kube.plane.audit_events()
        if e.get("stage") == "ResponseComplete"
        and e.get("verb") == "watch"
        and e["user"]["username"] == user
        and e.get("requestURI", "").startswith(path)
    )


@pytest.fixture
def platform(
    kube: Kube,
    namespace: str,
    tmp_path: Path,
    free_port: Callable[[], int],
    without_health_checks: None,
) -> Iterator[Platform]:
    pytest.importorskip("kopf", reason="kopf (Python 3.11+) is not installed")
    p = Platform(kube, tmp_path, free_port(), namespace)
    try:
        yield p
    finally:
        p.close()


def test_a_haijob_lives_its_whole_life_through_the_hai_operator_process(
    platform: Platform, kube: Kube, tmp_path: Path
) -> None:
    """Queued, pods, Running, a suspend after the operator's watch has expired, Suspended,
    the operator killed and restarted while the HaiJob is resumed (it picks up where it was,
    submitting nothing twice), a pod evicted and the job requeued, deleted: finalizer gone,
    pods gone, and a pod it owned collected by the garbage collector. Zero 403s with the
    chart's roles. The kubelet's part is played through the API (FakeKubelet)."""
    from tests.kube.kubelet import FakeKubelet

    ns = platform.namespace
    nodes = {f"{ns}-a", f"{ns}-b"}
    script = tmp_path / "job.py"
    script.write_text(JOB)
    body = haijob_body(
        "llm",
        entrypoint=sys.executable,
        arguments=[str(script)],
        nodes=2,
        gpusPerNode=1,
        suspendGracePeriod=20,
        secretEnvironment={"DB_PASSWORD": {"secretKeyRef": {"name": "db", "key": "pw"}}},
    )
    with platform.operator() as operator, FakeKubelet(kube, nodes=nodes):
        _whole_life(platform, operator, body, sorted(nodes))
    assert forbidden(kube) == []


def _whole_life(
    platform: Platform, operator: Operator, body: dict[str, Any], nodes: list[str]
) -> None:
    ns = platform.namespace
    uid = platform.create(body)["metadata"]["uid"]
    # The Secret it names comes after it: the HaiJob waits for it, saying so.
    wait_for(
        "Pending on the Secret",
        lambda: (
            f"waiting for key 'pw' of Secret {ns}/db" in platform.status("llm").get("message", "")
        ),
    )
    assert platform.phase("llm") == "Pending"
    password = base64.b64encode(PASSWORD.encode()).decode()
    secret = {"metadata": {"name": "db"}, "data": {"pw": password}}
    platform.core.create_namespaced_secret(ns, secret, _preload_content=False)
    # No node has registered yet: the scheduler holds the job in the queue.
    wait_for("Queued", lambda: platform.phase("llm") == "Queued")
    job_id = platform.status("llm")["jobId"]
    assert platform.haijob("llm")["metadata"]["labels"][LABEL_JOB] == str(job_id)

    for node in nodes:
        platform.add_node(node)
    wait_for("Running", lambda: platform.phase("llm") == "Running")
    first = platform.status("llm")["runId"]
    pods = wait_for("both pods running", lambda: platform.running_pods(job_id, first, 2))
    assert sorted(p["spec"]["nodeName"] for p in pods) == nodes
    assert {p["metadata"]["ownerReferences"][0]["uid"] for p in pods} == {uid}
    assert sorted(platform.status("llm")["assignedNodes"]) == nodes
    log0 = platform.state / "logs" / f"job-{job_id}" / "run-0" / "rank-0.log"
    wait_for("rank 0's first line", lambda: log0.exists() and log0.read_text())
    assert log0.read_text().split("\n")[0] == (
        f"rank 0 of 2 restart 0 master n0.hai-r{first}.{ns}.svc"
    )
    # The ranks got the value; neither the HaiJob nor its pods hold it.
    digest = hashlib.sha256(PASSWORD.encode()).hexdigest()
    wait_for("rank 0's second line", lambda: f"password {digest}" in log0.read_text())
    assert PASSWORD not in json.dumps([platform.haijob("llm"), pods])

    # Suspend once a watch of the operator's has ended (the server ends them after 10-20 s):
    # the change reaches it through the watch it started again.
    wait_for("a watch to expire", lambda: watches_ended(platform), timeout=30)
    platform.patch_spec("llm", suspend=True)
    wait_for("Suspended", lambda: platform.phase("llm") == "Suspended")
    assert "checkpointed" in log0.read_text()
    wait_for("the pods to go", lambda: platform.job_pods(job_id) == [])
    assert platform.status("llm")["assignedNodes"] == []

    # The operator dies; the HaiJob is resumed meanwhile; a new operator takes it up.
    operator.end(signal.SIGKILL)
    platform.patch_spec("llm", suspend=False)
    operator.start()
    wait_for("Running again", lambda: platform.status("llm").get("runId", first) != first)
    second = platform.status("llm")["runId"]
    wait_for("Running", lambda: platform.phase("llm") == "Running")
    assert [j["id"] for j in platform.jobs_of(uid)] == [job_id]  # submitted once
    pods = wait_for("the new pods", lambda: platform.running_pods(job_id, second, 2))
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["HAI_RESTART_COUNT"] == "1"

    # A pod evicted from its node: the job is requeued (not failed) onto new pods.
    victim = pods[0]["metadata"]["name"]
    evicted = {"status": {"phase": "Failed", "reason": "Evicted"}}
    platform.core.patch_namespaced_pod_status(victim, ns, evicted, _preload_content=False)
    wait_for(
        "a third run after the eviction",
        lambda: (
            platform.status("llm").get("runId", second) != second
            and platform.phase("llm") == "Running"
        ),
    )
    assert platform.status("llm")["restartCount"] == 0  # a lost node is not the job's failure

    # A pod of the HaiJob's that no agent knows: only the garbage collector removes it.
    owner = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "HaiJob", "name": "llm", "uid": uid}
    stray = {
        "metadata": {"name": "stray", "ownerReferences": [owner]},
        "spec": {"containers": [{"name": "c", "image": "none"}]},
    }
    platform.core.create_namespaced_pod(ns, stray, _preload_content=False)

    # Delete: the job is stopped, its pods go, then the finalizer and the HaiJob.
    platform.delete("llm")
    wait_for("the HaiJob to go", lambda: platform.haijob("llm") == {}, timeout=90)
    assert platform.job_pods(job_id) == []
    assert platform.client.call("Describe", job_id=job_id)["job"]["state"] == "stopped"
    # The controller-manager's garbage collector notices owners gone within ~30 s.
    wait_for("the stray pod to be collected", lambda: platform.pods() == [], timeout=90)


def _token_file(kube: Kube, account: str, folder: Path) -> Path:
    path = folder / f"{account}.token"
    path.write_text(kube.plane.service_account_token(RELEASE_NAMESPACE, account))
    return path


def test_an_edit_of_a_fixed_field_is_shown_ignored_and_a_second_status_writer_is_undone(
    platform: Platform, kube: Kube, tmp_path: Path
) -> None:
    """Kubernetes 1.20 ignores the CRD's ``self == oldSelf`` rules (no CEL), so an edit of
    spec.entrypoint is accepted: the operator says in the status and an Event that it is
    ignored (the job runs as submitted), while spec.suspend still works. A second writer of
    the status is refused a stale write (409) and its fresh one is undone by the next
    refresh. The operator logs in with k8s.api_url, a token file and the cluster's CA."""
    login = {
        "HAI_K8S__API_URL": kube.url,
        "HAI_K8S__TOKEN_FILE": str(_token_file(kube, "hai-operator", tmp_path)),
        "HAI_K8S__CA_FILE": str(kube.plane.pki / "ca.crt"),
    }
    with platform.operator(login):
        _fixed_fields_and_two_writers(platform)
    assert forbidden(kube) == []


def _fixed_fields_and_two_writers(platform: Platform) -> None:
    from kubernetes.client.exceptions import ApiException

    platform.create(haijob_body("fixed", entrypoint="python train.py", gpusPerNode=1))
    wait_for("Queued", lambda: platform.phase("fixed") == "Queued")  # no node to run on
    job_id = platform.status("fixed")["jobId"]
    platform.patch_spec("fixed", entrypoint="python other.py")
    ignored = (
        "spec.entrypoint changed after submission and ignored: the job runs as submitted "
        "(delete and recreate the HaiJob to change it)"
    )
    # Said first, before what the scheduler says of the job.
    message = lambda: platform.status("fixed").get("message", "")  # noqa: E731
    wait_for("the edit shown ignored", lambda: message().startswith(ignored))
    assert platform.phase("fixed") == "Queued"
    described = platform.client.call("Describe", job_id=job_id)["job"]
    assert described["spec"]["entrypoint"] == "python train.py"
    events = json.loads(
        platform.core.list_namespaced_event(platform.namespace, _preload_content=False).data
    )
    said = [e["message"] for e in events["items"] if e["reason"] == "SpecChangeIgnored"]
    assert said and said[0].startswith(ignored)

    platform.patch_spec("fixed", suspend=True)
    wait_for("Suspended", lambda: platform.phase("fixed") == "Suspended")
    platform.patch_spec("fixed", entrypoint="python train.py")  # undone: nothing to show
    wait_for("the edit no longer shown", lambda: ignored not in message())

    # A second writer of the status: a stale write is refused, a fresh one undone.
    stale = platform.haijob("fixed")
    platform.custom.patch_namespaced_custom_object(
        GROUP, VERSION, platform.namespace, PLURAL, "fixed",
        {"metadata": {"annotations": {"touched": "yes"}}}, _preload_content=False,
    )  # fmt: skip
    wrong = {**stale, "status": {**stale["status"], "phase": "Running"}}
    with pytest.raises(ApiException) as caught:
        platform.custom.replace_namespaced_custom_object_status(
            GROUP, VERSION, platform.namespace, PLURAL, "fixed", wrong, _preload_content=False
        )
    assert caught.value.status == 409
    fresh = platform.haijob("fixed")
    fresh["status"]["phase"] = "Running"
    platform.custom.replace_namespaced_custom_object_status(
        GROUP, VERSION, platform.namespace, PLURAL, "fixed", fresh, _preload_content=False
    )
    wait_for("the operator's phase back", lambda: platform.phase("fixed") == "Suspended")


def test_the_agent_logs_in_with_a_token_file_and_checks_the_servers_certificate(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    """``hai agent --kubernetes`` with k8s.api_url: the agents' token from a file, the
    server's certificate checked against k8s.ca_file (refused without it); it reads its
    node's GPUs and pool and removes pods a previous agent left."""
    from kubernetes import client

    from hai.config import K8sConfig
    from hai.errors import ConfigError
    from hai.k8s.kube import kubernetes_executor
    from hai.k8s.names import LABEL_MANAGED, LABEL_NODE

    core = client.CoreV1Api(kube.api_client())
    node = f"{namespace}-gpu"
    labels = {"hai.fireflyer.io/group": "h800"}
    core.create_node({"metadata": {"name": node, "labels": labels}}, _preload_content=False)
    gpus = {"status": {"capacity": {"nvidia.com/gpu": "8"}, "allocatable": {"nvidia.com/gpu": "8"}}}
    core.patch_node_status(node, gpus, _preload_content=False)
    orphan = {
        "metadata": {"name": "hai-j1-r1-n0", "labels": {LABEL_MANAGED: "hai", LABEL_NODE: node}},
        "spec": {"containers": [{"name": "ranks", "image": "x"}]},
    }
    core.create_namespaced_pod(namespace, orphan, _preload_content=False)
    token = str(_token_file(kube, "hai-agent", tmp_path))
    config = K8sConfig(api_url=kube.url, token_file=token)
    # The executor reports the API unreachable (Unavailable), naming the refused certificate.
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        kubernetes_executor(config, node)
    with pytest.raises(ConfigError, match="k8s.token_file: cannot read /nonexistent"):
        kubernetes_executor(K8sConfig(api_url=kube.url, token_file="/nonexistent"), node)

    config = K8sConfig(api_url=kube.url, token_file=token, ca_file=str(kube.plane.pki / "ca.crt"))
    executor, found = kubernetes_executor(config, node)
    assert (found.gpus, found.group) == (8, "h800")
    pods = json.loads(core.list_namespaced_pod(namespace, _preload_content=False).data)
    assert pods["items"] == []
    assert forbidden(kube) == []


def test_the_operator_waits_for_a_missing_secret_and_refuses_one_that_is_not_text(
    kube: Kube, namespace: str
) -> None:
    """The operator's account reads a Secret a HaiJob names: a missing one is waited for, a
    value that is not text refused."""
    pytest.importorskip("kopf", reason="kopf (Python 3.11+) is not installed")
    import kopf
    from kubernetes import client

    from hai.errors import SpecError
    from hai.k8s import haijob
    from hai.k8s.operator import with_secret_values

    ref = {"secretKeyRef": {"name": "db", "key": "pw"}}
    body = haijob_body("llm", entrypoint="python t.py", secretEnvironment={"DB_PASSWORD": ref})
    body["metadata"] |= {"namespace": namespace, "uid": "u-1"}
    admin = client.CoreV1Api(kube.api_client())
    core = client.CoreV1Api(client.ApiClient(_configuration(kube.kubeconfig_for("hai-operator"))))
    spec = haijob.job_spec(body)
    with pytest.raises(kopf.TemporaryError, match=f"waiting for key 'pw' of Secret {namespace}/db"):
        with_secret_values(core, namespace, spec, body, 1.0)
    secret = {"metadata": {"name": "db"}, "data": {"pw": base64.b64encode(b"pw1").decode()}}
    admin.create_namespaced_secret(namespace, secret, _preload_content=False)
    filled = with_secret_values(core, namespace, spec, body, 1.0)
    assert filled.secret_environment == {"DB_PASSWORD": "pw1"}
    binary = {"data": {"pw": base64.b64encode(b"\xff\xfe").decode()}}
    admin.patch_namespaced_secret("db", namespace, binary, _preload_content=False)
    with pytest.raises(SpecError, match="DB_PASSWORD: Secret db key pw is not UTF-8 text"):
        with_secret_values(core, namespace, spec, body, 1.0)


def test_an_invalid_haijob_is_marked_invalid_with_every_problem_and_not_submitted(
    platform: Platform,
) -> None:
    """What the CRD's schema lets through but a job spec refuses (a variable name) makes the
    HaiJob Invalid, one line per problem, and reaches no scheduler."""
    with platform.operator():
        bad = haijob_body("bad", entrypoint="python t.py")
        bad["spec"]["environment"] = {"1X": "y"}
        platform.create(bad)
        wait_for("Invalid", lambda: platform.phase("bad") == "Invalid")
        message = platform.status("bad")["message"]
    assert message == "invalid job spec: spec.environment: has invalid variable names ['1X']"
    assert platform.client.call("List", everyone=True, all=True) == []


def test_a_haijob_deleted_while_its_status_refresh_is_in_a_call_goes_within_seconds(
    kube: Kube, namespace: str
) -> None:
    """kopf keeps the finalizer until the refresh timer has exited, and looked again only
    after its default 60 s when the timer was in a call at the deletion (CI: the server's
    Describe was slow on 2 busy cores); the operator now looks again every poll interval.
    The operator runs in this process (KopfRunner) to be given a slow stand-in hai server."""
    pytest.importorskip("kopf", reason="kopf (Python 3.11+) is not installed")
    from kopf.testing import KopfRunner
    from kubernetes import client

    from hai.config import K8sConfig
    from hai.k8s.operator import make_registry

    job = {"id": 7, "state": "running", "spec": {}}
    slow, describing = threading.Event(), threading.Event()
    stopped: list[int] = []

    def server(method: str, **body: Any) -> Any:  # the hai server's answers
        if method == "List":
            return []
        if method == "Submit":
            return job
        if method == "Describe":
            if slow.is_set():
                describing.set()
                time.sleep(3)  # a slow server: the timer is in this call at the deletion
            return {"job": job, "runs": []}
        if method == "Stop":
            stopped.append(int(body["job_id"]))
            return job
        raise AssertionError(f"unexpected call {method}")

    configuration = _configuration(kube.kubeconfig_for("hai-operator"))
    core = client.CoreV1Api(client.ApiClient(configuration))
    custom = client.CustomObjectsApi(kube.api_client())
    registry = make_registry(server, core, K8sConfig(poll_interval_s=0.2))
    body = haijob_body("llm", entrypoint="python t.py")

    def phase() -> str:
        reply = custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _preload_content=False
        )
        items = json.loads(reply.data)["items"]
        return (items[0].get("status") or {}).get("phase", "") if items else "gone"

    with KopfRunner(["run", "--standalone", "--namespace", namespace], registry=registry):
        custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, body, _preload_content=False
        )
        wait_for("Running", lambda: phase() == "Running")
        slow.set()
        wait_for("a refresh in its Describe call", describing.is_set)
        custom.delete_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "llm", _preload_content=False
        )
        wait_for("the HaiJob to go", lambda: phase() == "gone", timeout=30)
    # kopf runs the delete handler again at each look until the timer exits; Stop of a
    # stopped job is refused by the server (StateError) and ignored by the handler.
    assert stopped and set(stopped) == {7}


def test_hai_submit_runs_as_pods_in_the_jobs_namespace_and_hai_logs_reads_them(
    platform: Platform, kube: Kube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI targets the Kubernetes-backed platform as it targets a local one (the test's
    namespace stands for k8s.namespace). The kubelet's part is played through the API."""
    import yaml
    from click.testing import CliRunner

    from hai.cli import main
    from tests.kube.kubelet import FakeKubelet

    ns = platform.namespace
    script = tmp_path / "hello.py"
    script.write_text(
        "import hashlib, os, time\n"
        "key = hashlib.sha256(os.environ['API_KEY'].encode()).hexdigest()[:8]\n"
        "print('hello from rank', os.environ['RANK'], 'key', key, flush=True)\n"
        "time.sleep(2)\n"
    )
    spec = tmp_path / "job.yaml"
    job = {
        "name": "hello",
        "entrypoint": sys.executable,
        "arguments": [str(script)],
        "image": "train:2",
        "nodes": 1,
        "gpus_per_node": 1,
        "environment": {"HAI_MASTER_WAIT_S": "0"},
        "secret_environment": {"API_KEY": PASSWORD},
    }
    spec.write_text(yaml.safe_dump(job))
    monkeypatch.setenv("HAI_SERVER", platform.address)
    monkeypatch.setenv("HAI_TOKEN", platform.token)
    with FakeKubelet(kube, nodes={f"{ns}-a"}):
        platform.add_node(f"{ns}-a")
        submitted = CliRunner().invoke(main, ["submit", str(spec), "--json"])
        assert submitted.exit_code == 0, submitted.output
        job_id = json.loads(submitted.output)["id"]
        pod = wait_for("the job's pod", lambda: platform.job_pods(job_id))[0]
        assert pod["spec"]["nodeName"] == f"{ns}-a" and "ownerReferences" not in pod["metadata"]
        container = pod["spec"]["containers"][0]
        assert container["image"] == "train:2"
        assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
        # The secret value is in the pod's Secret, owned by the pod, not in its spec.
        assert PASSWORD not in json.dumps(pod)
        name = pod["metadata"]["name"]

        def secret() -> dict[str, Any]:
            reply = platform.core.read_namespaced_secret(f"{name}-env", ns, _preload_content=False)
            return json.loads(reply.data)

        # Given its owner once the pod exists: the garbage collector deletes it with the pod.
        owners = wait_for("the Secret's owner", lambda: secret()["metadata"].get("ownerReferences"))
        assert [o["uid"] for o in owners] == [pod["metadata"]["uid"]]
        assert base64.b64decode(secret()["data"]["API_KEY"]).decode() == PASSWORD
        state = lambda: platform.client.call("Describe", job_id=job_id)["job"]["state"]  # noqa: E731
        wait_for("the job to succeed", lambda: state() == "succeeded")
        wait_for("its pod to go", lambda: platform.job_pods(job_id) == [])
    reply = platform.core.list_namespaced_secret(ns, _preload_content=False)
    names = [s["metadata"]["name"] for s in json.loads(reply.data)["items"]]
    assert [n for n in names if n.startswith("hai-")] == []  # deleted with the run
    logs = CliRunner().invoke(main, ["logs", str(job_id)])
    key = hashlib.sha256(PASSWORD.encode()).hexdigest()[:8]
    assert logs.output == f"hello from rank 0 key {key}\n"
    assert forbidden(kube) == []


def test_a_pod_left_on_a_dead_node_is_force_deleted_by_the_operator(
    kube: Kube, namespace: str
) -> None:
    """A deleted pod bound to a node stays Terminating until that node's kubelet confirms
    its containers gone; with the node (kubelet and agent) dead, the operator's account
    force-deletes it and drops the executor's finalizer, and the pod goes. No kubelet plays
    here: the node is dead."""
    from kubernetes import client

    from hai.config import K8sConfig
    from hai.k8s.names import POD_FINALIZER
    from hai.k8s.operator import JobPods

    admin = client.CoreV1Api(kube.api_client())
    pod = {
        "metadata": {
            "name": "hai-j9-r9-n0",
            "labels": {LABEL_JOB: "9"},
            "finalizers": [POD_FINALIZER],
        },
        "spec": {
            "nodeName": f"{namespace}-dead",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "ranks", "image": "x"}],
        },
    }
    admin.create_namespaced_pod(namespace, pod, _preload_content=False)
    admin.delete_namespaced_pod("hai-j9-r9-n0", namespace, _preload_content=False)
    core = client.CoreV1Api(client.ApiClient(_configuration(kube.kubeconfig_for("hai-operator"))))
    pods = JobPods(core, K8sConfig(stuck_after_s=0))
    assert pods.list(namespace, 9)[0]["metadata"]["deletionTimestamp"]  # Terminating
    released = wait_for("the pod found stuck", lambda: pods.release_stuck(pods.list(namespace, 9)))
    assert released == ["hai-j9-r9-n0"]
    wait_for("the pod to go", lambda: pods.list(namespace, 9) == [], timeout=20)
    assert forbidden(kube) == []
