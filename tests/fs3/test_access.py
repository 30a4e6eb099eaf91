"""Issue 18's attack, as a real second account (uid 65534, ``nobody``) against a real local
cluster: through fsspec with a non-admin user's token, and through a FUSE mount with
allow_other, the account may not read a 0600 file in a 0700 folder, write into the folder,
delete the file, delete another user's file in a sticky folder, or give its file away.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import fs3
from fs3.client import FS3FileSystem
from fs3.cluster import LocalCluster
from fs3.fuse.options import MountOptions
from fs3.types import User
from hai.cli import main

NOBODY_ID = 65534
NOBODY = ["setpriv", f"--reuid={NOBODY_ID}", f"--regid={NOBODY_ID}", "--clear-groups"]
ALICE = 1000

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid 65534 needs root"),
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) missing"),
]

# Run by nobody: each operation's errno (0: it worked), as JSON.
CLIENT = """
import json, sys
from fs3.client import FS3FileSystem
fs = FS3FileSystem(sys.argv[1], token=sys.argv[2] or None, skip_instance_cache=True)
out = []
for op, path, *arg in json.loads(sys.argv[3]):
    try:
        if op == "cat":
            fs.cat_file(path)
        elif op == "write":
            fs.pipe_file(path, b"mine")
        elif op == "rm":
            fs.rm(path, recursive=bool(arg))
        elif op == "chown":
            fs.meta.chown(path, arg[0])
        elif op == "ls":
            fs.ls(path)
        out.append(0)
    except OSError as err:
        out.append(err.errno)
print(json.dumps(out))
"""


def _as_nobody(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": "/nonexistent"}  # no local cluster's admin token
    env.pop("FS3_TOKEN", None)
    return subprocess.run(
        [*NOBODY, *argv], capture_output=True, text=True, env=env, timeout=120, **kwargs
    )


def _fsspec_as_nobody(address: str, token: str, ops: list[list[object]]) -> list[int]:
    done = _as_nobody([sys.executable, "-c", CLIENT, address, token, json.dumps(ops)])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def tree(cluster: LocalCluster) -> Iterator[tuple[FS3FileSystem, str]]:
    """As admin: user alice (uid 1000) owns /access/private (0700) holding secret (0600),
    a file in the sticky /access/tmp (1777), and /access/given/sub (0755, holding a file)
    inside /access/given, which is nobody's; user nobody (uid 65534) has a token."""
    admin = FS3FileSystem(cluster.address, skip_instance_cache=True)
    admin.meta.add_user(User("alice", ALICE, ALICE))
    nobody_token = admin.meta.add_user(User("nobody", NOBODY_ID, NOBODY_ID))
    admin.mkdir("/access")
    for path, mode in (("/access/private", 0o700), ("/access/tmp", 0o1777)):
        admin.meta.mkdir(path, False, mode)
    admin.pipe_file("/access/private/secret", b"top secret")
    admin.pipe_file("/access/tmp/alices", b"alice's")
    admin.pipe_file("/access/given/sub/alices", b"alice's")
    admin.meta.chown("/access/given", NOBODY_ID, NOBODY_ID)
    admin.meta.chown("/access/given/sub", ALICE, ALICE)
    # nobody's own folder in the sticky one (so nobody may remove it), holding alice's.
    admin.pipe_file("/access/tmp/nobodys-tree/sub/alices", b"alice's")
    admin.meta.chown("/access/tmp/nobodys-tree", NOBODY_ID, NOBODY_ID)
    for path in ("/access/tmp/nobodys-tree/sub", "/access/tmp/nobodys-tree/sub/alices"):
        admin.meta.chown(path, ALICE, ALICE)
    for path, mode in (("/access/private/secret", 0o600), ("/access/tmp/alices", 0o644)):
        admin.meta.set_attr(path, mode)
    for path in ("/access/private", "/access/private/secret", "/access/tmp/alices"):
        admin.meta.chown(path, ALICE, ALICE)
    yield admin, nobody_token
    admin.rm("/access", recursive=True)
    admin.meta.remove_user("alice")
    admin.meta.remove_user("nobody")


