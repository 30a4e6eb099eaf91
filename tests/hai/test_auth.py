"""hai.auth: the three kinds of caller, on every store backend (the ``store`` fixture)."""

from __future__ import annotations

import pytest

from hai.auth import (
    RunTokens,
    authenticate,
    authenticate_node,
    create_user,
    issue_node_credential,
    rotate_token,
)
from hai.errors import AuthError, ConfigError, ForbiddenError, NotFoundError
from hai.store import StateStore


def test_a_node_credential_acts_only_as_its_node(store: StateStore) -> None:
    first, replaced = issue_node_credential(store, "gpu-1", 1.0)
    assert not replaced
    authenticate_node(store, first, "gpu-1")
    with pytest.raises(
        ForbiddenError, match="^the credential of node 'gpu-1' may not act as node 'gpu-2'$"
    ):
        authenticate_node(store, first, "gpu-2")
    second, replaced = issue_node_credential(store, "gpu-1", 2.0)
    assert replaced and second != first
    authenticate_node(store, second, "gpu-1")
    with pytest.raises(AuthError, match="^an unknown token may not act as a node"):
        authenticate_node(store, first, "gpu-1")  # re-issuing revoked it
    with pytest.raises(AuthError, match="^no token: node calls need node gpu-1's credential"):
        authenticate_node(store, None, "gpu-1")
    assert store.node_by_credential_hash(second) is None  # only the hash is kept


def test_user_and_run_tokens_are_no_node_credentials(store: StateStore) -> None:
    ann = create_user(store, "ann", "user")
    with pytest.raises(AuthError, match="^ann's user token may not act as a node: node calls"):
        authenticate_node(store, ann, "gpu-1")
    run = RunTokens(store).issue(7)
    with pytest.raises(AuthError, match="^run 7's token may not act as a node"):
        authenticate_node(store, run, "gpu-1")


def test_user_calls_name_the_credential_they_were_given(store: StateStore) -> None:
    node, _ = issue_node_credential(store, "gpu-1", 1.0)
    for token, kind in [
        (node, "node gpu-1's credential"),
        (RunTokens(store).issue(3), "run 3's token"),
    ]:
        with pytest.raises(AuthError) as info:
            authenticate(store, token)
        assert (
            str(info.value)
            == f"this is {kind}; user calls need a user token (`hai users add` gives one)"
        )
    with pytest.raises(AuthError, match="^unknown token"):
        authenticate(store, "made-up")


def test_a_rotated_token_replaces_the_old_one(store: StateStore) -> None:
    old = create_user(store, "ann", "admin")
    new = rotate_token(store, "ann")
    assert authenticate(store, new).name == "ann"
    with pytest.raises(AuthError, match="^unknown token"):
        authenticate(store, old)
    with pytest.raises(NotFoundError):
        rotate_token(store, "nobody")


@pytest.mark.parametrize("name", ["", "../etc", "a/b", "-x", ".hidden", "x" * 129, "gpu 1"])
def test_a_node_name_is_never_a_path(store: StateStore, name: str) -> None:
    with pytest.raises(ConfigError, match="node name"):
        issue_node_credential(store, name, 1.0)
