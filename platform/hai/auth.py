"""Users and tokens: a request carries a token; the store keeps only its SHA-256."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from hai.errors import AuthError, ForbiddenError
from hai.records import ROLE_ADMIN, User
from hai.store import StateStore


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(store: StateStore, name: str, role: str) -> str:
    """Adds a user and returns their new token (shown once; only its hash is kept)."""
    token = secrets.token_urlsafe(24)
    store.add_user(User(name, role), hash_token(token))
    return token


def authenticate(store: StateStore, token: str | None) -> User:
    """The user a token belongs to. Raises AuthError for a missing or unknown token."""
    if not token:
        raise AuthError("no token: set HAI_TOKEN or pass --token (an admin gives you one)")
    user = store.user_by_token_hash(hash_token(token))
    if user is None:
        raise AuthError("unknown token; ask an admin for a new one with `hai users add`")
    return user


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
