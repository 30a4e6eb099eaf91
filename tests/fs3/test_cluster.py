"""The local cluster's folder is private: fs3 has no accounts of its own, so the modes of
its databases, chunks, config and logs are what keeps other local users out."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fs3.client import FS3FileSystem
from fs3.cluster import LocalCluster
from fs3.errors import ConfigError


def _loose(root: Path) -> list[str]:
    """Every folder and file under ``root`` (itself included) with a group or other bit.

    Local-read sockets are left out: their mode is the storage.local_socket_mode setting,
    who may read chunks through them (behind the 0700 folder, the owner alone)."""
    found = []
    for folder, dirs, files in os.walk(root):
        for path in [Path(folder)] + [Path(folder) / n for n in dirs + files]:
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                continue  # replaced or removed while we walk
            if mode & 0o077 and not stat.S_ISSOCK(mode):
                found.append(f"{path} {stat.S_IMODE(mode):o}")
    return sorted(set(found))


def test_cluster_folder_has_no_group_or_other_bits(
    cluster: LocalCluster, fs3fs: FS3FileSystem
) -> None:
    fs3fs.pipe_file("/private-modes/data.bin", b"x" * 1000)  # some chunks on every target
    assert fs3fs.cat_file("/private-modes/data.bin") == b"x" * 1000
    assert (cluster.root / "meta.db").exists() and (cluster.root / "mgmtd.db").exists()
    assert _loose(cluster.root) == []


def test_looser_folder_is_tightened_and_a_shared_one_refused(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o755)
    LocalCluster(loose)
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    assert _loose(loose) == []  # cluster.json and config.yaml
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(ConfigError, match="open to other accounts"):
        LocalCluster(shared)
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    (home / "notes.txt").write_text("")
    with pytest.raises(ConfigError, match="holds 'notes.txt', which fs3 did not put there"):
        LocalCluster(home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o755
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        LocalCluster(tmp_path / "file")
