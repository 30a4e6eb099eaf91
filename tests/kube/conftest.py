"""The ``kube`` fixture: one real control plane for the session (tests/kube/control_plane.py)
with the HaiJob CRD installed and the chart's namespaces, service accounts and RBAC
applied, as `helm install` would make them. Tests get the operator's and the agents'
credentials from the service accounts, never the admin token."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.chart import CHART, REQUIRED, render
from tests.kube.control_plane import ControlPlane, control_plane

RELEASE = "hai"
RELEASE_NAMESPACE = "hai"
JOBS_NAMESPACE = "hai-jobs"  # the chart's jobs.namespace
_RBAC_KINDS = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
               "RoleBinding"}  # fmt: skip


@dataclass
class Kube:
    """A running control plane with the chart's objects, and credentials for its accounts."""

    plane: ControlPlane
    root: Path

    @property
    def url(self) -> str:
        return self.plane.url

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` as the cluster's admin (the test's own hand)."""
        from kubernetes import client
        from kubernetes import config as kube_config

        configuration = client.Configuration()
        kube_config.load_kube_config(
            str(self.plane.admin_kubeconfig), client_configuration=configuration
        )
        return client.ApiClient(configuration)

    def kubeconfig_for(self, account: str, namespace: str = RELEASE_NAMESPACE) -> Path:
        """A kubeconfig holding service account ``account``'s token (e.g. ``hai-operator``)."""
        path = self.root / f"{namespace}-{account}.kubeconfig"
        if not path.exists():
            token = self.plane.service_account_token(namespace, account)
            self.plane.write_kubeconfig(path, f"system:serviceaccount:{namespace}:{account}",
                                        token)  # fmt: skip
        return path

    def forbidden(self, user_prefix: str = "system:serviceaccount:") -> list[str]:
        """Every request of ``user_prefix``'s users that the API refused with 403."""
        return [
            f"{e['user']['username']} {e['verb']} {e.get('requestURI', '')}"
            for e in self.plane.audit_events()
            if e.get("stage") == "ResponseComplete"
            and (e.get("responseStatus") or {}).get("code") == 403
            and e["user"]["username"].startswith(user_prefix)
        ]


def chart_objects() -> list[dict[str, Any]]:
    """The rendered chart's CRDs (from crds/, as Helm installs them first) and its namespaces,
    service accounts and RBAC."""
    rendered = render.render_chart(CHART, [REQUIRED], name=RELEASE, namespace=RELEASE_NAMESPACE)
    objects = [doc for _, doc in render.documents(rendered) if doc.get("kind") in _RBAC_KINDS]
    for obj in objects:
        if obj["kind"] in ("ServiceAccount", "Role", "RoleBinding"):
            obj["metadata"].setdefault("namespace", RELEASE_NAMESPACE)
    return objects


def crds() -> list[dict[str, Any]]:
    return [yaml.safe_load(path.read_text()) for path in sorted((CHART / "crds").glob("*.yaml"))]


def _wait_established(plane: ControlPlane, name: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        crd = json.loads(plane.kubectl("get", "crd", name, "-o", "json"))
        found = (crd.get("status") or {}).get("conditions") or []
        conditions = {c["type"]: c["status"] for c in found}
        if conditions.get("Established") == "True":
            return
        time.sleep(0.2)
    raise TimeoutError(f"CRD {name} not Established within {timeout_s}s")


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """The session's control plane (mark the test ``kube``)."""
    root = tmp_path_factory.mktemp("kube")
    with control_plane(root / "plane", with_controller_manager=False) as plane:
        plane.apply([{"apiVersion": "v1", "kind": "Namespace",
                      "metadata": {"name": RELEASE_NAMESPACE}}])  # fmt: skip
        for crd in crds():
            # Debian's kubectl 1.20 refuses the CRD's x-kubernetes-validations (no CEL) unless
            # told not to validate; the server drops them.
            plane.kubectl("apply", "--validate=false", "-f", "-", input=json.dumps(crd))
            _wait_established(plane, crd["metadata"]["name"])
        plane.apply(chart_objects())
        plane.start_controller_manager()
        yield Kube(plane, root)


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of the test's own, named after it (other tests' objects stay out of its
    sight); tests also use it as their node's name, so no kubelet runs another's pods."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    name = f"x-{slug}-{hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:6]}"
    kube.plane.kubectl("create", "namespace", name)
    # Until the controllers give its default service account a token, the API refuses pods
    # there (500, "retry after the token is automatically created").
    kube.plane.service_account_token(name, "default")
    yield name
    kube.plane.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def without_health_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Agents skip their node health checks: not under test here, and their CPU floor fails
    the node of a busy 2-core CI machine, which then gets no work."""
    from hai import agent

    monkeypatch.setattr(agent, "run_checks", lambda *args: [])
