"""fs3.meta.permissions, the pure rules, case by case as pjdfstest checks them on a mount;
then the same rules through a Namespace on every store."""

from __future__ import annotations

import stat

import pytest

from fs3.errors import NotPermitted, PermissionDenied
from fs3.meta import permissions as p
from fs3.meta.namespace import Namespace
from fs3.meta.permissions import EXEC, READ, ROOT, WRITE, Caller
from fs3.types import DIRECTORY, FILE, Inode

OWNER = Caller(1000, 100, frozenset({300}))
GROUP = Caller(2000, 100)  # in the file's group by its gid
SUPP = Caller(2001, 200, frozenset({100}))  # in it by a supplementary group
OTHER = Caller(3000, 300)


def f(mode: int, uid: int = 1000, gid: int = 100, kind: str = FILE) -> Inode:
    return Inode(7, kind, mode, uid=uid, gid=gid)


@pytest.mark.parametrize(
    ("caller", "shift"), [(OWNER, 6), (GROUP, 3), (SUPP, 3), (OTHER, 0)], ids=str
)
@pytest.mark.parametrize("want", [READ, WRITE, EXEC, READ | WRITE])
def test_each_class_uses_only_its_own_bits(caller: Caller, shift: int, want: int) -> None:
    for bits in range(8):
        assert p.allowed(caller, f(bits << shift), want) == (bits & want == want)
    # The other classes' bits never help: owner denied by u-r stays denied with o+r.
    assert not p.allowed(caller, f(0o777 & ~(7 << shift)), want)


def test_admin_passes_all_but_execute_of_a_file_no_one_may_execute() -> None:
    assert p.allowed(ROOT, f(0), READ | WRITE)
    assert not p.allowed(ROOT, f(0o644), EXEC)
    assert p.allowed(ROOT, f(0o100), EXEC)
    assert p.allowed(ROOT, f(0, kind=DIRECTORY), EXEC)
    with pytest.raises(PermissionDenied):
        p.check(OTHER, f(0o600), READ, "/x")


@pytest.mark.parametrize(
    ("parent_mode", "caller", "child_uid", "error"),
    [
        (0o777, OTHER, 1000, None),
        (0o755, OTHER, 3000, PermissionDenied),  # no write on the directory
        (0o776, OTHER, 1000, PermissionDenied),  # write but no search
        (0o1777, OTHER, 1000, NotPermitted),  # sticky: neither the file's nor dir's owner
        (0o1777, OTHER, 3000, None),  # sticky: the file's owner
        (0o1777, OWNER, 5000, None),  # sticky: the directory's owner
        (0o1777, ROOT, 5000, None),
    ],
)
def test_delete_needs_write_and_search_and_the_sticky_rule(
    parent_mode: int, caller: Caller, child_uid: int, error: type[Exception] | None
) -> None:
    parent = f(parent_mode, kind=DIRECTORY)
    child = f(0o644, uid=child_uid)
    if error is None:
        p.check_delete(caller, parent, child, "/d/x")
    else:
        with pytest.raises(error):
            p.check_delete(caller, parent, child, "/d/x")


def test_chmod_only_owner_and_drops_what_posix_drops() -> None:
    with pytest.raises(NotPermitted):
        p.chmod_mode(OTHER, f(0o644), 0o777, "/x")
    assert p.chmod_mode(OWNER, f(0o644), 0o4755, "/x") == 0o4755
    # Owner outside the file's group cannot set set-gid; a file cannot be made sticky.
    assert p.chmod_mode(OWNER, f(0o644, gid=999), 0o2755, "/x") == 0o755
    assert p.chmod_mode(OWNER, f(0o644), 0o1644, "/x") == 0o644
    assert p.chmod_mode(OWNER, f(0o755, kind=DIRECTORY), 0o1777, "/d") == 0o1777
    assert p.chmod_mode(ROOT, f(0o644, gid=999), 0o3755, "/x") == 0o3755


def test_utime_owner_any_time_writer_only_now() -> None:
    p.check_utime(OWNER, f(0o444), False, "/x")
    p.check_utime(OTHER, f(0o666), True, "/x")
    with pytest.raises(NotPermitted):
        p.check_utime(OTHER, f(0o666), False, "/x")
    with pytest.raises(PermissionDenied):
        p.check_utime(OTHER, f(0o644), True, "/x")


