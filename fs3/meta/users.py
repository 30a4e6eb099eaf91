"""fs3 accounts: users with a uid, gid, groups and a token, kept in the meta store.

A meta request carries a token (:class:`fs3.proto.fs3_pb2.Caller`); meta keeps only the
SHA-256 of each token and resolves it to a :class:`~fs3.meta.permissions.Caller`. An
admin user is POSIX's root. A "mount" user (a FUSE mount serving its host's processes) may
say "act as uid X, gid Y, groups Z" per request: the kernel told the mount who calls.
``hai fs3 up`` creates the admin ``root`` and leaves its token in the cluster folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
from collections.abc import Iterable

from fs3.errors import AlreadyExists, InvalidArgument, NotFound, NotPermitted
from fs3.meta.permissions import Caller
from fs3.meta.store import MetaStore, MetaTxn
from fs3.types import User

ADMIN = "root"
"""The admin ``hai fs3 up`` creates."""
_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")  # what useradd accepts


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token() -> tuple[str, str]:
    token = secrets.token_urlsafe(24)
    return token, hash_token(token)


def add_user(store: MetaStore, user: User) -> str:
    """Adds ``user`` (its ``token_hash`` ignored) and returns its new token, shown once.
    Raises InvalidArgument (a bad name or id), AlreadyExists."""
    if not _NAME.fullmatch(user.name):
        raise InvalidArgument(
            f"user name {user.name!r}: use 1-32 lowercase letters, digits, '_', '.' or '-'"
        )
    for what, value in (("uid", user.uid), ("gid", user.gid), *(("group", g) for g in user.groups)):
        if not 0 <= value < 1 << 32:
            raise InvalidArgument(f"{what} {value} is outside 0..4294967295")
    token, digest = _new_token()

    def op(txn: MetaTxn) -> None:
        if txn.user(user.name) is not None:
            raise AlreadyExists(f"user {user.name!r} exists; `rotate` gives it a new token")
        txn.put_user(dataclasses.replace(user, token_hash=digest))

    store.run(op)
    return token


def rotate(store: MetaStore, name: str) -> str:
    """Gives user ``name`` a new token and returns it; the old one stops working at once.
    Raises NotFound."""
    token, digest = _new_token()

    def op(txn: MetaTxn) -> None:
        user = txn.user(name)
        if user is None:
            raise NotFound(f"no user {name!r}")
        txn.put_user(dataclasses.replace(user, token_hash=digest))

    store.run(op)
    return token


def remove(store: MetaStore, name: str) -> None:
    """Removes user ``name``; their files keep their uid. Raises NotFound, NotPermitted
    (the last admin: nobody could manage users afterwards)."""

    def op(txn: MetaTxn) -> None:
        user = txn.user(name)
        if user is None:
            raise NotFound(f"no user {name!r}")
        if user.admin and sum(u.admin for u in txn.users()) == 1:
            raise NotPermitted(f"{name!r} is the last admin; add another admin first")
        txn.delete_user(name)

    store.run(op)


def bootstrap(store: MetaStore, token: str | None, keep: bool = False) -> str | None:
    """Makes sure an admin named :data:`ADMIN` exists whose token is ``token`` (the one a
    cluster folder already keeps). Returns a new token to keep when ``token`` is None or
    no longer valid, else None. With ``keep`` (meta's ``FS3_ADMIN_TOKEN``, from the Helm
    chart's Secret) ``token`` itself becomes the admin's, replacing an older one."""
    if token:
        known = store.run(lambda txn: txn.user_by_token(hash_token(token)))
        if known is not None and known.admin:
            return None
    kept = token if keep else None
    new, digest = (kept, hash_token(kept)) if kept else _new_token()

    def op(txn: MetaTxn) -> None:
        old = txn.user(ADMIN) or User(ADMIN, 0, 0, admin=True)
        txn.put_user(dataclasses.replace(old, admin=True, token_hash=digest))

    store.run(op)
    return None if kept else new


def authenticate(store: MetaStore, token: str) -> User:
    """The user ``token`` belongs to. Raises NotPermitted for a missing or unknown one."""
    if not token:
        raise NotPermitted(
            "no fs3 token: set FS3_TOKEN (an admin gives one with `hai fs3 users add`)"
        )
    user = store.run(lambda txn: txn.user_by_token(hash_token(token)))
    if user is None:
        raise NotPermitted("unknown fs3 token; ask an admin for a new one (`hai fs3 users`)")
    return user


def caller(
    user: User, act: bool = False, uid: int = 0, gid: int = 0, groups: Iterable[int] = ()
) -> Caller:
    """Who a request of ``user`` acts for: ``user`` itself, or with ``act`` (a mount
    user's or an admin's right) the process the mount serves, with no admin power unless uid 0.
    Raises NotPermitted."""
    if not act:
        return Caller(user.uid, user.gid, frozenset(user.groups), user.admin)
    if not (user.mount or user.admin):  # an admin could chown anyway: no more power
        raise NotPermitted(f"user {user.name!r} may not act for others (it is not a mount user)")
    return Caller(uid, gid, frozenset(groups), uid == 0)
