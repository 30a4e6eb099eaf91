"""The HaiJob operator: its pure rules, then its whole life through kopf's KopfRunner.

The integration test runs the real pieces in one process: a hai server (SQLite), two
agents driving the Kubernetes executor, the operator under ``kopf.testing.KopfRunner``,
all against kmock's in-memory Kubernetes API (k8s_emulator.py). What that API is not:
it has no admission and no schema enforcement (the CRD's schema is checked with
jsonschema in test_deploy.py), no garbage collection through ownerReferences (pods go
because the job is stopped and the agents delete them), and no kubelet: FakeKubelet runs
each pod's command as a local process (resolving ``secretKeyRef`` variables from the
emulated Secrets, as a kubelet does) and patches the pod's phase and exit code. A second
test submits with the ``hai`` CLI instead of a HaiJob and reads the job's log with it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hai.errors import SpecError
from hai.k8s import haijob
from hai.k8s.names import ENV_NAMESPACE, ENV_OWNER, GROUP, LABEL_JOB, PLURAL, VERSION

from ..waiting import wait_for

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


# ---- the whole life of a HaiJob -------------------------------------------------------------

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


def read_haijob(custom, name: str) -> dict:  # type: ignore[no-untyped-def]
    """The HaiJob ``name`` in ``default`` as JSON; {} once it is gone."""
    from kubernetes.client.exceptions import ApiException

    try:
        reply = custom.get_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, name, _preload_content=False
        )
    except ApiException as err:
        if err.status == 404:
            return {}
        raise
    return json.loads(reply.data)


class Platform:
    """A hai server, agents on Kubernetes nodes, and the API they share."""

    def __init__(self, root: Path, port: int, kube) -> None:  # type: ignore[no-untyped-def]
        from kubernetes import client

        from hai.config import load_config
        from hai.rpc import ApiClient
        from hai.server import Server

        self.config = load_config(
            env={},
            overrides={
                "server": {"port": port},
                "scheduler": {"pass_interval_s": 0.1, "node_lease_s": 10, "kill_grace_s": 1},
                "agent": {"heartbeat_s": 0.1, "kill_grace_s": 1, "health_interval_s": 3600},
                "policy": {"min_run_s": 0},
                "k8s": {"api_url": kube.url, "python": sys.executable, "poll_interval_s": 0.2},
            },
        )
        self.state = root / "hai"
        self.server = Server(self.config, self.state)
        self.server.start()
        self.address = f"127.0.0.1:{port}"
        self.token = (self.state / "token").read_text().strip()
        self.client = ApiClient(self.address, self.token)
        self.api = kube.api_client()
        self.core = client.CoreV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self._agents: list[tuple[threading.Thread, threading.Event, ApiClient]] = []

    def start_agent(self, name: str) -> None:
        from hai.agent import Agent
        from hai.executor.k8s import KubernetesExecutor
        from hai.rpc import ApiClient

        client = ApiClient(self.address, self.client.call("AddNode", name=name)["token"])
        executor = KubernetesExecutor(self.core, self.config.k8s)
        # Agents share the server's state folder, as on a cluster with a shared file system.
        agent = Agent(name, client, executor, self.state, self.config.agent, gpus=1)
        stop = threading.Event()
        thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        thread.start()
        self._agents.append((thread, stop, client))

    def close(self) -> None:
        for thread, stop, client in self._agents:
            stop.set()
            thread.join(timeout=10)
            client.close()
        self.client.close()
        self.server.stop()

    # ---- reading the API as JSON (the client's models reject the emulator's sparse objects)
    def haijob(self, name: str) -> dict:
        return read_haijob(self.custom, name)

    def phase(self, name: str) -> str:
        return (self.haijob(name).get("status") or {}).get("phase", "")

    def pods(self, job_id: int, namespace: str = "default") -> list[dict]:
        reply = self.core.list_namespaced_pod(namespace, _preload_content=False)
        items = json.loads(reply.data)
        return [p for p in items["items"] if p["metadata"]["labels"].get(LABEL_JOB) == str(job_id)]

    def secret(self, name: str, namespace: str = "default") -> dict:
        reply = self.core.read_namespaced_secret(name, namespace, _preload_content=False)
        return json.loads(reply.data)

    def running_pods(self, job_id: int, run_id: int) -> list[dict]:
        pods = [
            p
            for p in self.pods(job_id)
            if p["metadata"]["name"].startswith(f"hai-j{job_id}-r{run_id}-")
        ]
        running = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        return running if len(running) == 2 else []

    def patch_spec(self, name: str, **fields: object) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, name, {"spec": fields}, _preload_content=False
        )


@pytest.fixture
def platform(
    tmp_path: Path, free_port: Callable[[], int], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Platform]:
    pytest.importorskip("kmock", reason="the test extra (kmock, Python 3.11+) is not installed")
    pytest.importorskip("kopf", reason="kopf (Python 3.11+) is not installed")
    from hai import agent
    from tests.kube.kubelet import FakeKubelet

    from .k8s_emulator import KubernetesApi

    # Node health checks are not under test, and their CPU floor fails a node of a busy
    # 2-core CI machine, which then gets no work.
    monkeypatch.setattr(agent, "run_checks", lambda *args: [])

    with KubernetesApi() as kube, FakeKubelet(kube, nodes={"gpu-a", "gpu-b"}):
        p = Platform(tmp_path, free_port(), kube)
        try:
            yield p
        finally:
            p.close()


def test_a_haijob_queues_runs_suspends_resumes_and_goes(platform: Platform, tmp_path: Path) -> None:
    from kopf.testing import KopfRunner

    from hai.k8s.operator import make_registry

    script = tmp_path / "job.py"
    script.write_text(JOB)
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HaiJob",
        "metadata": {"name": "llm", "namespace": "default"},
        "spec": {
            "entrypoint": sys.executable,
            "arguments": [str(script)],
            "nodes": 2,
            "gpusPerNode": 1,
            "suspendGracePeriod": 20,
            # No DNS for the run's Service here: ranks need not wait for MASTER_ADDR.
            "environment": {"HAI_MASTER_WAIT_S": "0"},
            "secretEnvironment": {"DB_PASSWORD": {"secretKeyRef": {"name": "db", "key": "pw"}}},
        },
    }
    registry = make_registry(platform.client.call, platform.core, platform.config.k8s)
    args = ["run", "--standalone", "--namespace", "default"]
    with KopfRunner(args, registry=registry, timeout=30) as runner:
        platform.custom.create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, body, _preload_content=False
        )
        # The Secret it names comes after it: the HaiJob waits for it, saying so.
        wait_for(
            "Pending on the Secret",
            lambda: (
                "waiting for key 'pw' of Secret default/db"
                in (platform.haijob("llm").get("status") or {}).get("message", "")
            ),
        )
        assert platform.phase("llm") == "Pending"
        password = base64.b64encode(PASSWORD.encode()).decode()
        platform.core.create_namespaced_secret(
            "default",
            {"metadata": {"name": "db"}, "data": {"pw": password}},
            _preload_content=False,
        )
        # No node has registered yet: the scheduler holds the job in the queue.
        wait_for("Queued", lambda: platform.phase("llm") == "Queued")
        job_id = platform.haijob("llm")["status"]["jobId"]
        uid = platform.haijob("llm")["metadata"]["uid"]
        assert platform.haijob("llm")["metadata"]["labels"][LABEL_JOB] == str(job_id)

        platform.start_agent("gpu-a")
        platform.start_agent("gpu-b")
        wait_for("Running", lambda: platform.phase("llm") == "Running")
        first = platform.haijob("llm")["status"]["runId"]
        pods = wait_for("both pods running", lambda: platform.running_pods(job_id, first))
        assert sorted(p["spec"]["nodeName"] for p in pods) == ["gpu-a", "gpu-b"]
        assert {p["metadata"]["ownerReferences"][0]["uid"] for p in pods} == {uid}
        assert sorted(platform.haijob("llm")["status"]["assignedNodes"]) == ["gpu-a", "gpu-b"]
        services = json.loads(
            platform.core.list_namespaced_service("default", _preload_content=False).data
        )
        assert f"hai-r{first}" in [s["metadata"]["name"] for s in services["items"]]
        log0 = platform.state / "logs" / f"job-{job_id}" / "run-0" / "rank-0.log"
        wait_for("rank 0's first line", lambda: log0.exists() and log0.read_text())
        assert log0.read_text().split("\n")[0] == (
            f"rank 0 of 2 restart 0 master n0.hai-r{first}.default.svc"
        )
        # The ranks got the value; neither the HaiJob, nor its pods, nor the server's
        # answers hold it or the run's token (which is in the pod's own Secret).
        digest = hashlib.sha256(PASSWORD.encode()).hexdigest()
        wait_for("rank 0's second line", lambda: f"password {digest}" in log0.read_text())
        secret = platform.secret(f"hai-j{job_id}-r{first}-n0-env")
        token = base64.b64decode(secret["data"]["HAI_RUN_TOKEN"]).decode()
        shown = json.dumps([platform.haijob("llm"), pods])
        assert PASSWORD not in shown and token not in shown
        described = platform.client.call("Describe", job_id=job_id)["job"]["spec"]
        assert described["secret_environment"] == {"DB_PASSWORD": "***"}

        # Suspend: the request reaches the job, it checkpoints, its pods go.
        platform.patch_spec("llm", suspend=True)
        wait_for("Suspended", lambda: platform.phase("llm") == "Suspended")
        assert "checkpointed" in log0.read_text()
        wait_for("the pods to go", lambda: platform.pods(job_id) == [])
        assert platform.haijob("llm")["status"]["assignedNodes"] == []

        # Resume: a new run of the same chain, on new pods.
        platform.patch_spec("llm", suspend=False)
        wait_for(
            "Running again", lambda: platform.haijob("llm")["status"].get("runId", first) != first
        )
        second = platform.haijob("llm")["status"]["runId"]
        wait_for("Running", lambda: platform.phase("llm") == "Running")
        pods = wait_for("the new pods", lambda: platform.running_pods(job_id, second))
        env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
        assert env["HAI_RESTART_COUNT"] == "1"

        # A pod evicted from its node: the job is requeued (not failed) onto new pods.
        victim = pods[0]["metadata"]["name"]
        platform.core.patch_namespaced_pod_status(
            victim, "default", {"status": {"phase": "Failed", "reason": "Evicted"}}
        )
        wait_for(
            "a third run after the eviction",
            lambda: (
                platform.haijob("llm")["status"].get("runId", second) != second
                and platform.phase("llm") == "Running"
            ),
        )
        status = platform.haijob("llm")["status"]
        assert status["restartCount"] == 0  # a lost node is not the job's failure

        # Delete: the job is stopped, its pods go, then the finalizer and the HaiJob.
        platform.custom.delete_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, "llm", _preload_content=False
        )
        wait_for("the HaiJob to go", lambda: platform.haijob("llm") == {})
        assert platform.pods(job_id) == []
        assert platform.client.call("Describe", job_id=job_id)["job"]["state"] == "stopped"
    assert runner.exception is None


def test_hai_submit_runs_as_pods_in_the_jobs_namespace_and_hai_logs_reads_them(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI targets the Kubernetes-backed platform as it targets a local one."""
    import yaml
    from click.testing import CliRunner

    from hai.cli import main

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
    platform.start_agent("gpu-a")
    submitted = CliRunner().invoke(main, ["submit", str(spec), "--json"])
    assert submitted.exit_code == 0, submitted.output
    job_id = json.loads(submitted.output)["id"]
    pod = wait_for("the job's pod", lambda: platform.pods(job_id, "hai-jobs"))[0]
    assert pod["spec"]["nodeName"] == "gpu-a" and "ownerReferences" not in pod["metadata"]
    container = pod["spec"]["containers"][0]
    assert container["image"] == "train:2"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    # The secret value is in the pod's Secret, owned by the pod, not in its spec.
    assert PASSWORD not in json.dumps(pod)
    name = pod["metadata"]["name"]
    secret = lambda: platform.secret(f"{name}-env", "hai-jobs")  # noqa: E731
    # Given its owner once the pod exists: the garbage collector deletes it with the pod.
    owners = wait_for("the Secret's owner", lambda: secret()["metadata"].get("ownerReferences"))
    assert [o["uid"] for o in owners] == [pod["metadata"]["uid"]]
    assert base64.b64decode(secret()["data"]["API_KEY"]).decode() == PASSWORD
    state = lambda: platform.client.call("Describe", job_id=job_id)["job"]["state"]  # noqa: E731
    wait_for("the job to succeed", lambda: state() == "succeeded")
    wait_for("its pod to go", lambda: platform.pods(job_id, "hai-jobs") == [])
    secrets = json.loads(
        platform.core.list_namespaced_secret("hai-jobs", _preload_content=False).data
    )
    assert secrets["items"] == []  # deleted with the run
    logs = CliRunner().invoke(main, ["logs", str(job_id)])
    key = hashlib.sha256(PASSWORD.encode()).hexdigest()[:8]
    assert logs.output == f"hello from rank 0 key {key}\n"


