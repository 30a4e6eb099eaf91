"""An in-memory Kubernetes API and a stand-in kubelet for the Kubernetes tests.

No real API server runs on our machines (no Docker, no kube-apiserver package), so the
operator and executor tests run against kmock's ``KubernetesEmulator`` (a test extra;
pinned at 0.8) served over HTTP from a background thread. What the emulator is not, and
the tests therefore do not show:

* no admission and no OpenAPI schema enforcement: an invalid HaiJob is accepted (the CRD
  schema is checked separately, with jsonschema, in tests/hai/test_deploy.py);
* no defaulting, pruning, label or field selectors, server-side apply or resourceVersion
  conflicts; a patch is a naive dict merge (a JSON patch is applied as such);
* no garbage collection through ownerReferences: deleting a HaiJob deletes its pods only
  because the operator stops the job and the agents delete them;
* no kubelet and no scheduler: pods never run by themselves. :class:`FakeKubelet` runs a
  pod's container command as a local process (no image, no isolation, no resources,
  host folders are the local paths) and writes its phase and exit code into the status.
  It resolves ``env[].valueFrom.secretKeyRef`` from the Secret as a kubelet does, and
  holds a pod whose Secret or key is missing in ``CreateContainerConfigError``.

The emulator here adds what our code reads and kmock 0.8 does not keep: ``uid`` and
``creationTimestamp`` on create, ``deletionGracePeriodSeconds`` on a graceful delete.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from hai.k8s.names import GROUP, KIND, PLURAL, VERSION

RESOURCES = {
    "v1/pods": ("Pod", True, {"status"}),
    "v1/services": ("Service", True, set()),
    "v1/secrets": ("Secret", True, set()),
    "v1/namespaces": ("Namespace", False, set()),
    "v1/nodes": ("Node", False, set()),
    "v1/events": ("Event", True, set()),
    "events.k8s.io/v1/events": ("Event", True, set()),
    f"{GROUP}/{VERSION}/{PLURAL}": (KIND, True, {"status"}),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", False, set()),
}
VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}


def _fix_kmock_cluster_paths() -> None:
    """kmock 0.8 reads ``/api/v1/namespaces[/NAME]`` as a namespace prefix and answers 500,
    so kopf's namespace observer retries forever and watches nothing. Route both to the
    cluster-scoped ``namespaces`` resource (idempotent)."""
    from kmock._internal import parsing

    if getattr(parsing.parse_path, "_hai_fixed", False):
        return
    original = parsing.parse_path

    def parse_path(path: str) -> Any:
        parts = path.strip("/").split("/")
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) in (3, 4):
            name = parts[3] if len(parts) == 4 else None
            return parsing.ParsedPath("", "v1", "namespaces", None, name, None)
        return original(path)

    parse_path._hai_fixed = True  # type: ignore[attr-defined]
    parsing.parse_path = parse_path


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _emulator_class() -> type:
    import kmock
    from kmock._internal import enums

    class Emulator(kmock.KubernetesEmulator):  # type: ignore[misc]
        async def _handle(self, request: Any) -> Any:
            if request.action == enums.action.CREATE and isinstance(request.data, dict):
                meta = request.data.setdefault("metadata", {})
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", _now())
                meta.setdefault("resourceVersion", "1")
            response = await super()._handle(request)
            if request.action == enums.action.DELETE and request.name:
                grace = request.params.get("gracePeriodSeconds")
                if grace is None and isinstance(request.data, dict):
                    grace = request.data.get("gracePeriodSeconds")
                key = (request.resource, request.namespace, request.name)
                async with self._lock:
                    obj = self._objects[key] if key in self._objects else None
                    if grace is not None and obj is not None and not obj.deleted:
                        obj.patch({"metadata": {"deletionGracePeriodSeconds": int(grace)}})
            return response

    return Emulator


class KubernetesApi:
    """kmock's emulator on a free loopback port, served from a thread of its own.

    Use as a context manager; :attr:`url` is the API server's address. ``namespaces`` are
    created at the start (kopf watches only namespaces that exist).
    """

    def __init__(self, namespaces: tuple[str, ...] = ("default",)) -> None:
        _fix_kmock_cluster_paths()
        self.namespaces = namespaces
        self.url = ""
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, name="k8s-emulator", daemon=True)

    def __enter__(self) -> KubernetesApi:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the Kubernetes emulator did not start: {self._error!r}")
        from kubernetes import client

        core = client.CoreV1Api(self.api_client())
        for name in self.namespaces:
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            core.create_namespace(body, _preload_content=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # reported by __enter__
            self._error = err
            self._ready.set()

    async def _main(self) -> None:
        import kmock

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with _emulator_class()() as handler, kmock.Server(handler) as server:
            for key, (kind, namespaced, subresources) in RESOURCES.items():
                info = handler.resources[key]
                info.kind, info.namespaced = kind, namespaced
                info.verbs = set(VERBS)
                info.subresources = set(subresources)
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for this server."""
        from kubernetes import client

        config = client.Configuration()
        config.host = self.url
        return client.ApiClient(config)


