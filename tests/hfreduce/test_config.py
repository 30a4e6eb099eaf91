"""Configuration: environment overrides and one clear error per bad value."""

from __future__ import annotations

import pytest

from hfreduce.config import (
    MULTI_NODE_CHUNK_BYTES,
    MULTI_NODE_DEPTH,
    SINGLE_NODE_CHUNK_BYTES,
    SINGLE_NODE_DEPTH,
    HfreduceConfig,
    for_layout,
    load_config,
)
from hfreduce.errors import ConfigError


def test_defaults_then_environment_then_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_config().chunk_bytes is None  # settled by the layout (for_layout)
    monkeypatch.setenv("HFREDUCE_CHUNK_BYTES", "65536")
    monkeypatch.setenv("HFREDUCE_TIMEOUT", "2.5")
    config = load_config(pipeline_depth=3)
    assert (config.chunk_bytes, config.timeout_s, config.pipeline_depth) == (65536, 2.5, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"chunk_bytes": 1000},
            "chunk_bytes: must be a multiple of 64 and at least 4096, got 1000",
        ),
        ({"pipeline_depth": 1}, "pipeline_depth: .* greater than or equal to 2, got 1"),
        ({"timeout_s": 0}, "timeout_s: .* greater than 0, got 0"),
    ],
)
def test_bad_values_name_the_field(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(**kwargs)
    assert isinstance(caught.value, ValueError) and "\n" not in str(caught.value)


def test_unparsable_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HFREDUCE_PIPELINE_DEPTH", "four")
    with pytest.raises(
        ConfigError, match=r"\(HFREDUCE_PIPELINE_DEPTH\): pipeline_depth: .*, got 'four'"
    ):
        load_config()


def test_environment_strings_follow_the_one_coercion_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HFREDUCE_CHUNK_BYTES", "8192")
    monkeypatch.setenv("HFREDUCE_TIMEOUT", "7")
    monkeypatch.setenv("HFREDUCE_NODE_ID", "host-1")  # another hfreduce variable, not a setting
    config = load_config()
    assert (config.chunk_bytes, config.timeout_s) == (8192, 7.0)
    assert isinstance(config.timeout_s, float)
    monkeypatch.setenv("HFREDUCE_TIMEOUT", "soon")
    with pytest.raises(
        ConfigError, match=r"\(HFREDUCE_TIMEOUT\): timeout_s: .* valid number.*, got 'soon'"
    ):
        load_config()
    with pytest.raises(ConfigError, match=r"\(arguments\): chunk_bytes: .*, got 2.5"):
        load_config(chunk_bytes=2.5)


def test_chunk_size_and_depth_follow_the_layout_unless_set() -> None:
    one, three = for_layout(HfreduceConfig(), 1), for_layout(HfreduceConfig(), 3)
    assert (one.chunk_bytes, one.pipeline_depth) == (SINGLE_NODE_CHUNK_BYTES, SINGLE_NODE_DEPTH)
    assert (three.chunk_bytes, three.pipeline_depth) == (MULTI_NODE_CHUNK_BYTES, MULTI_NODE_DEPTH)
    given = for_layout(HfreduceConfig(pipeline_depth=6, chunk_bytes=8192), 3)
    assert (given.chunk_bytes, given.pipeline_depth) == (8192, 6)
