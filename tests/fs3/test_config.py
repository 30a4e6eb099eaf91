"""Configuration loading order and validation; errors map across processes by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from fs3.config import load_config
from fs3.errors import ConfigError, DirectoryNotEmpty, NotFound, Unavailable, error_from_kind
from fs3.paths import normalize


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text("client:\n  address: file:1\n  chunk_size: 65536\n")
    assert load_config(file, env={}).client.address == "file:1"
    cfg = load_config(file, env={"FS3_CLUSTER": "env:2"})
    assert (cfg.client.address, cfg.client.chunk_size) == ("env:2", 65536)
    cfg = load_config(file, env={"FS3_CLUSTER": "env:2"}, overrides={"client": {"address": "x:3"}})
    assert cfg.client.address == "x:3"


def test_bad_values_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="chunk_size"):
        load_config(
            env={"FS3_CONFIG": str(tmp_path / "none")}, overrides={"client": {"chunk_size": 0}}
        )
    with pytest.raises(ConfigError, match="bogus"):
        load_config(env={}, overrides={"bogus": 1})
    with pytest.raises(ConfigError, match="heartbeat_s"):
        load_config(env={}, overrides={"mgmtd": {"heartbeat_s": 5.0}})


def test_errors_rebuild_by_kind() -> None:
    err = error_from_kind("DirectoryNotEmpty", "directory not empty", "/d")
    assert isinstance(err, DirectoryNotEmpty) and isinstance(err, OSError) and err.path == "/d"
    assert isinstance(error_from_kind("NotFound", "gone", "/x"), FileNotFoundError)
    assert isinstance(error_from_kind("NotFound", "gone"), NotFound)
    assert error_from_kind("Unavailable", "down").retryable
    assert isinstance(error_from_kind("Unavailable", "down"), Unavailable)


def test_normalize() -> None:
    assert normalize("a//b/./c/") == "/a/b/c"
    assert normalize("/a/b/../c") == "/a/c"