def test_the_operator_waits_for_a_missing_secret_and_refuses_one_that_is_not_text() -> None:
    pytest.importorskip("kmock", reason="the test extra (kmock, Python 3.11+) is not installed")
    pytest.importorskip("kopf", reason="kopf (Python 3.11+) is not installed")
    import kopf
    from kubernetes import client

    from hai.k8s.operator import with_secret_values

    from .k8s_emulator import KubernetesApi

    ref = {"secretKeyRef": {"name": "db", "key": "pw"}}
    body = {**HAIJOB, "spec": {**HAIJOB["spec"], "secretEnvironment": {"DB_PASSWORD": ref}}}
    with KubernetesApi(namespaces=("team-a",)) as kube:
        core = client.CoreV1Api(kube.api_client())
        spec = haijob.job_spec(body)
        with pytest.raises(kopf.TemporaryError, match="waiting for key 'pw' of Secret team-a/db"):
            with_secret_values(core, "team-a", spec, body, 1.0)
        secret = {"metadata": {"name": "db"}, "data": {"pw": base64.b64encode(b"pw1").decode()}}
        core.create_namespaced_secret("team-a", secret, _preload_content=False)
        assert with_secret_values(core, "team-a", spec, body, 1.0).secret_environment == {
            "DB_PASSWORD": "pw1"
        }
        binary = {"data": {"pw": base64.b64encode(b"\xff\xfe").decode()}}
        core.patch_namespaced_secret("db", "team-a", binary, _preload_content=False)
        with pytest.raises(SpecError, match="DB_PASSWORD: Secret db key pw is not UTF-8 text"):
            with_secret_values(core, "team-a", spec, body, 1.0)


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