def test_chown_rules() -> None:
    with pytest.raises(NotPermitted):
        p.chown(OWNER, f(0o644), 2000, -1, "/x")  # only root gives files away
    with pytest.raises(NotPermitted):
        p.chown(OWNER, f(0o644), -1, 999, "/x")  # not one of the owner's groups
    with pytest.raises(NotPermitted):
        p.chown(GROUP, f(0o644), -1, 100, "/x")  # not the owner
    assert p.chown(OWNER, f(0o644), -1, 300, "/x").gid == 300  # a supplementary group
    assert p.chown(OWNER, f(0o644), 1000, 100, "/x").uid == 1000  # to itself: allowed
    moved = p.chown(ROOT, f(0o6755), 2000, 200, "/x")
    assert (moved.uid, moved.gid, moved.mode) == (2000, 200, 0o755)  # set-id bits cleared
    assert p.chown(ROOT, f(0o2644), 2000, -1, "/x").mode == 0o2644  # set-gid, no g+x: kept
    assert p.chown(ROOT, f(0o6755, kind=DIRECTORY), 2000, -1, "/d").mode == 0o6755


def test_writes_by_non_admins_clear_set_id_bits() -> None:
    assert p.after_write(OTHER, f(0o6777)) == 0o777
    assert p.after_write(OWNER, f(0o6755)) == 0o755
    assert p.after_write(OWNER, f(0o2644)) == 0o2644
    assert p.after_write(ROOT, f(0o6755)) == 0o6755


def test_new_inodes_owner_and_set_gid_directories() -> None:
    plain = f(0o777, uid=0, gid=0, kind=DIRECTORY)
    assert p.new_owner(OWNER, plain, FILE, 0o644) == (1000, 100, 0o644)
    setgid = f(0o2777, uid=0, gid=555, kind=DIRECTORY)
    assert p.new_owner(OWNER, setgid, FILE, 0o644) == (1000, 555, 0o644)
    assert p.new_owner(OWNER, setgid, DIRECTORY, 0o755) == (1000, 555, 0o2755)
    # Creating a set-gid file in a group one is not in drops the bit.
    assert p.new_owner(OWNER, setgid, FILE, 0o2755) == (1000, 555, 0o755)
    assert p.new_owner(OWNER, plain, FILE, 0o2755) == (1000, 100, 0o2755)


def test_the_namespace_enforces_them(ns: Namespace) -> None:
    """Through Namespace on each store: search on the path, read on open, sticky, chown,
    chmod, quotas by admins only, and the creator's ownership."""
    alice, bob = Caller(1000, 100), Caller(2000, 200)
    ns.mkdir("/home", mode=0o755)
    ns.mkdir("/tmp", mode=0o1777)
    ns.chown("/home", 1000, 100)
    with p.acting(alice):
        ns.mkdir("/home/private", mode=0o700)
        secret = ns.create("/home/private/f", mode=0o600)
        assert (secret.uid, secret.gid) == (1000, 100)
        ns.create("/tmp/alice", mode=0o666)
    with p.acting(bob):
        with pytest.raises(PermissionDenied):
            ns.stat("/home/private/f")  # no search on /home/private
        with pytest.raises(PermissionDenied):
            ns.open("/home/private/f")
        with pytest.raises(PermissionDenied):
            ns.create("/home/private/g")
        with pytest.raises(PermissionDenied):
            ns.unlink("/home/private/f")
        with pytest.raises(PermissionDenied):
            ns.listdir("/home/private")
        with pytest.raises(NotPermitted):
            ns.unlink("/tmp/alice")  # sticky
        with pytest.raises(NotPermitted):
            ns.rename("/tmp/alice", "/tmp/mine")
        with pytest.raises(NotPermitted):
            ns.set_attr("/tmp/alice", mode=0o777)
        with pytest.raises(NotPermitted):
            ns.chown("/tmp/alice", 2000)
        with pytest.raises(NotPermitted):
            ns.set_quota("/tmp", max_inodes=10)
        assert ns.open("/tmp/alice", WRITE).uid == 1000  # 0666: bob may write it
        ns.truncate("/tmp/alice", 0)
        ns.create("/tmp/bob")
        ns.unlink("/tmp/bob")
    with p.acting(alice):
        ns.unlink("/tmp/alice")
        ns.set_attr("/home/private/f", mode=0o644)
    assert stat.S_IMODE(ns.stat("/home/private/f").mode) == 0o644
