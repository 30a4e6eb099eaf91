"""`hai fs3 up/status/down` forward to the cluster functions and manage real processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from hai.cli import main


def test_hai_has_fs3_commands() -> None:
    result = CliRunner().invoke(main, ["fs3", "--help"])
    assert result.exit_code == 0
    for command in ("up", "down", "status", "mgmtd", "meta", "storage"):
        assert command in result.output


def test_up_status_down(tmp_path: Path) -> None:
    fs3 = [sys.executable, "-m", "fs3"]
    args = ["up", str(tmp_path), "--targets", "3", "--replicas", "2", "--detach"]
    up = subprocess.run(fs3 + args, capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        address = up.stdout.strip().splitlines()[-1]
        assert (tmp_path / "address").read_text().strip() == address
        status = subprocess.run(fs3 + ["status", str(tmp_path)], capture_output=True, text=True,
                                timeout=60)  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert "serving" in status.stdout and "offline" not in status.stdout
    finally:
        down = subprocess.run(fs3 + ["down", str(tmp_path)], capture_output=True, text=True,
                              timeout=60)  # fmt: skip
    assert "stopped 5" in down.stdout


def test_ls_lists_files_with_sizes(cluster, fs3fs) -> None:  # type: ignore[no-untyped-def]
    cluster_address, fs = cluster.address, fs3fs
    fs.pipe_file("/ls-test/a/one.bin", b"x" * 1000)
    fs.pipe_file("/ls-test/two.bin", b"y" * 10)
    runner = CliRunner()
    flat = runner.invoke(main, ["fs3", "ls", f"fs3://{cluster_address}/ls-test"])
    assert flat.exit_code == 0, flat.output
    assert flat.output.split() == ["/ls-test/a/", "/ls-test/two.bin"]
    deep = runner.invoke(main, ["fs3", "ls", "-lR", "--address", cluster_address, "/ls-test"])
    assert deep.exit_code == 0, deep.output
    sizes = {line.split()[-1]: int(line.split()[0]) for line in deep.output.splitlines()}
    assert sizes == {"/ls-test/a/": 0, "/ls-test/a/one.bin": 1000, "/ls-test/two.bin": 10}
    missing = runner.invoke(main, ["fs3", "ls", "--address", cluster_address, "/nope"])
    assert missing.exit_code == 1 and "/nope" in missing.output