_STATUS = {"image": "", "imageID": "", "restartCount": 0}
"""Container status fields a kubelet always sets (the kubernetes client requires them)."""


@dataclass
class _Container:
    proc: subprocess.Popen
    kill_at: float | None = None
    reported: bool = False


class FakeKubelet:
    """Runs every pod bound to a node of ``nodes`` (all when None) as a local process.

    Each pod's one container command runs with the container's environment; the status
    goes Running, then Succeeded or Failed with the exit code (a signal N as 128 + N). A
    deleted pod gets SIGTERM, and SIGKILL for its process group after its grace period.
    """

    def __init__(self, api: KubernetesApi, nodes: set[str] | None = None, poll_s: float = 0.05):
        from kubernetes import client

        self.core = client.CoreV1Api(api.api_client())
        self.nodes = nodes
        self.poll_s = poll_s
        self._running: dict[tuple[str, str], _Container] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-kubelet", daemon=True)

    def __enter__(self) -> FakeKubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for c in self._running.values():
            self._kill(c)

    def pods(self) -> list[dict[str, Any]]:
        reply = self.core.list_pod_for_all_namespaces(_preload_content=False)
        return json.loads(reply.data)["items"]

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._sync()
            except Exception:  # the emulator going away at the end of a test
                if not self._stop.is_set():
                    raise

    def _sync(self) -> None:
        seen = set()
        for pod in self.pods():
            meta, spec = pod["metadata"], pod["spec"]
            if self.nodes is not None and spec.get("nodeName") not in self.nodes:
                continue
            key = (meta["namespace"], meta["name"])
            seen.add(key)
            container = self._running.get(key)
            if container is None:
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                container = self._start(pod)
                if container is None:  # waiting for a Secret: tried again on the next sync
                    continue
                self._running[key] = container
            if container.reported:
                continue
            code = container.proc.poll()
            if meta.get("deletionTimestamp") and code is None:
                now = time.monotonic()
                if container.kill_at is None:
                    grace = meta.get("deletionGracePeriodSeconds")
                    if grace is None:
                        grace = spec.get("terminationGracePeriodSeconds", 30)
                    container.kill_at = now + float(grace)
                    container.proc.send_signal(signal.SIGTERM)
                elif now >= container.kill_at:
                    self._kill(container)
            if code is not None:
                self._report(pod, code)
                container.reported = True
        for key in set(self._running) - seen:  # deleted outright (no finalizer)
            self._kill(self._running.pop(key))

    def _secret_value(self, namespace: str, ref: dict[str, str]) -> str | None:
        """A ``secretKeyRef``'s value, or None when the Secret or its key is missing."""
        from kubernetes.client.exceptions import ApiException

        try:
            reply = self.core.read_namespaced_secret(ref["name"], namespace, _preload_content=False)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        data = json.loads(reply.data).get("data") or {}
        return base64.b64decode(data[ref["key"]]).decode() if ref["key"] in data else None

    def _start(self, pod: dict[str, Any]) -> _Container | None:
        c = pod["spec"]["containers"][0]
        env = {}
        for e in c.get("env") or []:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref is None:
                env[e["name"]] = e.get("value", "")
                continue
            value = self._secret_value(pod["metadata"]["namespace"], ref)
            if value is None:
                why = f"secret {ref['name']!r} or its key {ref['key']!r} not found"
                waiting = {"reason": "CreateContainerConfigError", "message": why}
                state = {**_STATUS, "name": c["name"], "ready": False}
                state["state"] = {"waiting": waiting}
                self._patch_status(pod, {"phase": "Pending", "containerStatuses": [state]})
                return None
            env[e["name"]] = value
        env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
        proc = subprocess.Popen(
            [*c.get("command", []), *c.get("args", [])],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # SIGKILL takes the group, as a container's end does
        )
        self._patch_status(
            pod,
            {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "containerStatuses": [
                    {**_STATUS, "name": c["name"], "ready": True, "state": {"running": {}}}
                ],
            },
        )
        return _Container(proc)

    def _report(self, pod: dict[str, Any], code: int) -> None:
        name = pod["spec"]["containers"][0]["name"]
        exit_code = 128 - code if code < 0 else code
        self._patch_status(
            pod,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "containerStatuses": [
                    {
                        **_STATUS,
                        "name": name,
                        "ready": False,
                        "state": {"terminated": {"exitCode": exit_code, "finishedAt": _now()}},
                    }
                ],
            },
        )

    def _patch_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        meta = pod["metadata"]
        try:
            self.core.patch_namespaced_pod_status(
                meta["name"], meta["namespace"], {"status": status}, _preload_content=False
            )
        except ApiException as err:
            if err.status != 404:
                raise

    @staticmethod
    def _kill(container: _Container) -> None:
        if container.proc.poll() is None:
            try:
                os.killpg(container.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            container.proc.wait(timeout=10)
