"""A real Kubernetes control plane on loopback for the ``kube`` tests: etcd, kube-apiserver
(TLS, a token file, RBAC, an audit log, OwnerReferencesPermissionEnforcement) and
kube-controller-manager (namespaces, garbage collection by owner references, service
accounts and their token Secrets). The binaries come from deploy/kube/build-apiserver.sh.

No scheduler and no kubelet run: pods stay Pending unless a test plays the kubelet's part
through the API (tests/kube/kubelet.py).

By hand: ``python -m tests.kube.control_plane DIR`` starts one, prints its admin
kubeconfig's path and runs until interrupted.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "deploy" / "kube" / "build-apiserver.sh"
VERSION = "v1.20.2"
ADMIN_TOKEN_USER = "admin"
_READY_S = 90  # the apiserver answers /readyz after 3.5-7 s here, far longer on a busy CI
_STOP_S = 10


def binaries() -> Path | None:
    """The folder holding kube-apiserver, kube-controller-manager, etcd and kubectl, or
    None when deploy/kube/build-apiserver.sh has not built them (this does not build)."""
    reply = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--if-built"], capture_output=True, text=True, check=False
    )
    return Path(reply.stdout.strip()) if reply.returncode == 0 else None


def kube_missing() -> str | None:
    """Why the ``kube`` tests cannot run here, or None."""
    if binaries() is None:
        return (
            f"Kubernetes {VERSION} not built (run {BUILD_SCRIPT.relative_to(REPO)}; .ci/run does)"
        )
    if not os.path.exists("/usr/bin/openssl"):
        return "openssl not installed"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_certificates(pki: Path) -> None:
    """A CA, the apiserver's serving certificate for 127.0.0.1, and the service-account
    signing key pair."""
    pki.mkdir(mode=0o700)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout",
             "ca.key", "-out", "ca.crt", "-subj", "/CN=test-kube-ca", cwd=pki)  # fmt: skip
    (pki / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
             "-out", "server.csr", "-subj", "/CN=kube-apiserver", cwd=pki)  # fmt: skip
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.crt",
             cwd=pki)  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


_AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}


class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager under ``root``; :meth:`stop` ends them
    by pid (each in its own process group), also after a failed test."""

    def __init__(self, root: Path, bin_dir: Path) -> None:
        self.root = root
        self.bin = bin_dir
        self.pki = root / "pki"
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.admin_token = base64.urlsafe_b64encode(os.urandom(24)).decode()
        self.audit_log = root / "audit.log"
        self.admin_kubeconfig = root / "admin.kubeconfig"
        self._procs: list[subprocess.Popen] = []

    # -- starting and stopping --------------------------------------------------------

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _make_certificates(self.pki)
        tokens = self.root / "tokens.csv"
        tokens.write_text(f'{self.admin_token},{ADMIN_TOKEN_USER},1,"system:masters"\n')
        tokens.chmod(0o600)
        policy = self.root / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(_AUDIT_POLICY))
        self.write_kubeconfig(self.admin_kubeconfig, ADMIN_TOKEN_USER, self.admin_token)
        etcd_port, peer_port = _free_port(), _free_port()
        etcd = f"http://127.0.0.1:{etcd_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        self._spawn("etcd", [
            "--name", "test", "--data-dir", str(self.root / "etcd"),
            "--listen-client-urls", etcd, "--advertise-client-urls", etcd,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}",
        ])  # fmt: skip
        self._spawn("kube-apiserver", [
            f"--etcd-servers={etcd}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}", "--insecure-port=0",
            f"--tls-cert-file={self.pki / 'server.crt'}",
            f"--tls-private-key-file={self.pki / 'server.key'}",
            f"--client-ca-file={self.pki / 'ca.crt'}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=RBAC",
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={self.pki / 'sa.pub'}",
            f"--service-account-signing-key-file={self.pki / 'sa.key'}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            # Watches end after 10-20 s instead of 30-60 min, so every test sees its
            # clients resume expired watches.
            "--min-request-timeout=10",
            f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
        ])  # fmt: skip
        self._wait_ready()

    def start_controller_manager(self) -> None:
        """Garbage collection, namespace deletion and service-account tokens. Start it after
        the CRDs are applied: it notices new resources only at its 30 s rescan."""
        self._spawn("kube-controller-manager", [
            f"--kubeconfig={self.admin_kubeconfig}",
            "--controllers=namespace,garbagecollector,serviceaccount,serviceaccount-token",
            f"--service-account-private-key-file={self.pki / 'sa.key'}",
            f"--root-ca-file={self.pki / 'ca.crt'}",
            "--leader-elect=false", "--port=0", "--secure-port=0",
        ])  # fmt: skip

    def _spawn(self, name: str, args: list[str]) -> None:
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [str(self.bin / name), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stopped as a group, whatever it started
        )
        log.close()
        self._procs.append(proc)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_S
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        request = urllib.request.Request(
            f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        while True:
            for proc in self._procs:
                if proc.poll() is not None:
                    name = Path(proc.args[0]).name
                    tail = (self.root / f"{name}.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(request, context=context, timeout=5) as reply:
                    if reply.status == 200:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"kube-apiserver not ready within {_READY_S}s")
            time.sleep(0.25)

    def stop(self) -> None:
        for proc in reversed(self._procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=_STOP_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._procs.clear()

    # -- credentials ------------------------------------------------------------------

    def write_kubeconfig(self, path: Path, user: str, token: str, namespace: str = "") -> Path:
        """A kubeconfig (0600) for ``user`` authenticating with ``token``."""
        context: dict[str, Any] = {"cluster": "test", "user": user}
        if namespace:
            context["namespace"] = namespace
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority": str(self.pki / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "test", "context": context}],
            "current-context": "test",
        }
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(config))
        return path

    def kubectl(self, *args: str, input: str | None = None, kubeconfig: Path | None = None) -> str:
        """Runs kubectl (Debian's, of the same version) as admin unless told otherwise."""
        reply = subprocess.run(
            [str(self.bin / "kubectl"), f"--kubeconfig={kubeconfig or self.admin_kubeconfig}",
             *args],
            input=input, capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        if reply.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {reply.stderr.strip()}")
        return reply.stdout

    def apply(self, objects: list[dict[str, Any]]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1",
                                                            "items": objects}))  # fmt: skip

    def service_account_token(self, namespace: str, name: str, timeout_s: float = 60) -> str:
        """The token of service account ``name``, from the Secret the token controller makes
        for it (Kubernetes 1.20 still makes one per service account)."""
        deadline = time.monotonic() + timeout_s
        while True:
            # A new namespace's default account is made by a controller, a moment later.
            found = self.kubectl("get", "serviceaccount", "-n", namespace, name,
                                 "--ignore-not-found", "-o", "json")  # fmt: skip
            account = json.loads(found) if found.strip() else {}
            for ref in account.get("secrets") or []:
                secret = json.loads(
                    self.kubectl("get", "secret", "-n", namespace, ref["name"], "-o", "json")
                )
                token = (secret.get("data") or {}).get("token")
                if token:
                    return base64.b64decode(token).decode()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no token for service account {namespace}/{name}")
            time.sleep(0.25)

    def audit_events(self) -> list[dict[str, Any]]:
        """The audit log's events (level Metadata: who did what, and the answer's code)."""
        if not self.audit_log.exists():
            return []
        lines = self.audit_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]


@contextlib.contextmanager
def control_plane(root: Path, with_controller_manager: bool = True) -> Iterator[ControlPlane]:
    """A started control plane, stopped on exit; raises RuntimeError when not built."""
    bin_dir = binaries()
    if bin_dir is None:
        raise RuntimeError(kube_missing() or "Kubernetes binaries not built")
    plane = ControlPlane(root, bin_dir)
    try:
        plane.start()
        if with_controller_manager:
            plane.start_controller_manager()
        yield plane
    finally:
        plane.stop()


def main() -> None:
    root = Path(sys.argv[1]).resolve()
    # SIGTERM (kill, timeout) ends it as Ctrl-C does: the daemons run in process groups of
    # their own and would outlive it otherwise.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with control_plane(root) as plane:
        print(plane.admin_kubeconfig, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
