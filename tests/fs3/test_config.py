"""Configuration loading order and validation; errors map across processes by name."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fs3.config import ClientConfig, load_config
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


def test_urls_name_one_mgmtd_or_several() -> None:
    from fs3.client import FS3FileSystem

    several = "fs3://10.0.0.1:8000,10.0.0.2:8000/data/x.parquet"
    assert FS3FileSystem._get_kwargs_from_urls(several) == {
        "address": "10.0.0.1:8000,10.0.0.2:8000"
    }
    assert FS3FileSystem._strip_protocol(several) == "/data/x.parquet"
    assert FS3FileSystem._get_kwargs_from_urls("fs3://datasets/x") == {}
    assert FS3FileSystem._strip_protocol("fs3://datasets/x") == "/datasets/x"


def test_local_reads_and_socket_mode_are_settings(tmp_path: Path) -> None:
    path = tmp_path / "fs3.yaml"
    path.write_text("client: {local_reads: false}\nstorage: {local_socket_mode: 0600}\n")
    config = load_config(path)
    assert config.client.local_reads is False and config.storage.local_socket_mode == 0o600
    assert load_config().client.local_reads is True
    path.write_text("storage: {fsync: 'maybe'}\n")
    with pytest.raises(ConfigError, match=f"file {path}\\): storage.fsync: .*boolean.*got 'maybe'"):
        load_config(path)


def test_reads_get_a_thread_per_cpu_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    def client(**values: object) -> ClientConfig:
        return load_config(env={}, overrides={"client": values}).client

    for cpus, parallel, threads in [(2, 8, 2), (1, 8, 2), (64, 8, 16), (6, 2, 4)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cpus: set(range(n)))
        assert client(parallel=parallel).read_pool_size() == threads, (cpus, parallel)
    assert client(read_threads=5).read_pool_size() == 5
    with pytest.raises(
        ConfigError, match="client.read_threads: .* greater than or equal to 0, got -1"
    ):
        client(read_threads=-1)


def test_environment_strings_follow_the_one_coercion_rule(tmp_path: Path) -> None:
    env = {
        "FS3_STORAGE__FSYNC": "0",
        "FS3_CLIENT__LOCAL_READS": "true",
        "FS3_CLIENT__PARALLEL": "3",
        "FS3_TIMEOUTS__RPC_S": "2",
        "FS3_CLUSTER": "old:1",  # the address's older name, under FS3_CLIENT__ADDRESS
        "FS3_CONFIG": str(tmp_path / "none.yaml"),  # the file's name, not a setting
    }
    config = load_config(env=env)
    assert (config.storage.fsync, config.client.local_reads) == (False, True)
    assert (config.client.parallel, config.timeouts.rpc_s) == (3, 2.0)
    assert config.client.address == "old:1"
    assert load_config(env={**env, "FS3_CLIENT__ADDRESS": "new:2"}).client.address == "new:2"
    with pytest.raises(ConfigError, match=r"\(environment .*\): client.parallel: .*got 'many'"):
        load_config(env={"FS3_CLIENT__PARALLEL": "many"})


def test_unknown_key_in_the_file_names_it_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "fs3.yaml"
    path.write_text("client: {chunk_sise: 65536}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert f"file {path}" in message and "client.chunk_sise: unknown setting" in message
    assert "chunk_size" in message  # the known names, to pick the right one
    path.write_text("client: [1, 2]\n")
    with pytest.raises(ConfigError, match="client: .*got \\[1, 2\\]"):
        load_config(path, env={})
