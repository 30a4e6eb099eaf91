"""A stand-in kubelet for the Kubernetes tests, playing its part through the API.

No kubelet can run on our machines (no container runtime), so :class:`FakeKubelet` runs a
pod's container command as a local process (no image, no isolation, no resources, host
folders are the local paths) and writes its phase and exit code into the pod's status, as
a kubelet does through the API. It resolves ``env[].valueFrom.secretKeyRef`` from the
Secret, and holds a pod whose Secret or key is missing in ``CreateContainerConfigError``.
It works against the real kube-apiserver of tests/kube/control_plane.py (anything with
``api_client()``).
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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

    def __init__(
        self,
        api: Any,
        nodes: set[str] | None = None,
        poll_s: float = 0.05,
    ):
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
                if meta.get("deletionTimestamp"):  # deleted before it started: nothing runs
                    self._confirm_deletion(pod)
                    continue
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                container = self._start(pod)
                if container is None:  # waiting for a Secret: tried again on the next sync
                    continue
                self._running[key] = container
            if container.reported:
                if meta.get("deletionTimestamp"):
                    self._confirm_deletion(pod)
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

    def _confirm_deletion(self, pod: dict[str, Any]) -> None:
        """A real API server keeps a deleted pod bound to a node until its kubelet confirms
        that the containers are gone, with a delete of grace 0 (a pod on a node with no
        kubelet, a dead one, stays Terminating)."""
        from kubernetes.client.exceptions import ApiException

        meta = pod["metadata"]
        try:
            self.core.delete_namespaced_pod(
                meta["name"], meta["namespace"], grace_period_seconds=0, _preload_content=False
            )
        except ApiException as err:
            if err.status != 404:
                raise

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
