"""`hai doctor`: the report tells the truth about this machine and fails loudly when a hard
requirement is missing."""

from __future__ import annotations

import importlib.metadata
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
from packaging.requirements import Requirement

from hai.doctor import requirement_check, scan_pci_gpus, sqlite_check

HAI = Path(sys.executable).with_name("hai")


def run_hai(*args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.run([str(HAI), *args], env=env, capture_output=True, text=True, timeout=120)


def test_version_matches_installed_distribution() -> None:
    result = run_hai("--version")
    assert result.returncode == 0, result.stderr
    assert importlib.metadata.version("fireflyer") in result.stdout


def test_json_report_describes_this_machine() -> None:
    result = run_hai("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert report["torch"]["cuda_available"] == torch.cuda.is_available()
    assert report["cpu"]["logical_cores"] == os.cpu_count()
    assert report["memory"]["total_bytes"] == psutil.virtual_memory().total
    assert report["sqlite_version"] == sqlite3.sqlite_version
    assert report["fuse"]["dev_fuse"] == os.path.exists("/dev/fuse")
    assert len(report["gpus"]) >= torch.cuda.device_count()
    assert {c["name"] for c in report["checks"]} >= {"python", "torch", "grpcio", "sqlite"}
    assert all(c["ok"] for c in report["checks"])


def test_human_report_exits_zero_and_names_sections() -> None:
    result = run_hai("doctor")
    assert result.returncode == 0, result.stderr
    for item in ("torch", "cpu", "memory", "gpu", "fuse", "sqlite", "postgresql"):
        assert item in result.stdout


def _fake_distribution(root: Path, requires_python: str, requires: list[str]) -> Path:
    """A fireflyer dist-info placed ahead of the real one on PYTHONPATH."""
    info = root / "fireflyer-0.1.0.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", "Name: fireflyer", "Version: 0.1.0"]
    lines.append(f"Requires-Python: {requires_python}")
    lines += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(lines) + "\n")
    return root


def test_missing_dependency_fails_with_one_line_each(tmp_path: Path) -> None:
    path = _fake_distribution(
        tmp_path, ">=3.10", ["no-such-dependency-xyz>=1.0", "click>=999", "pytest; extra == 'test'"]
    )
    result = run_hai("doctor", pythonpath=path)
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2, result.stderr
    assert errors[0].startswith("hai doctor: no-such-dependency-xyz: not installed")
    assert "pip install 'no-such-dependency-xyz>=1.0'" in errors[0]
    assert errors[1].startswith("hai doctor: click: ")
    assert "does not satisfy click>=999" in errors[1]


def test_too_old_python_fails(tmp_path: Path) -> None:
    result = run_hai("doctor", "--json", pythonpath=_fake_distribution(tmp_path, ">=99", []))
    assert result.returncode == 1
    failed = [c for c in json.loads(result.stdout)["checks"] if not c["ok"]]
    assert [c["name"] for c in failed] == ["python"]
    assert "hai doctor: python: " in result.stderr and "needs >=99" in result.stderr


def test_broken_torch_fails(tmp_path: Path) -> None:
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('libtorch_cpu.so missing')")
    result = run_hai("doctor", pythonpath=tmp_path)
    assert result.returncode == 1
    assert "hai doctor: torch import: import torch failed: ImportError: libtorch_cpu.so" in (
        result.stderr
    )


def test_requirement_check_edge_cases() -> None:
    assert requirement_check(Requirement("pytest; extra == 'test'")) is None
    assert requirement_check(Requirement(f"torch=={torch.__version__}")).ok
    assert not requirement_check(Requirement("torch<1")).ok


@pytest.mark.parametrize(("version", "ok"), [("3.35.0", True), ("3.40.1", True), ("3.34.9", False)])
def test_sqlite_minimum(version: str, ok: bool) -> None:
    assert sqlite_check(version).ok is ok


def _pci_device(root: Path, address: str, cls: str, vendor: str, device: str, numa: str) -> None:
    dev = root / "bus" / "pci" / "devices" / address
    dev.mkdir(parents=True)
    for name, value in {
        "class": cls,
        "vendor": vendor,
        "device": device,
        "numa_node": numa,
    }.items():
        (dev / name).write_text(value + "\n")


def test_pci_scan_finds_gpus_with_numa_nodes(tmp_path: Path) -> None:
    _pci_device(tmp_path, "0000:4F:00.0", "0x030200", "0x10de", "0x20b0", "1")  # A100, NUMA 1
    _pci_device(tmp_path, "0000:17:00.0", "0x030200", "0x10de", "0x20b0", "-1")  # no NUMA info
    _pci_device(tmp_path, "0000:03:00.0", "0x020000", "0x15b3", "0x101b", "0")  # a NIC
    _pci_device(tmp_path, "0000:05:00.0", "0x030000", "0x1a03", "0x2000", "0")  # BMC VGA
    gpus = scan_pci_gpus(tmp_path)
    assert [(g.pci_bus_id, g.vendor, g.numa_node) for g in gpus] == [
        ("0000:17:00.0", "NVIDIA", None),
        ("0000:4f:00.0", "NVIDIA", 1),
    ]
    assert gpus[1].name == "NVIDIA device 0x20b0"
