"""An in-memory Kubernetes API for the Kubernetes tests that need no real server.

The tests marked ``kube`` run against a real kube-apiserver (tests/kube/); the ones here run
against kmock's ``KubernetesEmulator`` (a test extra;
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
import datetime
import threading
import uuid
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
