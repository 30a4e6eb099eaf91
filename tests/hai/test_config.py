from __future__ import annotations

from pathlib import Path

import pytest

from hai.config import load_config
from hai.errors import ConfigError


def test_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "hai.yaml"
    path.write_text("policy: {min_run_s: 5, preemption: false}\nagent: {heartbeat_s: 3}\n")
    env = {"HAI_AGENT__HEARTBEAT_S": "0.5", "HAI_SCHEDULER__NODE_LEASE_S": "2", "OTHER": "x"}
    config = load_config(path, env=env, overrides={"policy": {"min_run_s": 1}})
    assert config.policy.min_run_s == 1.0 and config.policy.preemption is False
    assert config.agent.heartbeat_s == 0.5
    assert config.scheduler.node_lease_s == 2.0


@pytest.mark.parametrize(
    "overrides",
    [
        {"nope": {}},
        {"agent": {"speed": 1}},
        {"policy": {"order": "random"}},
        {"policy": {"preemption": "maybe"}},
    ],
)
def test_bad_config_names_the_field(overrides: dict) -> None:
    with pytest.raises(ConfigError):
        load_config(env={}, overrides=overrides)
