"""Who is calling: users (tokens with a role), nodes (a credential bound to one node's
name) and runs (a per-run token). A request carries one token; the store keeps only the
SHA-256 of user tokens and node credentials, and run tokens are MACs (:class:`RunTokens`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from hai.errors import AuthError, ConfigError, ForbiddenError
from hai.records import ROLE_ADMIN, User
from hai.store import StateStore


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(store: StateStore, name: str, role: str) -> str:
    """Adds a user and returns their new token (shown once; only its hash is kept)."""
    token = secrets.token_urlsafe(24)
    store.add_user(User(name, role), hash_token(token))
    return token


def rotate_token(store: StateStore, name: str) -> str:
    """Gives user ``name`` a new token and returns it (shown once); the old one stops
    working at once. Raises NotFoundError for an unknown user."""
    token = secrets.token_urlsafe(24)
    store.set_user_token_hash(name, hash_token(token))
    return token


def authenticate(store: StateStore, token: str | None) -> User:
    """The user a token belongs to.

    Raises:
        AuthError: the token is missing, unknown, or a node's or a run's (named, so a
            misplaced credential is told apart from a wrong one).
    """
    if not token:
        raise AuthError("no token: set HAI_TOKEN or pass --token (an admin gives you one)")
    user = store.user_by_token_hash(hash_token(token))
    if user is None:
        kind = describe_token(store, token)
        if kind == UNKNOWN:
            raise AuthError("unknown token; ask an admin for a new one with `hai users add`")
        raise AuthError(f"this is {kind}; user calls need a user token (`hai users add` gives one)")
    return user


UNKNOWN = "an unknown token"
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""Kubernetes node names (DNS subdomains) and more; never a path: an agent keeps its
credential in a file named after its node."""


def check_node_name(name: str) -> str:
    """Returns ``name``. Raises ConfigError unless it matches :data:`NODE_NAME`."""
    if not NODE_NAME.fullmatch(name):
        raise ConfigError(
            f"node name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def describe_token(store: StateStore, token: str) -> str:
    """Whose token this is, in words: a user's, a node's credential, a run's, or
    :data:`UNKNOWN`; for error messages, never for deciding."""
    digest = hash_token(token)
    if (user := store.user_by_token_hash(digest)) is not None:
        return f"{user.name}'s user token"
    if (node := store.node_by_credential_hash(digest)) is not None:
        return f"node {node}'s credential"
    try:
        return f"run {RunTokens(store).run_id_of(token)}'s token"
    except AuthError:
        return UNKNOWN


def issue_node_credential(store: StateStore, node: str, now: float) -> tuple[str, bool]:
    """A new credential for ``node`` (shown once; only its hash is kept), and whether it
    replaced an earlier one, which stops working at once. Raises ConfigError for a bad
    name (:func:`check_node_name`)."""
    token = secrets.token_urlsafe(32)
    return token, store.set_node_credential(check_node_name(node), hash_token(token), now)


def authenticate_node(store: StateStore, token: str | None, node: str) -> None:
    """Checks that ``token`` is the credential of ``node``.

    Raises:
        AuthError: the token is missing or not a node credential at all.
        ForbiddenError: it is another node's credential (both named).
    """
    how = f"node calls need node {node}'s credential (`hai nodes add {node}` issues one)"
    if not token:
        raise AuthError(f"no token: {how}")
    owner = store.node_by_credential_hash(hash_token(token))
    if owner is None:
        raise AuthError(f"{describe_token(store, token)} may not act as a node: {how}")
    if owner != node:
        raise ForbiddenError(f"the credential of node {owner!r} may not act as node {node!r}")


def require_admin(user: User, action: str) -> None:
    if user.role != ROLE_ADMIN:
        raise ForbiddenError(f"{action} needs the admin role; {user.name!r} is a {user.role}")


def require_owner(user: User, owner: str, action: str, job_id: int) -> None:
    """Users may act on their own jobs only; admins on any."""
    if user.role != ROLE_ADMIN and user.name != owner:
        raise ForbiddenError(
            f"{user.name!r} may not {action} job {job_id}: it belongs to {owner!r}"
        )


def may_read(user: User, owner: str) -> bool:
    """Whether ``user`` may read a job's spec, events and output: its owner and admins."""
    return user.role == ROLE_ADMIN or user.name == owner


def require_reader(user: User, owner: str, job_id: int, what: str) -> None:
    """Raises ForbiddenError unless :func:`may_read`; ``what`` names what was asked for."""
    if not may_read(user, owner):
        raise ForbiddenError(
            f"job {job_id} belongs to {owner}; only its owner or an admin may read its {what}"
        )


class RunTokens:
    """Tokens a run's ranks call the server with: ``RUN_ID.MAC``, the MAC keyed by a secret
    kept in the store. Nothing per run is stored, so the scheduler can hand a run's token
    to its agents on every heartbeat, and a restarted server still accepts it."""

    SETTING = "run_token_secret"

    def __init__(self, store: StateStore) -> None:
        self._key = bytes.fromhex(store.setting_once(self.SETTING, secrets.token_hex(32)))

    def _mac(self, run_id: int) -> str:
        return hmac.new(self._key, f"run:{run_id}".encode(), hashlib.sha256).hexdigest()

    def issue(self, run_id: int) -> str:
        return f"{run_id}.{self._mac(run_id)}"

    def run_id_of(self, token: str | None) -> int:
        """The run a token was issued to. Raises AuthError for a missing or forged one."""
        run_id, _, mac = (token or "").partition(".")
        if not run_id.isdigit() or not hmac.compare_digest(mac, self._mac(int(run_id))):
            raise AuthError("not a run token: only a job's own ranks may use its whole-life state")
        return int(run_id)
