"""`hai demo --hosts`: the demo's services on test hosts of their own (docs/hosts.md), a
storage host cut off midway, and training and checkpoints unaffected."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hai.demo import DemoOptions, run_demo
from testhosts import Hosts, hosts_missing

from .demo_support import processes_under

# As tests/hai/test_demo.py: the preemption lands midway also where a step takes 0.1 s;
# the storage host is cut off after the resume's first steps and connected again later.
OPTIONS = DemoOptions(steps=40, preempt_at=0.15, checkpoint_every=4, urgent_steps=2)
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder every test host sees (each has its own /tmp, so not pytest's tmp_path)."""
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="demo-hosts-") as path:
        yield Path(path)


@pytest.mark.hosts
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_demo_on_hosts_survives_a_storage_host_cut_off(shared_dir: Path) -> None:
    root = shared_dir / "demo"
    summary = run_demo(root, OPTIONS, hosts=True)
    assert summary.steps == OPTIONS.steps and summary.runs == 2 and summary.suspends == 1
    assert summary.resumed_from_step == summary.suspended_at_step
    assert summary.loss_end < summary.loss_start
    assert "cut off at step" in summary.cut_off, summary.cut_off
    assert "storage-2 offline by then" in summary.cut_off, summary.cut_off
    assert "resynced and serving again" in summary.cut_off, summary.cut_off
    assert "read back in full" in summary.cut_off, summary.cut_off
    assert OPTIONS.steps in summary.checkpoints
    # Each node kept its own state folder; nothing is left running, no test host left.
    assert sorted(p.name for p in (root / "hai" / "agents").iterdir()) == ["node-0", "node-1"]
    assert processes_under(root) == []
    cut = re.search(r"storage host (ffh[0-9a-f]{4})-3 ", summary.cut_off)
    assert cut is not None and cut.group(1) not in Hosts.instances(), summary.cut_off


def _demo(*argv: str, prefix: tuple[str, ...] = ()) -> list[str]:
    """``hai demo --hosts ARGV``'s lines on stderr, after checking it failed with 1."""
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "hai", "demo", "--hosts", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert done.returncode == 1, done
    return done.stderr.strip().splitlines()


def test_demo_on_hosts_says_what_it_needs_in_one_line(shared_dir: Path) -> None:
    assert _demo("--keep", str(shared_dir / "a")) == [
        "Error: --keep is not available with --hosts: the test hosts go with the demo"
    ]
    if os.geteuid() == 0:  # as a second account, which may not make test hosts
        (said,) = _demo(str(shared_dir / "b"), prefix=NOBODY)
        assert said.startswith("Error: hai demo --hosts runs its services on test hosts")
        assert "not root" in said
    if hosts_missing() is None:
        (said,) = _demo("/tmp/demo-hosts")
        assert said.startswith("Error: /tmp/demo-hosts is under /tmp, /dev/shm"), said
    assert not (shared_dir / "a").exists() and not (shared_dir / "b").exists()
