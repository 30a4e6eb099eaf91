"""The job hooks of `deepseek.train`: the hai suspend file and SIGTERM, and the metrics file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deepseek.train_hooks import JobHooks, MetricsLog


def test_without_hai_only_sigterm_suspends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAI_CONTROL_DIR", raising=False)
    before = signal.getsignal(signal.SIGTERM)
    hooks = JobHooks.install()
    try:
        assert hooks.acknowledge_suspend is None and not hooks.should_suspend()
        os.kill(os.getpid(), signal.SIGTERM)
        assert hooks.should_suspend()
    finally:
        hooks.uninstall()
    assert signal.getsignal(signal.SIGTERM) is before


def test_under_hai_the_suspend_file_suspends_and_is_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAI_CONTROL_DIR", str(tmp_path))
    hooks = JobHooks.install()
    try:
        assert not hooks.should_suspend()
        (tmp_path / "suspend").touch()
        assert hooks.should_suspend()
        hooks.acknowledge_suspend()
        hooks.acknowledge_suspend()  # every rank acknowledges; once is enough
        assert (tmp_path / "suspend_ack").exists()
    finally:
        hooks.uninstall()


def test_deepseek_does_not_import_hai_outside_the_platform() -> None:
    code = "import sys, deepseek.train; print('hai' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "HAI_CONTROL_DIR"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == "False"


def test_metrics_log_appends_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"event": "earlier"}\n')
    metrics = MetricsLog(str(path))
    metrics.write("step", step=1, loss=2.5)
    assert json.loads(path.read_text().splitlines()[-1]) == {
        "event": "step",
        "step": 1,
        "loss": 2.5,
    }
    metrics.close()
    metrics.write("late")  # after close: nothing, no error
    MetricsLog(None).write("ignored")
    assert len(path.read_text().splitlines()) == 2
