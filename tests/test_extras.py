"""fireflyer without its optional extras (pyproject.toml): ``k8s`` (kubernetes, kopf) and
``postgres`` (psycopg). Everything else works, and the commands that need an extra say in
one line which one to install.

Each test runs Python in a subprocess whose PYTHONPATH starts with stand-in packages that
raise ModuleNotFoundError on import, as a missing install does; the processes it starts
(the demo's services) inherit the same path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HAI = Path(sys.executable).with_name("hai")
BLOCKED = ("kubernetes", "kopf", "psycopg")


@pytest.fixture(scope="module")
def without_extras(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment in which ``import kubernetes`` (kopf, psycopg) fails as uninstalled."""
    folder = tmp_path_factory.mktemp("without-extras")
    for name in BLOCKED:
        (folder / name).mkdir()
        message = f"No module named {name!r}"
        (folder / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError({message!r}, name={name!r})\n"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HAI_", "FS3_"))}
    return {**env, "PYTHONPATH": str(folder)}


def _run(
    env: dict[str, str], *args: str, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    # From cwd, not the repository: a stale fireflyer.egg-info there would be the metadata.
    return subprocess.run(
        [*args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def test_the_stand_ins_make_the_extras_missing(
    without_extras: dict[str, str], tmp_path: Path
) -> None:
    code = "\n".join(
        f"try:\n    import {name}\nexcept ModuleNotFoundError as e:\n    print(e.name)"
        for name in BLOCKED
    )
    result = _run(without_extras, sys.executable, "-c", code, cwd=tmp_path)
    assert result.stdout.split() == list(BLOCKED), result.stderr


WALK = """
import importlib, json, pkgutil
missing = {}
for top in ("hfreduce", "fs3", "haiscale", "hai", "deepseek"):
    package = importlib.import_module(top)
    for info in pkgutil.walk_packages(package.__path__, top + "."):
        # __main__ runs a command; alembic runs the migration scripts, which need its context.
        if info.name.endswith(".__main__") or info.name.startswith("hai.store.migrations."):
            continue
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as err:
            missing[info.name] = err.name
print(json.dumps(missing))
"""


@pytest.mark.slow
def test_only_the_operator_module_needs_an_extra_to_import(
    without_extras: dict[str, str], tmp_path: Path
) -> None:
    result = _run(without_extras, sys.executable, "-c", WALK, cwd=tmp_path, timeout=170)
    assert result.returncode == 0, result.stderr
    missing = json.loads(result.stdout.splitlines()[-1])
    needs_extra = {module: name for module, name in missing.items() if name in BLOCKED}
    assert needs_extra == {"hai.k8s.operator": "kopf"}


def test_hai_help_and_doctor_run_without_the_extras(
    without_extras: dict[str, str], tmp_path: Path
) -> None:
    helped = _run(without_extras, str(HAI), "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    assert "operator" in helped.stdout and "demo" in helped.stdout
    doctor = _run(without_extras, str(HAI), "doctor", "--json", cwd=tmp_path)
    assert doctor.returncode == 0, doctor.stderr
    checked = {check["name"] for check in json.loads(doctor.stdout)["checks"]}
    assert checked >= {"python", "torch", "grpcio"} and not checked & set(BLOCKED)


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_the_kubernetes_commands_name_the_k8s_extra(
    without_extras: dict[str, str], tmp_path: Path
) -> None:
    operator = _run(without_extras, str(HAI), "operator", "--server", "h:1", cwd=tmp_path)
    assert _one_line_error(operator) == (
        "Error: hai operator needs kubernetes, which fireflyer's k8s extra installs: "
        "pip install 'fireflyer[k8s]'"
    )
    agent_args = ["agent", "--kubernetes", "--name", "gpu-1", "--server", "127.0.0.1:1"]
    agent = _run(
        {**without_extras, "HAI_TOKEN": "t"},
        str(HAI),
        *agent_args,
        "--state-dir",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert _one_line_error(agent) == (
        "Error: hai agent --kubernetes needs kubernetes, which fireflyer's k8s extra "
        "installs: pip install 'fireflyer[k8s]'"
    )


def test_postgresql_urls_name_the_postgres_extra(
    without_extras: dict[str, str], tmp_path: Path
) -> None:
    # Nothing listens on port 1: the driver's absence must be noticed before any connection.
    url = "postgresql://fs3:secret@127.0.0.1:1/fs3"
    meta = _run(
        without_extras,
        str(HAI),
        *["fs3", "meta", "--db", url, "--port", "0", "--mgmtd", "127.0.0.1:1"],
        cwd=tmp_path,
    )
    assert _one_line_error(meta) == (
        "Error: fs3 meta: postgresql://fs3:***@127.0.0.1:1/fs3 needs psycopg 3, which "
        "fireflyer's postgres extra installs: pip install 'fireflyer[postgres]'"
    )
    server = _run(
        {**without_extras, "HAI_SERVER__DATABASE_URL": url},
        str(HAI),
        *["server", "--state-dir", str(tmp_path / "hai"), "--port", "0"],
        cwd=tmp_path,
    )
    assert _one_line_error(server) == (
        "Error: the state store postgresql://fs3:***@127.0.0.1:1/fs3 needs the database "
        "driver psycopg: pip install 'fireflyer[postgres]'"
    )


DEMO_STACK = """
import sys
from pathlib import Path
from hai.demo import DemoStack
with DemoStack(Path(sys.argv[1])) as stack:
    print(stack.fs3.address, stack.platform.address)
"""


@pytest.mark.slow
def test_the_demos_clusters_start_without_the_extras(
    without_extras: dict[str, str], tmp_path: Path
) -> None:
    root = tmp_path / "demo"
    result = _run(without_extras, sys.executable, "-c", DEMO_STACK, str(root), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 2, result.stdout
