"""deploy/Dockerfile's pip install lines, run here in a fresh virtual environment: the image
installs the extras it runs (`fuse`, `k8s`, `postgres`), and pyfuse3 builds and imports from
what the Dockerfile copies.

No container engine runs on our machines, so the install runs outside one, from a folder
holding only what the build stage COPYs. The environment sees this test's own
site-packages through a .pth file: every dependency this repository's install already has
(torch among them) is satisfied from there and is neither downloaded nor built again, while
fireflyer, pyfuse3 and whatever else the lines need are installed into the new environment.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.deploy.chart import DEPLOY

DOCKERFILE = DEPLOY / "Dockerfile"
PIP = "/opt/hai/bin/pip"


def build_stage() -> list[str]:
    """The build stage's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("#")]
    stages = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    return lines[stages[0] : stages[1]]


def pip_installs() -> list[list[str]]:
    """Every ``pip install`` of the build stage as arguments, with its ARG defaults filled in."""
    stage = build_stage()
    args = dict(line.split(None, 1)[1].split("=", 1) for line in stage if line.startswith("ARG "))
    commands = []
    for line in stage:
        if not line.startswith("RUN "):
            continue
        for command in line[len("RUN ") :].split("&&"):
            words = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], command))
            if words[:2] == [PIP, "install"]:
                commands.append(words[2:])
    return commands


IMAGE_EXTRAS = {"fuse", "k8s", "postgres"}
"""What the image runs: ``hai fs3 mount`` (fuse), ``hai operator`` and ``hai agent
--kubernetes`` (k8s; the chart runs both), fs3 meta/mgmtd and the hai server on a
postgresql:// database (postgres)."""


def test_the_image_installs_the_extras_it_runs() -> None:
    installs = pip_installs()
    extras = [
        set(found.group(1).split(","))
        for command in installs
        for word in command
        if (found := re.fullmatch(r"\.\[([\w,-]+)\]", word))
    ]
    assert any(IMAGE_EXTRAS <= installed for installed in extras), installs


FUSE_EXTRA = ("pyfuse3", "trio")
"""The packages the fuse extra adds (pyproject.toml), as their site-packages entries begin."""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_dockerfiles_pip_install_builds_and_imports_pyfuse3(tmp_path: Path) -> None:
    if subprocess.run(["pkg-config", "--exists", "fuse3"], check=False).returncode != 0:
        pytest.skip("no libfuse 3 headers (Debian: apt-get install libfuse3-dev pkg-config)")
    root = DEPLOY.parent
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for line in build_stage():
        if line.startswith("COPY ") and "--from" not in line:
            *sources, _dest = line.split()[1:]
            for source in sources:
                if (root / source).is_dir():
                    shutil.copytree(root / source, src / source, ignore=ignore)
                else:
                    shutil.copy(root / source, src / source)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # Borrow this environment's packages (torch is gigabytes), all but the fuse extra's own,
    # so that pip must build and install those for the test to pass.
    borrowed = tmp_path / "borrowed"
    borrowed.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.lower().startswith(FUSE_EXTRA):
            (borrowed / entry.name).symlink_to(entry)
    (Path(site) / "_dependencies.pth").write_text(f"{borrowed}\n")
    for args in pip_installs():
        result = subprocess.run(
            [python, "-m", "pip", "install", *args],
            cwd=src,
            capture_output=True,
            text=True,
            timeout=800,
        )
        assert result.returncode == 0, (
            f"pip install {shlex.join(args)}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    check = (
        "import kopf, kubernetes, psycopg, pyfuse3, trio, fs3.fuse; "
        "print(fs3.__file__); print(pyfuse3.__file__)"
    )
    # From tmp_path: run from the repository, `import fs3` would find its source folder.
    result = subprocess.run(
        [python, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for where in result.stdout.split():
        assert Path(where).resolve().is_relative_to(venv.resolve()), where
