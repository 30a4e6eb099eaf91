"""Where a node agent's credential comes from, and how an agent gets one.

The server accepts ``Register`` and ``Heartbeat`` only with the credential of the node they
name (:func:`hai.auth.authenticate_node`), so an agent calls with its own node's
credential, never with a user's token. It finds it in ``HAI_NODE_TOKEN``, else in
``STATE_DIR/nodes/NAME.token``. An agent given neither but an admin's token (``HAI_TOKEN``
or the state folder's token file: the Helm chart's agent DaemonSet) enrols once: it asks
for its node's credential as ``hai nodes add NAME`` does, keeps it in that file, and from
then on calls only with it. ``hai up`` issues its agents' credentials before it starts them
(:func:`prepare_agents`), so they never see the admin token.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hai.auth import check_node_name
from hai.errors import ConfigError
from hai.files import private_dir, replace_text
from hai.rpc import ApiClient
from hai.server import TOKEN_FILE

log = logging.getLogger("hai.credentials")

NODE_TOKEN_ENV = "HAI_NODE_TOKEN"
USER_TOKEN_ENV = "HAI_TOKEN"
NODES_DIR = "nodes"
"""The state folder's folder of node credentials, one ``NAME.token`` (0600) per node."""


def credential_file(state_dir: Path, node: str) -> Path:
    """Where node ``node``'s credential is kept. Raises ConfigError for a name that could
    not be a node's (:func:`hai.auth.check_node_name`)."""
    return state_dir / NODES_DIR / f"{check_node_name(node)}.token"


def save_credential(state_dir: Path, node: str, token: str) -> Path:
    """Keeps ``token`` as node ``node``'s credential (0600, in a 0700 folder)."""
    path = credential_file(state_dir, node)
    private_dir(path.parent)
    replace_text(path, token + "\n")
    return path


class EnrollingClient(ApiClient):
    """An agent's client that has only an admin's token: on its first call it gets its
    node's credential with that token (``AddNode``), saves it and forgets the admin token.
    Enrolling is a call like the agent's others, so an unreachable server is retried by
    the agent's loop like a missed heartbeat."""

    def __init__(
        self, address: str, node: str, state_dir: Path, admin_token: str, timeout_s: float
    ) -> None:
        super().__init__(address, None, timeout_s)
        self._node, self._state_dir, self._admin_token = node, state_dir, admin_token

    def call(self, method: str, timeout_s: float | None = None, **body: Any) -> Any:
        if self.token is None:
            self.token = self._admin_token
            try:
                issued = super().call("AddNode", timeout_s, name=self._node)
            finally:
                self.token = None
            path = save_credential(self._state_dir, self._node, issued["token"])
            self.token, self._admin_token = issued["token"], ""
            log.info("node %s enrolled; its credential is in %s", self._node, path)
        return super().call(method, timeout_s, **body)


def agent_client(address: str, node: str, state_dir: Path, timeout_s: float) -> ApiClient:
    """The client agent ``node`` calls the server with, by its credential
    (``HAI_NODE_TOKEN``, else its file in ``state_dir``), else enrolling with an admin's token
    (``HAI_TOKEN``, else the state folder's token file).

    ``HAI_NODE_TOKEN`` is taken out of this process's environment: ranks inherit the
    agent's environment, and the credential must not reach them.

    Raises:
        ConfigError: there is no credential and no token to enrol with.
    """
    path = credential_file(state_dir, node)
    token = os.environ.pop(NODE_TOKEN_ENV, None)
    if not token and path.exists():
        token = path.read_text().strip()
    if token:
        return ApiClient(address, token, timeout_s)
    admin = os.environ.get(USER_TOKEN_ENV)
    if not admin and (state_dir / TOKEN_FILE).exists():
        admin = (state_dir / TOKEN_FILE).read_text().strip()
    if not admin:
        raise ConfigError(
            f"no credential for node {node}: set {NODE_TOKEN_ENV} to what `hai nodes add "
            f"{node}` printed, or put it in {path}"
        )
    return EnrollingClient(address, node, state_dir, admin, timeout_s)


def prepare_agents(
    admin: ApiClient, state_dir: Path, nodes: list[str], env: dict[str, str]
) -> dict[str, str]:
    """Issues each of ``nodes`` its credential into ``state_dir`` (``hai up``'s agents share
    the server's folder) and returns ``env`` as their environment: without any token, so
    they call with their own credentials only."""
    for node in nodes:
        save_credential(state_dir, node, admin.call("AddNode", name=node)["token"])
    return {k: v for k, v in env.items() if k not in (USER_TOKEN_ENV, NODE_TOKEN_ENV)}
