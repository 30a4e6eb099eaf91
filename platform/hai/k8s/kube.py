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


def core_api(config: K8sConfig) -> Any:
    """A ``kubernetes.client.CoreV1Api``: to ``k8s.api_url`` when set, else with the pod's
    service account, else with ``~/.kube/config``.

    Raises:
        ConfigError: none of the three is available.
    """
    from kubernetes import client
    from kubernetes import config as kube_config

    if config.api_url:
        configuration = client.Configuration()
        configuration.host = config.api_url
        return client.CoreV1Api(client.ApiClient(configuration))
    try:
        kube_config.load_incluster_config()
    except kube_config.ConfigException:
        try:
            kube_config.load_kube_config()
        except (kube_config.ConfigException, OSError) as err:
            raise ConfigError(
                "no Kubernetes credentials: not in a pod and no usable ~/.kube/config "
                f"({err}); set k8s.api_url (HAI_K8S__API_URL) to the API server"
            ) from None
    return client.CoreV1Api()


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
