"""Random file operations on fs3 and on a local directory must leave the same tree."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from fs3.client import FS3FileSystem
from fs3.cluster import LocalCluster

NAMES = st.sampled_from(["a", "b", "c"])
DIRS = st.sampled_from(["", "d", "d/e"])
DATA = st.binary(max_size=3000)


def _outcome(fn) -> str:  # type: ignore[no-untyped-def]
    try:
        fn()
        return "ok"
    except OSError as err:
        return (
            type(err).__mro__[[c.__module__ for c in type(err).__mro__].index("builtins")].__name__
        )


class Fs3VsLocal(RuleBasedStateMachine):
    fs: FS3FileSystem

    @initialize()
    def setup(self) -> None:
        self.local = Path(tempfile.mkdtemp())
        self.root = f"/sm{id(self)}"
        self.fs.makedirs(self.root, exist_ok=True)

    def _paths(self, d: str, name: str) -> tuple[str, Path]:
        rel = f"{d}/{name}".lstrip("/")
        return f"{self.root}/{rel}", self.local / rel

    @rule(d=DIRS, name=NAMES, data=DATA)
    def write(self, d: str, name: str, data: bytes) -> None:
        remote, local = self._paths(d, name)
        if local.is_dir():
            return
        local.parent.mkdir(parents=True, exist_ok=True)
        if local.parent.is_dir():
            local.write_bytes(data)
            self.fs.pipe_file(remote, data)

    @rule(d=DIRS, name=NAMES, data=DATA)
    def append(self, d: str, name: str, data: bytes) -> None:
        remote, local = self._paths(d, name)
        if local.is_file():
            with local.open("ab") as f:
                f.write(data)
            with self.fs.open(remote, "ab") as f:
                f.write(data)

    @rule(d=DIRS, name=NAMES)
    def mkdir(self, d: str, name: str) -> None:
        remote, local = self._paths(d, name)
        assert _outcome(lambda: local.mkdir()) == _outcome(
            lambda: self.fs.mkdir(remote, create_parents=False)
        )

    @rule(d=DIRS, name=NAMES)
    def remove(self, d: str, name: str) -> None:
        remote, local = self._paths(d, name)
        op = (lambda: local.rmdir()) if local.is_dir() else (lambda: local.unlink())
        assert _outcome(op) == _outcome(lambda: self.fs._rm(remote))

    @rule(src=NAMES, dst=NAMES, d=DIRS)
    def rename(self, src: str, dst: str, d: str) -> None:
        rs, ls_ = self._paths("", src)
        rd, ld = self._paths(d, dst)
        if (
            ls_.exists()
            and (ld.parent.is_dir())
            and not (ls_.is_dir() and str(ld).startswith(str(ls_)))
        ):
            assert _outcome(lambda: ls_.rename(ld)) == _outcome(lambda: self.fs.rename(rs, rd))

    @rule(d=DIRS, name=NAMES, size=st.integers(0, 5000))
    def truncate(self, d: str, name: str, size: int) -> None:
        remote, local = self._paths(d, name)
        if local.is_file():
            with local.open("r+b") as f:
                f.truncate(size)
            self.fs.truncate(remote, size)

    @invariant()
    def same_tree(self) -> None:
        if not hasattr(self, "local"):
            return
        want = {
            str(p.relative_to(self.local)): (p.read_bytes() if p.is_file() else None)
            for p in self.local.rglob("*")
        }
        got = {}
        for path, info in self.fs.find(self.root, withdirs=True, detail=True).items():
            rel = path[len(self.root) + 1 :]
            if rel:
                got[rel] = self.fs.cat_file(path) if info["type"] == "file" else None
        assert got == want

    def teardown(self) -> None:
        if hasattr(self, "local"):
            shutil.rmtree(self.local)
            self.fs.rm(self.root, recursive=True)


@pytest.mark.slow
def test_fs3_matches_local_directory(cluster: LocalCluster) -> None:
    Fs3VsLocal.fs = FS3FileSystem(cluster.address, chunk_size=1024, skip_instance_cache=True)
    run_state_machine_as_test(
        Fs3VsLocal,
        settings=settings(
            max_examples=15,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
