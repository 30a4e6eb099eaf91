"""Connecting to the Kubernetes API, and what an agent learns about its node from it.

The kubernetes client and kopf come with the ``k8s`` extra (pyproject.toml): only
``hai agent --kubernetes`` and ``hai operator`` use them, so they are imported inside the
functions that need them, after :func:`require_k8s` has checked that they are there.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from typing import Any

from hai.config import K8sConfig
from hai.errors import ConfigError


def require_k8s(command: str, *modules: str) -> None:
    """Checks that ``modules`` (``kubernetes``, ``kopf``) can be imported before ``command``
    uses them.

    Raises:
        ConfigError: one is missing; names it, ``command`` and the extra that installs it.
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:  # broken inside the package: not a missing extra
                raise
            # kopf's marker in the extra skips it below Python 3.11.
            needs = " (Python 3.11+)" if module == "kopf" else ""
            raise ConfigError(
                f"{command} needs {module}{needs}, which fireflyer's k8s extra installs: "
                "pip install 'fireflyer[k8s]'"
            ) from None


def client_configuration(config: K8sConfig) -> Any:
    """The one source of the operator's and agent's credentials, as a
    ``kubernetes.client.Configuration``: ``k8s.api_url`` with ``k8s.token_file`` and
    ``k8s.ca_file`` when set, else the pod's service account, else the kubeconfig
    (``KUBECONFIG`` or ``~/.kube/config``). The server's certificate is always verified.

    Raises:
        ConfigError: none of the three is usable, or a file named in ``k8s`` is unreadable.
    """
    from kubernetes import client
    from kubernetes import config as kube_config

    configuration = client.Configuration()
    if config.api_url:
        return _with_api_url(configuration, config)
    if config.token_file or config.ca_file:
        raise ConfigError("k8s.token_file and k8s.ca_file need k8s.api_url (HAI_K8S__API_URL)")
    try:
        kube_config.load_incluster_config(client_configuration=configuration)
    except kube_config.ConfigException:
        try:
            kube_config.load_kube_config(client_configuration=configuration)
        except (kube_config.ConfigException, OSError) as err:
            raise ConfigError(
                "no Kubernetes credentials: not in a pod and no usable kubeconfig "
                f"({err}); set KUBECONFIG, or k8s.api_url (HAI_K8S__API_URL) to the API server"
            ) from None
    return configuration


def _with_api_url(configuration: Any, config: K8sConfig) -> Any:
    configuration.host = config.api_url
    if config.ca_file:
        _readable(config.ca_file, "k8s.ca_file")
        configuration.ssl_ca_cert = config.ca_file
    if config.token_file:
        _bearer(configuration, config.token_file)
        # Projected service-account tokens rotate: the client calls this before each request.
        configuration.refresh_api_key_hook = lambda c: _bearer(c, config.token_file)
    return configuration


def _readable(path: str, field: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{field}: cannot read {path}: {err}") from None


def _bearer(configuration: Any, token_file: str) -> None:
    token = _readable(token_file, "k8s.token_file").strip()
    configuration.api_key["BearerToken"] = f"Bearer {token}"


def core_api(config: K8sConfig) -> Any:
    """A ``kubernetes.client.CoreV1Api`` with :func:`client_configuration`'s credentials.

    Raises:
        ConfigError: no credentials are found.
    """
    from kubernetes import client

    return client.CoreV1Api(client.ApiClient(client_configuration(config)))


@dataclass
class NodeResources:
    gpus: int
    group: str


def node_resources(core: Any, name: str, config: K8sConfig) -> NodeResources:
    """The node's allocatable ``nvidia.com/gpu`` (what the device plugin offers) and its
    pool, the value of ``k8s.group_label`` (``default`` when unlabelled)."""
    reply = core.read_node(name, _preload_content=False)
    node = json.loads(reply.data)
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    labels = (node.get("metadata") or {}).get("labels") or {}
    return NodeResources(
        int(allocatable.get("nvidia.com/gpu", 0)), labels.get(config.group_label, "default")
    )


def kubernetes_executor(config: K8sConfig, node: str) -> tuple[Any, NodeResources]:
    """What ``hai agent --kubernetes`` runs: the executor for ``node`` (orphaned pods of a
    previous agent removed) and the node's GPUs and pool.

    Raises:
        ConfigError: the kubernetes client is not installed, or no credentials are found.
    """
    import logging

    from hai.executor.k8s import KubernetesExecutor

    require_k8s("hai agent --kubernetes", "kubernetes")
    log = logging.getLogger("hai.agent")
    core = core_api(config)
    executor = KubernetesExecutor(core, config)
    for name in executor.remove_orphans(node):
        log.info("%s: removed pod %s left by a previous agent", node, name)
    return executor, node_resources(core, node, config)


def bootstrap_admin(database_url: str, token: str) -> str | None:
    """Makes ``token`` an admin's (``hai server`` with HAI_ADMIN_TOKEN, as the chart runs
    it): the chart's Secret holds the token the agents and the operator use, instead of
    the random one a fresh server writes to its state folder. Returns the name of the user
    added, or None when a user already has this token."""
    from hai.auth import hash_token
    from hai.records import ROLE_ADMIN, User
    from hai.store import SqlStore

    store = SqlStore(database_url)
    try:
        digest = hash_token(token)
        if store.user_by_token_hash(digest) is not None:
            return None
        taken = {u.name for u in store.list_users()}
        name = "admin" if "admin" not in taken else f"admin-{digest[:8]}"
        store.add_user(User(name, ROLE_ADMIN), digest)
        return name
    finally:
        store.close()
