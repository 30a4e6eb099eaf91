"""`hai fs3 up/status/down` forward to the cluster functions and manage real processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner, Result

from fs3.cli_util import human
from fs3.client import FS3FileSystem
from fs3.cluster import LocalCluster
from hai.cli import main

from ..waiting import wait_for


def test_hai_has_fs3_commands() -> None:
    result = CliRunner().invoke(main, ["fs3", "--help"])
    assert result.exit_code == 0
    for command in ("up", "down", "status", "mgmtd", "meta", "storage"):
        assert command in result.output


def test_up_status_down(tmp_path: Path) -> None:
    fs3 = [sys.executable, "-m", "fs3"]
    args = [
        "up",
        str(tmp_path),
        "--targets",
        "3",
        "--replicas",
        "2",
        "--mgmtds",
        "2",
        "--metas",
        "2",
        "--detach",
    ]
    up = subprocess.run(fs3 + args, capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        address = up.stdout.strip().splitlines()[-1]
        assert (tmp_path / "address").read_text().strip() == address
        assert len(address.split(",")) == 2
        status = subprocess.run(
            fs3 + ["status", str(tmp_path)], capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stderr
        assert "serving" in status.stdout and "offline" not in status.stdout
        roles = status.stdout.splitlines()[0]
        assert roles.count(" primary") == 1 and roles.count(" standby") == 1, roles
        metas = status.stdout.splitlines()[1]
        assert metas.startswith("meta: ") and len(metas.split(",")) == 2, metas
    finally:
        down = subprocess.run(
            fs3 + ["down", str(tmp_path)], capture_output=True, text=True, timeout=60
        )
    assert down.stdout.startswith("stopped ") and down.stdout.count("(pid ") == 7


def test_status_targets_chains_df(cluster: LocalCluster, fs3fs: FS3FileSystem) -> None:
    fs3fs.pipe_file("/df-test/f", b"x" * 300_000)
    a = f"--address={cluster.address}"
    wait_for(  # the targets report new chunks with their heartbeats
        "df to count the file's three replicas",
        lambda: json.loads(_fs3("df", "--json", a).stdout)["chunk_bytes"] >= 3 * 300_000,
    )
    status = _fs3("status", str(cluster.root))
    assert status.exit_code == 0, status.output
    assert f"mgmtd: {cluster.mgmtd_address()} primary" in status.stdout
    assert f"meta: {cluster.meta_address()}" in status.stdout
    targets = _fs3("targets", a)
    rows = [line for line in targets.stdout.splitlines() if "127.0.0.1:" in line]
    assert len(rows) == 3 and all(" yes " in r and "serving" in r for r in rows)
    chains = _fs3("chains", a)
    assert chains.stdout.count(":serving") == 9 and ":syncing" not in chains.stdout
    df = _fs3("df", a)
    assert df.exit_code == 0, df.output
    disk = shutil.disk_usage(cluster.root)
    total_row = next(line for line in df.stdout.splitlines() if line.startswith("total"))
    assert human(disk.total) in total_row and total_row.split()[-1] == "3"
    chunks = next(line for line in df.stdout.splitlines() if line.startswith("chunks:"))
    assert int(chunks.split()[3]) >= 3 * 300_000  # three replicas of the file at least

    # --json prints the same figures, whole.
    st = json.loads(_fs3("status", "--json", str(cluster.root)).stdout)
    assert [m["role"] for m in st["mgmtds"]] == ["primary"]
    assert st["metas"] == [cluster.meta_address()] and st["version"] >= 1
    assert len(st["targets"]) == 3 and len(st["chains"]) == 3
    rows = json.loads(_fs3("targets", "--json", a).stdout)
    assert [r["target_id"] for r in rows] == [1, 2, 3]
    assert all(r["alive"] and r["address"].startswith("127.0.0.1:") for r in rows)
    assert all(len(r["chains"]) == 3 and r["total_bytes"] == disk.total for r in rows)
    chain_json = json.loads(_fs3("chains", "--json", a).stdout)
    members = [m for c in chain_json for m in c["members"]]
    assert len(members) == 9 and {(m["state"], m["resync"]) for m in members} == {("serving", None)}
    usage = json.loads(_fs3("df", "--json", a).stdout)
    assert usage["total_bytes"] == disk.total and usage["missing"] == []
    assert sorted(t for f in usage["filesystems"] for t in f["targets"]) == [1, 2, 3]
    assert usage["chunk_bytes"] >= 3 * 300_000 and usage["replicas"] == 3
    check = _fs3("fsck", "--json", str(cluster.root))  # its config names the secret fsck needs
    report = json.loads(check.stdout)
    assert report["files"] >= 1 and report["chunks"] >= 1, check.stdout
    assert check.exit_code == (1 if any(f["error"] for f in report["findings"]) else 0)
    fs3fs.rm("/df-test", recursive=True)


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
    # --cluster, the mount's old name for the address, still works on every command.
    old = runner.invoke(main, ["fs3", "ls", "--json", "--cluster", cluster_address, "/ls-test"])
    assert old.exit_code == 0, old.output
    entries = json.loads(old.stdout)
    assert [(e["name"], e["type"], e["size"]) for e in entries] == [
        ("/ls-test/a", "directory", 0),
        ("/ls-test/two.bin", "file", 10),
    ]
    assert "--cluster" not in runner.invoke(main, ["fs3", "ls", "--help"]).output


def _fs3(*args: str) -> Result:
    return CliRunner().invoke(main, ["fs3", *args])


def test_put_get_cp_mv_cat_stat_du_rm(cluster: LocalCluster, tmp_path: Path) -> None:
    a = f"--address={cluster.address}"
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "empty").mkdir()
    payload = os.urandom(600_000)
    (src / "a.bin").write_bytes(payload)
    (src / "sub" / "b.txt").write_text("hello fs3\n")
    put = _fs3("put", "-r", a, str(src), "/cli/")
    assert put.exit_code == 0, put.output
    assert "copied 2 files, 600010 bytes" in put.output
    listing = _fs3("ls", "-R", a, "/cli")
    assert listing.stdout.split() == [
        "/cli/src/",
        "/cli/src/a.bin",
        "/cli/src/empty/",
        "/cli/src/sub/",
        "/cli/src/sub/b.txt",
    ]
    assert _fs3("cat", a, "/cli/src/sub/b.txt").stdout == "hello fs3\n"
    stat = _fs3("stat", a, f"fs3://{cluster.address}/cli/src/a.bin")
    assert stat.exit_code == 0 and "size: 600000 (585.9 KiB)" in stat.stdout
    assert "type: file" in stat.stdout and "mode: 0644 (-rw-r--r--)" in stat.stdout
    du = _fs3("du", a, "/cli")
    assert du.stdout.split("\t")[:3] == ["600010", "2 files", "3 dirs"]
    assert json.loads(_fs3("du", "--json", a, "/cli").stdout) == [
        {"path": "/cli", "bytes": 600010, "files": 2, "dirs": 3}
    ]
    (inode,) = json.loads(_fs3("stat", "--json", a, "/cli/src/a.bin").stdout)
    assert (inode["path"], inode["kind"], inode["length"]) == ("/cli/src/a.bin", "file", 600000)
    assert inode["mode"] == 0o644 and len(inode["layout"]["chains"]) >= 1
    copy = _fs3("cp", "-r", a, "/cli/src", "/cli/copy")
    assert copy.exit_code == 0 and "copied 2 files, 600010 bytes" in copy.output, copy.output
    assert _fs3("ls", a, "/cli/copy").stdout.split() == [
        "/cli/copy/a.bin",
        "/cli/copy/empty/",
        "/cli/copy/sub/",
    ]
    not_r = _fs3("get", a, "/cli/copy", str(tmp_path))
    assert not_r.exit_code == 1 and "/cli/copy: is a directory (use -r)" in not_r.output
    two = _fs3("cp", a, "/cli/src/a.bin", "/cli/src/sub/b.txt", "/cli/src/a.bin")
    assert two.exit_code == 1 and "/cli/src/a.bin: not a directory" in two.output
    assert _fs3("mv", a, "/cli/copy", "/cli/moved").exit_code == 0
    back = tmp_path / "back"
    get = _fs3("get", "-r", a, "/cli/moved", str(back))
    assert get.exit_code == 0, get.output
    assert (back / "a.bin").read_bytes() == payload and (back / "empty").is_dir()
    assert (back / "sub" / "b.txt").read_text() == "hello fs3\n"
    single = _fs3("get", a, "/cli/src/sub/b.txt", str(tmp_path))  # into an existing folder
    assert single.exit_code == 0 and (tmp_path / "b.txt").read_text() == "hello fs3\n"

    not_r = _fs3("rm", a, "/cli/moved")
    assert not_r.exit_code == 1 and "/cli/moved: is a directory (use -r)" in not_r.output
    assert _fs3("rm", "-r", a, "/cli/moved").exit_code == 0
    assert _fs3("rm", a, "/cli/src/sub/b.txt").exit_code == 0
    assert _fs3("ls", a, "/cli").stdout.split() == ["/cli/src/"]
    for args, path in (
        (["cat", "/cli/nope"], "/cli/nope"),
        (["stat", "/cli/gone"], "/cli/gone"),
        (["get", "/cli/none", str(tmp_path)], "/cli/none"),
        (["mv", "/cli/x", "/cli/y"], "/cli/x"),
    ):
        failed = _fs3(*args, a)
        lines = failed.output.strip().splitlines()
        assert failed.exit_code == 1 and len(lines) == 1 and path in lines[0], failed.output
    assert _fs3("rm", "-r", a, "/cli").exit_code == 0


def test_quota_and_trash_commands(cluster: LocalCluster) -> None:
    a = f"--address={cluster.address}"
    fs = FS3FileSystem(cluster.address, skip_instance_cache=True)
    fs.pipe_file("/cliq/run/one", b"x" * 1000)
    set_ = _fs3("quota", "set", a, "/cliq", "--bytes", "1K", "--inodes", "10")
    assert set_.exit_code == 0, set_.output
    assert "bytes 1000 of 1024" in set_.stdout and "inodes 2 of 10" in set_.stdout
    full = _fs3("put", a, __file__, "/cliq/more.py")
    assert full.exit_code == 1 and "/cliq/more.py" in full.output and "quota" in full.output
    assert not fs.exists("/cliq/more.py")  # the refused copy left no empty file behind
    removed = _fs3("rm", "-r", "--expire", "1d", a, "/cliq/run")
    assert removed.exit_code == 0 and "in the trash as" in removed.output
    assert "bytes 0 of 1024" in _fs3("quota", "show", a, "/cliq").stdout
    (shown,) = json.loads(_fs3("quota", "show", "--json", a, "/cliq").stdout)
    assert shown["path"] == "/cliq" and shown["quota"]["used_bytes"] == 0
    assert (shown["quota"]["max_bytes"], shown["quota"]["max_inodes"]) == (1024, 10)
    listed = _fs3("trash", "ls", a)
    name = next(line.split()[0] for line in listed.stdout.splitlines() if "/cliq/run" in line)
    in_trash = json.loads(_fs3("trash", "ls", "--json", a).stdout)
    entry = next(e for e in in_trash if e["name"] == name)
    assert entry["path"] == "/cliq/run" and entry["inode"]["kind"] == "directory"
    assert entry["expires"] > entry["deleted"]
    assert _fs3("trash", "restore", a, name).exit_code == 0
    assert fs.cat_file("/cliq/run/one") == b"x" * 1000
    again = _fs3("trash", "restore", a, name)
    assert again.exit_code == 1 and name in again.output
    assert _fs3("quota", "set", a, "/cliq", "--bytes", "0", "--inodes", "0").stdout.endswith(
        "no quota\n"
    )
    fs.rm("/cliq", recursive=True)