def test_fsspec_as_another_account_is_refused(
    cluster: LocalCluster, tree: tuple[FS3FileSystem, str]
) -> None:
    admin, token = tree
    ops: list[list[object]] = [
        ["cat", "/access/private/secret"],
        ["ls", "/access/private"],
        ["write", "/access/private/new"],
        ["rm", "/access/private/secret"],
        ["rm", "/access/tmp/alices"],  # sticky: not nobody's file, nor folder
        ["write", "/access/tmp/nobodys"],  # the sticky folder is open to all
        ["chown", "/access/tmp/nobodys", 0],  # only an admin gives a file away
        ["rm", "/access/tmp/nobodys"],  # its own file
        ["rm", "/access/given", True],  # its folder, but not alice's folder inside
        # Its folder, which it may unlink, but rm -r deletes the tree: alice's file too.
        ["rm", "/access/tmp/nobodys-tree", True],
    ]
    eacces, eperm = errno.EACCES, errno.EPERM
    assert _fsspec_as_nobody(cluster.address, token, ops) == [
        *[eacces] * 4,
        eperm,
        0,
        eperm,
        0,
        eacces,
        eacces,
    ]
    assert admin.cat_file("/access/private/secret") == b"top secret"
    assert admin.cat_file("/access/tmp/nobodys-tree/sub/alices") == b"alice's"
    assert admin.ls("/access/private", detail=False) == ["/access/private/secret"]
    assert admin.cat_file("/access/tmp/alices") == b"alice's"
    assert admin.cat_file("/access/given/sub/alices") == b"alice's"
    # Without a token nothing is served at all.
    assert _fsspec_as_nobody(cluster.address, "", [["ls", "/"]]) == [eperm]


@pytest.fixture(scope="module")
def shared_mount(cluster: LocalCluster) -> Iterator[Path]:
    """The admin's mount with allow_other, at a point other accounts may reach."""
    parent = Path(tempfile.mkdtemp(prefix="fs3-access-"))
    parent.chmod(0o755)
    try:
        options = MountOptions(allow_other=True)
        with fs3.mount(parent / "mnt", cluster.address, options=options) as mounted:
            yield mounted
    finally:
        shutil.rmtree(parent, ignore_errors=True)


@pytest.mark.fuse
def test_mount_with_allow_other_acts_as_each_caller(
    tree: tuple[FS3FileSystem, str], shared_mount: Path
) -> None:
    admin, _ = tree
    top = shared_mount / "access"

    def sh(script: str) -> subprocess.CompletedProcess[str]:
        return _as_nobody(["sh", "-c", script], cwd="/")

    for script in (
        f"cat {top}/private/secret",
        f"ls {top}/private",
        f"echo x > {top}/private/new",
        f"rm -f {top}/private/secret",
        f"rm -f {top}/tmp/alices",
        f"chmod 666 {top}/tmp/alices",
    ):
        done = sh(script)
        assert done.returncode != 0, script
        assert "ermission denied" in done.stderr or "not permitted" in done.stderr, done.stderr
    # What nobody creates is nobody's: the kernel's uid reached meta, not the mount's.
    done = sh(f"echo mine > {top}/tmp/nobodys && stat -c %u:%g {top}/tmp/nobodys")
    assert done.stdout.split() == [f"{NOBODY_ID}:{NOBODY_ID}"], done.stderr
    assert sh(f"chown 0 {top}/tmp/nobodys").returncode != 0
    info = admin.info("/access/tmp/nobodys")
    assert (info["size"], info["uid"]) == (5, NOBODY_ID)
    assert sh(f"rm {top}/tmp/nobodys").returncode == 0
    assert admin.cat_file("/access/private/secret") == b"top secret"
    assert admin.exists("/access/tmp/alices")


def test_users_commands(cluster: LocalCluster) -> None:
    """``hai fs3 users``: a token printed once works, rotating replaces it, a removed
    user's token is refused, the last admin stays; a non-admin manages nothing."""
    runner = CliRunner()

    def hai(*argv: str, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(main, ["fs3", "users", *argv, "--address", cluster.address], env=env)

    added = hai("add", "carol", "--uid", "1500", "--gid", "1500", "--groups", "10,20")
    assert added.exit_code == 0, added.output
    token = added.output.strip()
    carol = FS3FileSystem(cluster.address, token=token, skip_instance_cache=True)
    assert carol.meta.whoami().uid == 1500
    listed = hai("ls", "--json")
    assert {"name": "carol", "uid": 1500, "gid": 1500, "groups": [10, 20]}.items() <= next(
        u for u in json.loads(listed.output) if u["name"] == "carol"
    ).items()
    assert "token" not in listed.output
    refused = hai("ls", env={"FS3_TOKEN": token})
    assert refused.exit_code == 1 and "needs an admin token" in refused.output
    assert hai("add", "carol", "--uid", "1", "--gid", "1").exit_code == 1  # exists
    assert hai("add", "Bad Name", "--uid", "1", "--gid", "1").exit_code == 1
    rotated = hai("rotate", "carol")
    assert rotated.exit_code == 0 and rotated.output.strip() != token
    fresh = FS3FileSystem(cluster.address, token=token, skip_instance_cache=True)
    with pytest.raises(PermissionError, match="unknown fs3 token"):
        fresh.ls("/")
    assert hai("rm", "carol").exit_code == 0
    last = hai("rm", "root")
    assert last.exit_code == 1 and "last admin" in last.output
