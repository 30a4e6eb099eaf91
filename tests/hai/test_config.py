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
    ("overrides", "message"),
    [
        ({"nope": {}}, "nope: unknown setting"),
        ({"agent": {"speed": 1}}, "agent.speed: unknown setting; known: .*heartbeat_s"),
        ({"policy": {"order": "random"}}, "policy.order: .*'priority' or 'fifo', got 'random'"),
        ({"policy": {"preemption": "maybe"}}, "policy.preemption: .*boolean.*got 'maybe'"),
        ({"k8s": {"poll_interval_s": 0}}, "k8s.poll_interval_s: .*greater than 0, got 0"),
    ],
)
def test_bad_config_names_the_field(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=r"hai config \(overrides\): " + message):
        load_config(env={}, overrides=overrides)


def test_environment_strings_follow_the_one_coercion_rule() -> None:
    env = {
        "HAI_POLICY__PREEMPTION": "0",
        "HAI_K8S__HOST_NETWORK": "true",
        "HAI_SERVER__PORT": "7811",
        "HAI_AGENT__KILL_GRACE_S": "4",
        "HAI_POLICY__DEFAULT_QUOTAS": '{"20": 3, "10": null}',
        "HAI_SERVER": "10.0.0.1:7700",  # the CLI's server address, not the server group
        "HAI_RESTART_COUNT": "2",  # a job's variable, not a setting
    }
    config = load_config(env=env)
    assert (config.policy.preemption, config.k8s.host_network) == (False, True)
    assert (config.server.port, config.agent.kill_grace_s) == (7811, 4.0)
    assert config.policy.default_quotas == {20: 3, 10: None}
    with pytest.raises(ConfigError, match=r"\(environment .*\): server.port: .*got 'high'"):
        load_config(env={"HAI_SERVER__PORT": "high"})


def test_state_dir_is_one_setting_with_two_names() -> None:
    assert load_config(env={"HAI_STATE_DIR": "/srv/a"}).server.state_dir == "/srv/a"
    both = {"HAI_STATE_DIR": "/srv/a", "HAI_SERVER__STATE_DIR": "/srv/b"}
    assert load_config(env=both).server.state_dir == "/srv/b"
    assert load_config(env={}).server.state_dir == "~/.hai"


def test_file_errors_name_the_file_and_the_field(tmp_path: Path) -> None:
    path = tmp_path / "hai.yaml"
    path.write_text("agent: {heartbeat_s: soon}\n")
    with pytest.raises(ConfigError, match=f"file {path}.*agent.heartbeat_s: .*got 'soon'"):
        load_config(path, env={})
    path.write_text("schedulr: {pass_interval_s: 1}\n")
    with pytest.raises(ConfigError, match="schedulr: unknown setting; known: .*scheduler"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="cannot read hai config file"):
        load_config(tmp_path / "missing.yaml", env={})
