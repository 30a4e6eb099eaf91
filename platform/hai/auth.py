"""Users and tokens: a request carries a token; the store keeps only its SHA-256."""

from __future__ import annotations

import hashlib
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
