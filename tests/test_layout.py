"""The repository layout and the editable install behave as ARCHITECTURE.md promises."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {
    "hfreduce": REPO / "hfreduce",
    "fs3": REPO / "fs3",
    "haiscale": REPO / "haiscale",
    "hai": REPO / "platform" / "hai",
    "deepseek": REPO / "models" / "deepseek",
    "testhosts": REPO / "testhosts",  # the several-hosts harness, shipped for benchmarks
}


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("folder", ["platform", "models"])
def test_root_folders_are_not_packages(folder: str) -> None:
    assert not (REPO / folder / "__init__.py").exists(), (
        f"{folder}/__init__.py would shadow a standard or common module; map packages instead"
    )


def test_stdlib_platform_works_from_repository_root() -> None:
    result = _python(
        "import platform, torch; print(platform.system()); print(platform.__file__)", REPO
    )
    assert result.returncode == 0, result.stderr
    system, where = result.stdout.split()
    assert system == __import__("platform").system()
    assert not Path(where).resolve().is_relative_to(REPO)


def test_packages_import_from_outside_repository(tmp_path: Path) -> None:
    code = "\n".join(f"import {name}; print({name}.__file__)" for name in PACKAGES)
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    files = [Path(line) for line in result.stdout.split()]
    for (name, folder), file in zip(PACKAGES.items(), files, strict=True):
        assert file.resolve().parent == folder, f"{name} imported from {file}, not {folder}"


# Test-only modules: what the packages must never import (they ship without tests/).
TEST_ONLY = {"tests", "pytest", "hypothesis"}


def _imported_roots(file: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_test_scaffolding_stays_out_of_the_packages() -> None:
    offenders = [
        f"{file.relative_to(REPO)} imports {', '.join(sorted(found))}"
        for folder in PACKAGES.values()
        for file in sorted(folder.rglob("*.py"))
        if (found := _imported_roots(file) & TEST_ONLY)
    ]
    assert offenders == [], "test scaffolding belongs under tests/: " + "; ".join(offenders)