def test_an_invalid_haijob_is_marked_invalid_with_every_problem_and_not_submitted() -> None:
    pytest.importorskip("kmock", reason="the test extra (kmock, Python 3.11+) is not installed")
    pytest.importorskip("kopf", reason="kopf (Python 3.11+) is not installed")
    from kopf.testing import KopfRunner
    from kubernetes import client

    from hai.config import K8sConfig
    from hai.k8s.operator import make_registry

    from .k8s_emulator import KubernetesApi

    calls: list[str] = []
    with KubernetesApi() as kube:
        custom = client.CustomObjectsApi(kube.api_client())
        core = client.CoreV1Api(kube.api_client())
        config = K8sConfig(api_url=kube.url, poll_interval_s=0.2)
        registry = make_registry(lambda method, **_: calls.append(method), core, config)
        bad = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "HaiJob",
            "metadata": {"name": "bad", "namespace": "default"},
            # What the API server's schema would refuse, which the emulator lets through.
            "spec": {"entrypoint": "python t.py", "nodes": 0, "environment": {"1X": "y"}},
        }
        with KopfRunner(["run", "--standalone", "--namespace", "default"], registry=registry):
            custom.create_namespaced_custom_object(
                GROUP, VERSION, "default", PLURAL, bad, _preload_content=False
            )

            def status() -> dict:
                return read_haijob(custom, "bad").get("status") or {}

            wait_for("Invalid", lambda: status().get("phase") == "Invalid")
            message = status()["message"]
    assert message == (
        "invalid job spec:\n  spec.environment: has invalid variable names ['1X']\n"
        "  spec.nodes: input should be greater than or equal to 1, got 0"
    )
    assert calls == []  # nothing reached the scheduler


def test_a_haijob_deleted_while_its_status_refresh_is_in_a_call_goes_within_seconds() -> None:
    """kopf keeps the finalizer until the refresh timer has exited, and looked again only
    after its default 60 s when the timer was in a call at the deletion (CI: the server's
    Describe was slow on 2 busy cores); the operator now looks again every poll interval."""
    pytest.importorskip("kmock", reason="the test extra (kmock, Python 3.11+) is not installed")
    pytest.importorskip("kopf", reason="kopf (Python 3.11+) is not installed")
    from kopf.testing import KopfRunner
    from kubernetes import client

    from hai.config import K8sConfig
    from hai.k8s.operator import make_registry

    from .k8s_emulator import KubernetesApi

    job = {"id": 7, "state": "running"}
    slow, describing = threading.Event(), threading.Event()
    stopped: list[int] = []

    def server(method: str, **body: object) -> object:  # the hai server's answers
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
            stopped.append(int(body["job_id"]))  # type: ignore[call-overload]
            return job
        raise AssertionError(f"unexpected call {method}")

    with KubernetesApi() as kube:
        custom = client.CustomObjectsApi(kube.api_client())
        core = client.CoreV1Api(kube.api_client())
        config = K8sConfig(api_url=kube.url, poll_interval_s=0.2)
        registry = make_registry(server, core, config)
        body = {**HAIJOB, "metadata": {"name": "llm", "namespace": "default"}}
        with KopfRunner(["run", "--standalone", "--namespace", "default"], registry=registry):
            custom.create_namespaced_custom_object(
                GROUP, VERSION, "default", PLURAL, body, _preload_content=False
            )
            wait_for(
                "Running",
                lambda: (read_haijob(custom, "llm").get("status") or {}).get("phase") == "Running",
            )
            slow.set()
            wait_for("a refresh in its Describe call", describing.is_set)
            custom.delete_namespaced_custom_object(
                GROUP, VERSION, "default", PLURAL, "llm", _preload_content=False
            )
            wait_for("the HaiJob to go", lambda: read_haijob(custom, "llm") == {}, timeout=30)
    # kopf runs the delete handler again at each look until the timer exits; Stop of a
    # stopped job is refused by the server (StateError) and ignored by the handler.
    assert stopped and set(stopped) == {7}
