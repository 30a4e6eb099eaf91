"""The namespace operations as PL/pgSQL functions, so that each is one statement on PostgreSQL.

Each operation of :class:`fs3.meta.namespace.Namespace` is a handful of reads and writes;
sent one by one they cost a round trip each, plus BEGIN and COMMIT. Here every operation is
one function (``fs3_create``, ``fs3_rename``...) that :class:`fs3.meta.pg_namespace.
PostgresNamespace` calls with one ``SELECT`` in autocommit mode: the statement is the whole
transaction, at READ COMMITTED, so each statement inside a function sees the latest
committed rows, and a conflict (SQLSTATE 40001 or 40P01) aborts it whole and it is run again
whole.

Locking protocol (row locks, waiting instead of aborting; :mod:`fs3.meta.postgres` says how
these transactions meet the SERIALIZABLE ones of the unported operations):

- The path walk takes no locks (as Linux's lookup). Then the operation locks the rows it
  changes or decides on with ``SELECT ... FOR UPDATE`` (``fs3_lock``), or with the
  ``UPDATE ... RETURNING`` that sets a directory's mtime (``fs3_lock_touched``), both of
  which wait for a holder and return the row's latest version, and decides on what the
  lock returned. Every change of a directory's entries holds that directory's inode row
  locked (and updates it), so under that lock its entries stand still.
- create, mkdir, symlink, mknod, link: lock the parent directory, then look the name up;
  a file that create replaces, and link's file (its nlink), are locked too.
- unlink, rmdir: lock the parent, then the child (``fs3_child_locked``); rmdir's emptiness
  check follows the child's lock, which a create into it also takes, so one of them sees
  the other.
- rename: a rename that moves a directory to another parent first takes the rename gate
  (table ``fs3_rename_gate`` in EXCLUSIVE mode, Linux's per-filesystem rename mutex), so
  parent links of directories stand still while it checks that the destination is not
  inside what moves: two such renames cannot make a cycle together. Then both parents,
  in inode id order, then the source entry, which must still name what the walk found,
  and the replaced destination (re-checked: an empty directory).
- truncate, set_length, set_attr, chown, set_quota: lock the inode first.
- Quota usage: ``fs3_charge`` locks each quota directory (nearest first) before checking
  its limit and adding to its usage, so concurrent charges add up exactly and never pass
  a limit. A set_quota that starts a quota counts the usage below with the quota gate
  (table ``fs3_quota_gate``) held EXCLUSIVE; each charge first takes it in ROW SHARE mode
  (a fast-path lock: no contention among charges), so no charge that found no quota is in
  flight while the usage is counted.
- When the lock shows the world changed since the walk (the parent deleted, the entry
  now naming another inode), ``fs3_retry`` raises SQLSTATE 40001 and Python runs the
  operation again whole. Lock order is not global (a parent, then a child, then quota
  directories): PostgreSQL detects a deadlock (40P01) and it is retried too.

The Python namespace is the reference. The helpers below carry the names of its private
methods and of the functions of :mod:`fs3.meta.permissions` and :mod:`fs3.meta.quota` they
mirror (``fs3_resolve`` is ``Namespace._resolve``, ``fs3_charge_dir`` is
``quota.charge_dir``...), so a reviewer can read them side by side; the conformance suite
(tests/fs3/test_namespace.py and its siblings) runs both and keeps them equal.

Errors: each fs3 error is raised with a SQLSTATE of its own (:data:`SQLSTATES`), its message
and, in DETAIL, its path; :func:`namespace_error` turns it back into the same exception.
"""

from __future__ import annotations

from typing import Any

from fs3.errors import NAMESPACE_ERRORS, Fs3Error
from fs3.wire.codes import ERROR_CODES

SQLSTATES: dict[str, type[Fs3Error]] = {
    f"F3{ERROR_CODES[cls]:03d}": cls for cls in NAMESPACE_ERRORS
}
"""SQLSTATE of each fs3 error the functions raise: class F3 (free in PostgreSQL), then the
error's number on fs3's wire (:data:`fs3.wire.codes.ERROR_CODES`), so one table numbers
the errors."""


def namespace_error(err: Exception) -> Fs3Error | None:
    """The fs3 error a function raised as ``err`` (a psycopg error), or None when ``err``
    is something else."""
    cls = SQLSTATES.get(getattr(err, "sqlstate", None) or "")
    if cls is None:
        return None
    diag = err.diag  # type: ignore[attr-defined]
    return cls(diag.message_primary or "", diag.message_detail)


_KIND_TO_STATE = " ".join(
    f"WHEN '{cls.__name__}' THEN '{state}'" for state, cls in SQLSTATES.items()
)

# The caller of an operation (fs3.meta.permissions.Caller), as the functions take it.
_CALLER_TYPE = """DO $$ BEGIN
    CREATE TYPE fs3_caller AS (uid BIGINT, gid BIGINT, groups BIGINT[], admin BOOLEAN);
EXCEPTION WHEN duplicate_object THEN NULL;
END $$"""

# Every function is SECURITY INVOKER (the connecting role's rights, nothing more). The entry
# points Python calls (_OPERATIONS) pin the search_path to the store's schema when it was
# installed (SET ... FROM CURRENT), so a session's search_path cannot make a table name mean
# another table; the helpers they call run under that pinned path. A SET clause on a helper
# would save and restore the setting, and recompute the schema search, on every call: that
# cost a create or a rename 15-20% on the server.
_PIN = "LANGUAGE plpgsql SECURITY INVOKER SET search_path FROM CURRENT"
_HELPER = "LANGUAGE plpgsql SECURITY INVOKER"
# Functions of their arguments alone, raising nothing.
_PURE = "LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER"
# One-expression functions of their arguments, naming no table, which the planner inlines
# into the function calling them, where their body is parsed under its search_path.
_INLINE = "LANGUAGE sql IMMUTABLE SECURITY INVOKER"

_HELPERS = f"""
-- The Python namespace (fs3/meta/namespace.py) is the reference for every function here; the
-- conformance suite (tests/fs3/test_namespace.py, test_links.py, test_permissions.py,
-- test_quota.py, test_trash.py) runs both and keeps them equal.

-- Raises fs3 error ``kind`` (a class of fs3.errors) with ``msg`` and ``path`` (DETAIL).
CREATE OR REPLACE FUNCTION fs3_fail(kind TEXT, msg TEXT, path TEXT) RETURNS VOID AS $$
DECLARE state TEXT := CASE kind {_KIND_TO_STATE} END;
BEGIN
    IF path IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = state, MESSAGE = msg;
    END IF;
    RAISE EXCEPTION USING ERRCODE = state, MESSAGE = msg, DETAIL = path;
END $$ {_HELPER};

-- The rows this operation locked changed since its path walk: SQLSTATE 40001, so that the
-- caller runs the operation again whole (fs3.db.run_retrying).
CREATE OR REPLACE FUNCTION fs3_retry(why TEXT) RETURNS VOID AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = '40001', MESSAGE = 'changed under a lock: ' || why;
END $$ {_HELPER};

-- Locks ``node``'s row and returns its latest version (after the holder, if any, committed).
CREATE OR REPLACE FUNCTION fs3_lock(node inodes) RETURNS inodes AS $$
DECLARE fresh inodes;
BEGIN
    SELECT * INTO fresh FROM inodes WHERE id = node.id FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM fs3_retry('inode ' || node.id || ' was deleted');
    END IF;
    RETURN fresh;
END $$ {_HELPER};

-- Locks directory ``dir``, whose entries this operation changes, and sets its mtime and ctime
-- to ``now``: one UPDATE, which waits for a holder and returns the row's latest version (a
-- lock and a later update were two statements). An operation that then fails rolls it back.
CREATE OR REPLACE FUNCTION fs3_lock_touched(dir inodes, now DOUBLE PRECISION) RETURNS inodes AS $$
DECLARE fresh inodes;
BEGIN
    UPDATE inodes SET mtime = now, ctime = now WHERE id = dir.id RETURNING * INTO fresh;
    IF NOT FOUND THEN
        PERFORM fs3_retry('inode ' || dir.id || ' was deleted');
    END IF;
    RETURN fresh;
END $$ {_HELPER};

-- The inode entry ``leaf`` of directory ``dir`` (whose row this transaction holds locked, so
-- its entries stand still) names, locked; all NULL when there is no such entry. One statement:
-- FOR UPDATE OF waits for the inode's holder and returns the row's latest version.
CREATE OR REPLACE FUNCTION fs3_child_locked(dir inodes, leaf TEXT) RETURNS inodes AS $$
DECLARE node inodes;
BEGIN
    SELECT i.* INTO node FROM dentries d JOIN inodes i ON i.id = d.child
        WHERE d.parent = dir.id AND d.name = leaf FOR UPDATE OF i;
    RETURN node;
END $$ {_HELPER};

-- fs3.paths: split, components, _shown, normalize.
CREATE OR REPLACE FUNCTION fs3_dirname(path TEXT) RETURNS TEXT AS $$
SELECT coalesce(nullif(regexp_replace(path, '/[^/]*$', ''), ''), '/') $$ {_INLINE};

CREATE OR REPLACE FUNCTION fs3_basename(path TEXT) RETURNS TEXT AS $$
SELECT regexp_replace(path, '^.*/', '') $$ {_INLINE};

CREATE OR REPLACE FUNCTION fs3_components(path TEXT) RETURNS TEXT[] AS $$
SELECT array_remove(string_to_array(path, '/'), '') $$ {_INLINE};

CREATE OR REPLACE FUNCTION fs3_shown(path TEXT) RETURNS TEXT AS $$
BEGIN
    IF length(path) <= 80 THEN RETURN path; END IF;
    RETURN left(path, 60) || '...(' || length(path) || ' characters)';
END $$ {_PURE};

CREATE OR REPLACE FUNCTION fs3_normalize(path TEXT) RETURNS TEXT AS $$
DECLARE
    parts TEXT[] := '{{}}';
    part TEXT;
BEGIN
    IF octet_length(path) > 4096 THEN
        PERFORM fs3_fail('NameTooLong', 'path of ' || octet_length(path) || ' bytes exceeds 4096',
                         fs3_shown(path));
    END IF;
    FOREACH part IN ARRAY string_to_array(path, '/') LOOP
        CONTINUE WHEN part IN ('', '.');
        IF part = '..' THEN
            IF cardinality(parts) = 0 THEN
                PERFORM fs3_fail('InvalidArgument', 'path escapes the root with ''..''', path);
            END IF;
            parts := parts[1:cardinality(parts) - 1];
        ELSE
            IF octet_length(part) > 255 THEN
                PERFORM fs3_fail('NameTooLong',
                                 'name of ' || octet_length(part) || ' bytes exceeds 255',
                                 fs3_shown(path));
            END IF;
            parts := parts || part;
        END IF;
    END LOOP;
    RETURN '/' || array_to_string(parts, '/');
END $$ {_HELPER};

-- fs3.meta.permissions (S_ISUID 2048, S_ISGID 1024, S_ISVTX 512, S_IXGRP 8).
CREATE OR REPLACE FUNCTION fs3_in_group(c fs3_caller, gid BIGINT) RETURNS BOOLEAN AS $$
SELECT gid = (c).gid OR gid = ANY((c).groups) $$ {_INLINE};

CREATE OR REPLACE FUNCTION fs3_is_owner(c fs3_caller, node inodes) RETURNS BOOLEAN AS $$
SELECT (c).admin OR (c).uid = (node).uid $$ {_INLINE};

-- An admin has every permission but execute on a file no one may execute (0o111 = 73).
CREATE OR REPLACE FUNCTION fs3_allowed(c fs3_caller, node inodes, want INTEGER)
RETURNS BOOLEAN AS $$
SELECT CASE
    WHEN (c).admin THEN
        NOT (want & 1 <> 0 AND (node).kind <> 'directory' AND (node).mode & 73 = 0)
    WHEN (c).uid = (node).uid THEN (node).mode >> 6 & want = want
    WHEN fs3_in_group(c, (node).gid) THEN (node).mode >> 3 & want = want
    ELSE (node).mode & want = want
END $$ {_INLINE};

CREATE OR REPLACE FUNCTION fs3_check(c fs3_caller, node inodes, want INTEGER, path TEXT)
RETURNS VOID AS $$
BEGIN
    IF NOT fs3_allowed(c, node, want) THEN
        PERFORM fs3_fail('PermissionDenied', 'permission denied', path);
    END IF;
END $$ {_HELPER};

CREATE OR REPLACE FUNCTION fs3_check_delete(c fs3_caller, dir inodes, child inodes, path TEXT)
RETURNS VOID AS $$
BEGIN
    IF NOT fs3_allowed(c, dir, 3) THEN
        PERFORM fs3_fail('PermissionDenied', 'permission denied', path);
    END IF;
    IF dir.mode & 512 <> 0 AND NOT c.admin AND c.uid <> dir.uid AND c.uid <> child.uid THEN
        PERFORM fs3_fail('NotPermitted',
                         'sticky directory: only the owner may delete or rename this', path);
    END IF;
END $$ {_HELPER};

CREATE OR REPLACE FUNCTION fs3_cleared_on_write(mode INTEGER) RETURNS INTEGER AS $$
SELECT CASE WHEN mode & 8 <> 0 THEN mode & ~2048 & ~1024 ELSE mode & ~2048 END $$ {_INLINE};

CREATE OR REPLACE FUNCTION fs3_after_write(c fs3_caller, node inodes) RETURNS INTEGER AS $$
SELECT CASE WHEN (c).admin THEN (node).mode ELSE fs3_cleared_on_write((node).mode) END
$$ {_INLINE};

CREATE OR REPLACE FUNCTION fs3_chmod_mode(c fs3_caller, node inodes, mode INTEGER, path TEXT)
RETURNS INTEGER AS $$
BEGIN
    IF NOT fs3_is_owner(c, node) THEN
        PERFORM fs3_fail('NotPermitted', 'only the owner may change the mode', path);
    END IF;
    IF NOT c.admin THEN
        IF NOT fs3_in_group(c, node.gid) THEN mode := mode & ~1024; END IF;
        IF node.kind <> 'directory' THEN mode := mode & ~512; END IF;
    END IF;
    RETURN mode;
END $$ {_HELPER};

CREATE OR REPLACE FUNCTION fs3_check_utime(c fs3_caller, node inodes, to_now BOOLEAN, path TEXT)
RETURNS VOID AS $$
BEGIN
    IF fs3_is_owner(c, node) THEN RETURN; END IF;
    IF NOT to_now THEN
        PERFORM fs3_fail('NotPermitted', 'only the owner may set the times', path);
    END IF;
    PERFORM fs3_check(c, node, 2, path);
END $$ {_HELPER};

-- permissions.chown: the inode after a chown to uid/gid (-1 keeps one).
CREATE OR REPLACE FUNCTION fs3_chowned(
    c fs3_caller, node inodes, new_uid BIGINT, new_gid BIGINT, path TEXT
) RETURNS inodes AS $$
DECLARE
    to_uid BIGINT := CASE WHEN new_uid < 0 THEN node.uid ELSE new_uid END;
    to_gid BIGINT := CASE WHEN new_gid < 0 THEN node.gid ELSE new_gid END;
BEGIN
    IF NOT c.admin THEN
        IF to_uid <> node.uid THEN
            PERFORM fs3_fail('NotPermitted', 'only an admin may change the owner', path);
        END IF;
        IF c.uid <> node.uid THEN
            PERFORM fs3_fail('NotPermitted', 'only the owner may change the group', path);
        END IF;
        IF to_gid <> node.gid AND NOT fs3_in_group(c, to_gid) THEN
            PERFORM fs3_fail('NotPermitted', 'you are not in group ' || to_gid, path);
        END IF;
    END IF;
    IF node.kind <> 'directory' AND (new_uid >= 0 OR new_gid >= 0) THEN
        node.mode := fs3_cleared_on_write(node.mode);
    END IF;
    node.uid := to_uid;
    node.gid := to_gid;
    RETURN node;
END $$ {_HELPER};

-- Namespace._resolve: the inode at a normalised path, symlinks not followed. One query walks
-- the components (a plpgsql loop paid a query per component); the walk stops where the Python
-- loop raises, and the last inode it reached says which error: not a directory, no search
-- permission on it, or no entry for the next component.
CREATE OR REPLACE FUNCTION fs3_resolve(c fs3_caller, path TEXT) RETURNS inodes AS $$
DECLARE
    parts TEXT[] := fs3_components(path);
    last RECORD;
    walked TEXT;
BEGIN
    WITH RECURSIVE walk AS (
        SELECT 0 AS depth, i AS node FROM inodes i WHERE i.id = 1
        UNION ALL
        SELECT w.depth + 1, i FROM walk w
            JOIN dentries d ON d.parent = (w.node).id AND d.name = parts[w.depth + 1]
            JOIN inodes i ON i.id = d.child
            WHERE w.depth < cardinality(parts) AND (w.node).kind = 'directory'
                AND fs3_allowed(c, w.node, 1)
    )
    SELECT w.depth, w.node INTO last FROM walk w ORDER BY w.depth DESC LIMIT 1;
    IF last.depth = cardinality(parts) THEN
        RETURN last.node;
    END IF;
    walked := '/' || array_to_string(parts[1:last.depth], '/');
    IF (last.node).kind <> 'directory' THEN
        PERFORM fs3_fail('NotADirectory', 'not a directory', walked);
    END IF;
    IF NOT fs3_allowed(c, last.node, 1) THEN
        PERFORM fs3_fail('PermissionDenied', 'permission denied', walked);
    END IF;
    PERFORM fs3_fail('NotFound', 'no such file or directory', path);
END $$ {_HELPER};

-- Namespace._parent: the directory holding a path's last component.
CREATE OR REPLACE FUNCTION fs3_parent(c fs3_caller, path TEXT) RETURNS inodes AS $$
DECLARE dir inodes;
BEGIN
    IF fs3_basename(path) = '' THEN
        PERFORM fs3_fail('InvalidArgument', 'operation not allowed on the root', path);
    END IF;
    dir := fs3_resolve(c, fs3_dirname(path));
    IF dir.kind <> 'directory' THEN
        PERFORM fs3_fail('NotADirectory', 'parent is not a directory', fs3_dirname(path));
    END IF;
    RETURN dir;
END $$ {_HELPER};

-- fs3_resolve of ``path`` given ``dir``, its parent from fs3_parent: the walk's last step
-- (the steps before it passed in fs3_parent), without walking from the root again.
CREATE OR REPLACE FUNCTION fs3_resolve_in(c fs3_caller, dir inodes, path TEXT) RETURNS inodes AS $$
DECLARE node inodes;
BEGIN
    IF NOT fs3_allowed(c, dir, 1) THEN
        PERFORM fs3_fail('PermissionDenied', 'permission denied', fs3_dirname(path));
    END IF;
    SELECT i.* INTO node FROM dentries d JOIN inodes i ON i.id = d.child
        WHERE d.parent = dir.id AND d.name = fs3_basename(path);
    IF NOT FOUND THEN
        PERFORM fs3_fail('NotFound', 'no such file or directory', path);
    END IF;
    RETURN node;
END $$ {_HELPER};

CREATE OR REPLACE FUNCTION fs3_has_entry(dir BIGINT, leaf TEXT) RETURNS BOOLEAN AS $$
BEGIN RETURN EXISTS (SELECT 1 FROM dentries WHERE parent = dir AND name = leaf); END $$ {_HELPER};

CREATE OR REPLACE FUNCTION fs3_has_children(dir BIGINT) RETURNS BOOLEAN AS $$
BEGIN RETURN EXISTS (SELECT 1 FROM dentries WHERE parent = dir); END $$ {_HELPER};

-- quota.path_of: a directory's path from its parents' entries (for error messages).
CREATE OR REPLACE FUNCTION fs3_path_of(node inodes) RETURNS TEXT AS $$
DECLARE
    names TEXT[] := '{{}}';
    up inodes;
    leaf TEXT;
BEGIN
    WHILE node.id <> 1 LOOP
        SELECT * INTO up FROM inodes WHERE id = node.parent;
        SELECT d.name INTO leaf FROM dentries d WHERE d.parent = node.parent AND d.child = node.id
            ORDER BY d.name LIMIT 1;
        IF up.id IS NULL OR leaf IS NULL THEN
            RETURN '<inode ' || node.id || ', unlinked>/' || array_to_string(names, '/');
        END IF;
        names := leaf || names;
        node := up;
    END LOOP;
    RETURN '/' || array_to_string(names, '/');
END $$ {_HELPER};

-- quota.quota_dirs: directories with a quota from ``dir`` up to the root, nearest first. Most
-- namespaces have no quota at all: one probe of the index of quota directories
-- (inodes_with_quota, fs3.meta.postgres) answers for them; else one query walks the parents.
CREATE OR REPLACE FUNCTION fs3_quota_dirs(dir BIGINT) RETURNS BIGINT[] AS $$
BEGIN
    LOCK TABLE fs3_quota_gate IN ROW SHARE MODE;  -- no quota is being started meanwhile
    IF NOT EXISTS (SELECT 1 FROM inodes WHERE q_max_bytes IS NOT NULL) THEN
        RETURN '{{}}';
    END IF;
    RETURN ARRAY(
        WITH RECURSIVE up AS (
            SELECT i.id, i.parent, i.q_max_bytes, 0 AS depth FROM inodes i WHERE i.id = dir
            UNION ALL
            SELECT i.id, i.parent, i.q_max_bytes, up.depth + 1
                FROM up JOIN inodes i ON i.id = up.parent
                WHERE up.id <> 1 AND up.depth < 65536  -- a parent loop would be a bug: stop
        )
        SELECT id FROM up WHERE q_max_bytes IS NOT NULL ORDER BY depth);
END $$ {_HELPER};

-- quota.charge: adds to the usage of ``dirs``; with ``chk`` growth may not pass a limit.
CREATE OR REPLACE FUNCTION fs3_charge(
    dirs BIGINT[], nbytes BIGINT, ninodes BIGINT, path TEXT, chk BOOLEAN DEFAULT TRUE
) RETURNS VOID AS $$
DECLARE
    dir_id BIGINT;
    q inodes;
BEGIN
    FOREACH dir_id IN ARRAY dirs LOOP
        SELECT * INTO STRICT q FROM inodes WHERE id = dir_id FOR UPDATE;
        IF chk AND nbytes > 0 AND q.q_max_bytes <> 0
                AND q.q_used_bytes + nbytes > q.q_max_bytes THEN
            PERFORM fs3_fail('QuotaExceeded', 'disk quota exceeded: ' || (q.q_used_bytes + nbytes)
                || ' bytes would pass the limit of ' || q.q_max_bytes || ' bytes on '
                || fs3_path_of(q), path);
        END IF;
        IF chk AND ninodes > 0 AND q.q_max_inodes <> 0
                AND q.q_used_inodes + ninodes > q.q_max_inodes THEN
            PERFORM fs3_fail('QuotaExceeded', 'disk quota exceeded: ' || (q.q_used_inodes + ninodes)
                || ' inodes would pass the limit of ' || q.q_max_inodes || ' inodes on '
                || fs3_path_of(q), path);
        END IF;
        UPDATE inodes SET q_used_bytes = q_used_bytes + nbytes,
                          q_used_inodes = q_used_inodes + ninodes WHERE id = dir_id;
    END LOOP;
END $$ {_HELPER};

-- quota.charge_dir
CREATE OR REPLACE FUNCTION fs3_charge_dir(dir BIGINT, nbytes BIGINT, ninodes BIGINT, path TEXT)
RETURNS VOID AS $$
BEGIN
    IF nbytes = 0 AND ninodes = 0 THEN RETURN; END IF;
    LOCK TABLE fs3_quota_gate IN ROW SHARE MODE;  -- no quota is being started meanwhile
    IF EXISTS (SELECT 1 FROM inodes WHERE q_max_bytes IS NOT NULL) THEN  -- any quota
        PERFORM fs3_charge(fs3_quota_dirs(dir), nbytes, ninodes, path);
    END IF;
END $$ {_HELPER};

-- quota.usage_below: (bytes, inodes) below a directory; one with a quota of its own counts
-- by its recorded usage.
CREATE OR REPLACE FUNCTION fs3_usage_below(dir BIGINT, OUT nbytes BIGINT, OUT ninodes BIGINT) AS $$
BEGIN
    WITH RECURSIVE below AS (
        SELECT i.* FROM dentries d JOIN inodes i ON i.id = d.child WHERE d.parent = dir
        UNION ALL
        SELECT i.* FROM below b JOIN dentries d ON d.parent = b.id JOIN inodes i ON i.id = d.child
            WHERE b.kind = 'directory' AND b.q_max_bytes IS NULL
    )
    SELECT coalesce(sum(CASE WHEN kind = 'file' THEN length
                             WHEN kind = 'directory' THEN coalesce(q_used_bytes, 0)
                             ELSE 0 END), 0),
           count(*) + coalesce(sum(CASE WHEN kind = 'directory' THEN coalesce(q_used_inodes, 0)
                                   ELSE 0 END), 0)
        INTO nbytes, ninodes FROM below;
END $$ {_HELPER};

-- quota.usage_of: what an inode and everything below it uses.
CREATE OR REPLACE FUNCTION fs3_usage_of(node inodes, OUT nbytes BIGINT, OUT ninodes BIGINT) AS $$
BEGIN
    IF node.kind = 'file' THEN
        nbytes := node.length; ninodes := 1;
    ELSIF node.kind <> 'directory' THEN
        nbytes := 0; ninodes := 1;
    ELSIF node.q_max_bytes IS NOT NULL THEN
        nbytes := node.q_used_bytes; ninodes := node.q_used_inodes + 1;
    ELSE
        SELECT u.nbytes, u.ninodes + 1 INTO nbytes, ninodes FROM fs3_usage_below(node.id) u;
    END IF;
END $$ {_HELPER};

-- quota.move_charges: moves an inode's usage from the quotas above ``src`` to those above
-- ``dst``; quotas above both are left alone.
CREATE OR REPLACE FUNCTION fs3_move_charges(
    moving inodes, src BIGINT, dst BIGINT, path TEXT, chk BOOLEAN DEFAULT TRUE
) RETURNS VOID AS $$
DECLARE
    src_dirs BIGINT[];
    dst_dirs BIGINT[];
    leaving BIGINT[];
    arriving BIGINT[];
    usage RECORD;
BEGIN
    IF src = dst THEN RETURN; END IF;
    src_dirs := fs3_quota_dirs(src);
    dst_dirs := fs3_quota_dirs(dst);
    leaving := ARRAY(SELECT x FROM unnest(src_dirs) WITH ORDINALITY t(x, o)
                     WHERE x <> ALL(dst_dirs) ORDER BY o);
    arriving := ARRAY(SELECT x FROM unnest(dst_dirs) WITH ORDINALITY t(x, o)
                      WHERE x <> ALL(src_dirs) ORDER BY o);
    IF cardinality(leaving) = 0 AND cardinality(arriving) = 0 THEN RETURN; END IF;
    IF moving.kind = 'directory' THEN
        -- Its usage counted below it, and every charge in it, follow one parent chain: no
        -- charge that walked up the old one is in flight.
        LOCK TABLE fs3_quota_gate IN EXCLUSIVE MODE;
    END IF;
    SELECT * INTO usage FROM fs3_usage_of(moving);
    PERFORM fs3_charge(leaving, -usage.nbytes, -usage.ninodes, path);
    PERFORM fs3_charge(arriving, usage.nbytes, usage.ninodes, path, chk);
END $$ {_HELPER};

-- Namespace._drop_link: one name of a hard-linked file went.
CREATE OR REPLACE FUNCTION fs3_drop_link(node inodes, now DOUBLE PRECISION) RETURNS VOID AS $$
DECLARE
    home BIGINT := node.parent;
    first_parent BIGINT;
BEGIN
    SELECT d.parent INTO first_parent FROM dentries d WHERE d.child = node.id
        ORDER BY d.parent, d.name LIMIT 1;
    IF first_parent IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM dentries WHERE child = node.id AND parent = home) THEN
        home := first_parent;
        PERFORM fs3_move_charges(node, node.parent, home, NULL, FALSE);
    END IF;
    UPDATE inodes SET nlink = node.nlink - 1, parent = home, ctime = now WHERE id = node.id;
END $$ {_HELPER};

-- Namespace._discard: drops what a removed entry held of ``node``. The common case, the last
-- name of an inode, is one DELETE that returns the row as this transaction sees it now.
CREATE OR REPLACE FUNCTION fs3_discard(node inodes, now DOUBLE PRECISION) RETURNS VOID AS $$
DECLARE fresh inodes;
BEGIN
    DELETE FROM inodes WHERE id = node.id AND (kind = 'directory' OR nlink <= 1)
        RETURNING * INTO fresh;
    IF FOUND THEN
        node := fresh;
    ELSE  -- another name keeps it (or its row is gone: then as Python does, by ``node``)
        SELECT * INTO fresh FROM inodes WHERE id = node.id;
        IF FOUND OR (node.kind <> 'directory' AND node.nlink > 1) THEN
            PERFORM fs3_drop_link(coalesce(fresh, node), now);
            RETURN;
        END IF;
    END IF;
    PERFORM fs3_charge_dir(node.parent, CASE WHEN node.kind = 'file' THEN -node.length ELSE 0 END,
                           -1, NULL);
    IF node.kind = 'file' AND node.chains <> '' THEN
        INSERT INTO garbage (inode, from_index, chains) VALUES (node.id, 0, node.chains);
    END IF;
    IF node.kind = 'directory' AND node.parent <> node.id THEN  -- its ".." no longer names it
        UPDATE inodes SET nlink = nlink - 1 WHERE id = node.parent;
    END IF;
END $$ {_HELPER};

-- Namespace._moved: an entry of ``moving`` went from ``src`` to ``dst``. Its parent column is
-- as the rename resolved it (nothing the rename did before changes it); the UPDATE returns
-- the rest as this transaction sees it now.
CREATE OR REPLACE FUNCTION fs3_moved(
    moving inodes, src BIGINT, dst BIGINT, path TEXT, now DOUBLE PRECISION
) RETURNS inodes AS $$
DECLARE moved inodes;
BEGIN
    UPDATE inodes SET parent = CASE WHEN parent = src THEN dst ELSE parent END, ctime = now
        WHERE id = moving.id RETURNING * INTO moved;
    IF moved.parent <> moving.parent THEN
        PERFORM fs3_move_charges(moved, moving.parent, moved.parent, path);
    END IF;
    RETURN moved;
END $$ {_HELPER};

-- Namespace._make: creates ``leaf`` in ``dir`` (locked and touched by fs3_lock_touched),
-- owned by the caller, or in place of file ``replacing`` (its owner and mode stay; it needs
-- write permission on that file instead).
CREATE OR REPLACE FUNCTION fs3_make(
    c fs3_caller, dir inodes, leaf TEXT, kind TEXT, mode INTEGER, path TEXT, replacing inodes,
    now DOUBLE PRECISION, chunk_size INTEGER DEFAULT 0, chains TEXT DEFAULT '',
    seed INTEGER DEFAULT 0, target TEXT DEFAULT ''
) RETURNS inodes AS $$
DECLARE
    new_uid BIGINT := c.uid;
    new_gid BIGINT := c.gid;
    made inodes;
BEGIN
    IF replacing.id IS NULL THEN
        IF NOT fs3_allowed(c, dir, 3) THEN
            PERFORM fs3_fail('PermissionDenied', 'permission denied', path);
        END IF;
        -- permissions.new_owner
        IF dir.mode & 1024 <> 0 THEN
            new_gid := dir.gid;
            IF kind = 'directory' THEN mode := mode | 1024; END IF;
        END IF;
        IF kind <> 'directory' AND NOT c.admin AND NOT fs3_in_group(c, new_gid) THEN
            mode := mode & ~1024;
        END IF;
    ELSE
        IF NOT fs3_allowed(c, replacing, 2) THEN
            PERFORM fs3_fail('PermissionDenied', 'permission denied', path);
        END IF;
        new_uid := replacing.uid;
        new_gid := replacing.gid;
        mode := fs3_after_write(c, replacing);
    END IF;
    PERFORM fs3_charge_dir(dir.id, 0, 1, path);
    INSERT INTO inodes (id, kind, mode, length, mtime, ctime, parent, chunk_size, chains, seed,
                        target, atime, uid, gid, nlink)
        VALUES (nextval('inode_ids'), kind, mode, 0, now, now, dir.id, chunk_size, chains,
                seed, target, 0, new_uid, new_gid,
                CASE WHEN kind = 'directory' THEN 2 ELSE 1 END)
        RETURNING * INTO made;
    INSERT INTO dentries VALUES (dir.id, leaf, made.id)
        ON CONFLICT (parent, name) DO UPDATE SET child = EXCLUDED.child;
    IF made.kind = 'directory' THEN  -- its ".." names dir
        UPDATE inodes SET nlink = nlink + 1 WHERE id = dir.id;
    END IF;
    RETURN made;
END $$ {_HELPER};
"""

_OPERATIONS = f"""
CREATE OR REPLACE FUNCTION fs3_stat(c fs3_caller, path TEXT) RETURNS inodes AS $$
BEGIN RETURN fs3_resolve(c, path); END $$ {_PIN};

-- Namespace.open: follows symlinks as the last component, at most 8 of them.
CREATE OR REPLACE FUNCTION fs3_open(c fs3_caller, path TEXT, access INTEGER) RETURNS inodes AS $$
DECLARE node inodes;
BEGIN
    FOR hop IN 1..8 LOOP
        node := fs3_resolve(c, path);
        IF node.kind <> 'symlink' THEN
            IF node.kind = 'directory' THEN
                PERFORM fs3_fail('IsADirectory', 'is a directory', path);
            END IF;
            PERFORM fs3_check(c, node, access & 6, path);
            RETURN node;
        END IF;
        path := fs3_normalize(CASE WHEN node.target LIKE '/%' THEN node.target
                                   ELSE fs3_dirname(path) || '/' || node.target END);
    END LOOP;
    PERFORM fs3_fail('InvalidArgument', 'too many levels of symbolic links', path);
END $$ {_PIN};

CREATE OR REPLACE FUNCTION fs3_mkdir(
    c fs3_caller, path TEXT, parents BOOLEAN, mode INTEGER, now DOUBLE PRECISION
) RETURNS inodes AS $$
DECLARE
    node inodes;
    found_node inodes;
    walked TEXT := '';
    part TEXT;
BEGIN
    IF NOT parents THEN
        node := fs3_lock_touched(fs3_parent(c, path), now);
        IF fs3_has_entry(node.id, fs3_basename(path)) THEN
            PERFORM fs3_fail('AlreadyExists', 'file exists', path);
        END IF;
        RETURN fs3_make(c, node, fs3_basename(path), 'directory', mode, path, NULL, now);
    END IF;
    SELECT * INTO STRICT node FROM inodes WHERE id = 1;
    FOREACH part IN ARRAY fs3_components(path) LOOP
        walked := walked || '/' || part;
        IF node.kind <> 'directory' THEN
            PERFORM fs3_fail('NotADirectory', 'not a directory', fs3_dirname(walked));
        END IF;
        PERFORM fs3_check(c, node, 1, fs3_dirname(walked));
        SELECT i.* INTO found_node FROM dentries d JOIN inodes i ON i.id = d.child
            WHERE d.parent = node.id AND d.name = part;
        IF NOT FOUND THEN  -- look again under the lock: a concurrent mkdir may have made it
            node := fs3_lock(node);
            SELECT i.* INTO found_node FROM dentries d JOIN inodes i ON i.id = d.child
                WHERE d.parent = node.id AND d.name = part;
        END IF;
        IF NOT FOUND THEN
            node := fs3_make(c, fs3_lock_touched(node, now), part, 'directory', mode, walked,
                             NULL, now);
        ELSE
            node := found_node;
        END IF;
    END LOOP;
    IF node.kind <> 'directory' THEN
        PERFORM fs3_fail('AlreadyExists', 'file exists', path);
    END IF;
    RETURN node;
END $$ {_PIN};

CREATE OR REPLACE FUNCTION fs3_create(
    c fs3_caller, path TEXT, exclusive BOOLEAN, mode INTEGER, now DOUBLE PRECISION,
    chunk_size INTEGER, chains TEXT, seed INTEGER
) RETURNS inodes AS $$
DECLARE
    dir inodes := fs3_lock_touched(fs3_parent(c, path), now);
    leaf TEXT := fs3_basename(path);
    old inodes := fs3_child_locked(dir, leaf);
BEGIN
    IF old.id IS NOT NULL THEN
        IF exclusive THEN
            PERFORM fs3_fail('AlreadyExists', 'file exists', path);
        END IF;
        IF old.kind = 'directory' THEN
            PERFORM fs3_fail('IsADirectory', 'is a directory', path);
        END IF;
        DELETE FROM dentries WHERE parent = dir.id AND name = leaf;
        PERFORM fs3_discard(old, now);  -- before the new inode's charge: a full quota allows it
    END IF;
    RETURN fs3_make(c, dir, leaf, 'file', mode, path, old, now, chunk_size, chains, seed);
END $$ {_PIN};

CREATE OR REPLACE FUNCTION fs3_rename(c fs3_caller, src TEXT, dst TEXT, now DOUBLE PRECISION)
RETURNS inodes AS $$
DECLARE
    sdir inodes := fs3_parent(c, src);
    moving inodes := fs3_resolve_in(c, sdir, src);
    -- In one directory, the destination's parent is the source's, as resolved just now.
    ddir inodes := CASE WHEN fs3_dirname(dst) = fs3_dirname(src) AND fs3_basename(dst) <> ''
                        THEN sdir ELSE fs3_parent(c, dst) END;
    ancestor inodes;
    fresh inodes;
    old inodes;
    moved inodes;
    subdirs INTEGER := 0;
BEGIN
    IF src = dst THEN RETURN moving; END IF;
    IF moving.kind = 'directory' AND ddir.id <> sdir.id THEN
        LOCK TABLE fs3_rename_gate IN EXCLUSIVE MODE;  -- directories' parents stand still
    END IF;
    IF sdir.id = ddir.id THEN
        sdir := fs3_lock(sdir);
        ddir := sdir;
    ELSIF sdir.id < ddir.id THEN
        sdir := fs3_lock(sdir);
        ddir := fs3_lock(ddir);
    ELSE
        ddir := fs3_lock(ddir);
        sdir := fs3_lock(sdir);
    END IF;
    fresh := fs3_child_locked(sdir, fs3_basename(src));
    IF fresh.id IS DISTINCT FROM moving.id THEN
        PERFORM fs3_retry(src || ' names another inode');
    END IF;
    moving := fresh;
    PERFORM fs3_check_delete(c, sdir, moving, src);
    IF NOT fs3_allowed(c, ddir, 3) THEN
        PERFORM fs3_fail('PermissionDenied', 'permission denied', dst);
    END IF;
    IF moving.kind = 'directory' AND ddir.id <> sdir.id THEN
        PERFORM fs3_check(c, moving, 2, src);  -- its ".." changes
    END IF;
    ancestor := ddir;
    WHILE moving.kind = 'directory' LOOP
        IF ancestor.id = moving.id THEN
            PERFORM fs3_fail('InvalidArgument', 'cannot move ' || src || ' into its own subtree',
                             dst);
        END IF;
        EXIT WHEN ancestor.id = 1;
        SELECT * INTO STRICT ancestor FROM inodes WHERE id = ancestor.parent;
    END LOOP;
    old := fs3_child_locked(ddir, fs3_basename(dst));
    IF old.id = moving.id THEN
        RETURN moving;  -- two names of one file: POSIX says rename does nothing
    END IF;
    IF old.id IS NOT NULL THEN
        IF old.kind = 'directory' AND moving.kind <> 'directory' THEN
            PERFORM fs3_fail('IsADirectory', 'is a directory', dst);
        END IF;
        IF moving.kind = 'directory' AND old.kind <> 'directory' THEN
            PERFORM fs3_fail('NotADirectory', 'not a directory', dst);
        END IF;
        IF old.kind = 'directory' AND fs3_has_children(old.id) THEN
            PERFORM fs3_fail('DirectoryNotEmpty', 'directory not empty', dst);
        END IF;
        PERFORM fs3_check_delete(c, ddir, old, dst);
        DELETE FROM dentries WHERE parent = ddir.id AND name = fs3_basename(dst);
        PERFORM fs3_discard(old, now);
    END IF;
    DELETE FROM dentries WHERE parent = sdir.id AND name = fs3_basename(src);
    INSERT INTO dentries VALUES (ddir.id, fs3_basename(dst), moving.id)
        ON CONFLICT (parent, name) DO UPDATE SET child = EXCLUDED.child;
    moved := fs3_moved(moving, sdir.id, ddir.id, dst, now);
    IF moving.kind = 'directory' AND ddir.id <> sdir.id THEN subdirs := 1; END IF;
    UPDATE inodes SET mtime = now, ctime = now, nlink = nlink - subdirs WHERE id = sdir.id;
    IF ddir.id <> sdir.id THEN
        UPDATE inodes SET mtime = now, ctime = now, nlink = nlink + subdirs WHERE id = ddir.id;
    END IF;
    RETURN moved;
END $$ {_PIN};

CREATE OR REPLACE FUNCTION fs3_unlink(c fs3_caller, path TEXT, now DOUBLE PRECISION)
RETURNS VOID AS $$
DECLARE
    dir inodes := fs3_lock_touched(fs3_parent(c, path), now);
    node inodes := fs3_child_locked(dir, fs3_basename(path));
BEGIN
    IF node.id IS NULL THEN
        PERFORM fs3_fail('NotFound', 'no such file or directory', path);
    END IF;
    IF node.kind = 'directory' THEN
        PERFORM fs3_fail('IsADirectory', 'is a directory', path);
    END IF;
    PERFORM fs3_check_delete(c, dir, node, path);
    DELETE FROM dentries WHERE parent = dir.id AND name = fs3_basename(path);
    PERFORM fs3_discard(node, now);
END $$ {_PIN};

CREATE OR REPLACE FUNCTION fs3_rmdir(c fs3_caller, path TEXT, now DOUBLE PRECISION)
RETURNS VOID AS $$
DECLARE
    dir inodes := fs3_lock_touched(fs3_parent(c, path), now);
    node inodes := fs3_resolve_in(c, dir, path);
BEGIN
    IF node.kind <> 'directory' THEN
        PERFORM fs3_fail('NotADirectory', 'not a directory', path);
    END IF;
    node := fs3_lock(node);  -- a create into it holds this lock: one sees the other's entry
    IF fs3_has_children(node.id) THEN
        PERFORM fs3_fail('DirectoryNotEmpty', 'directory not empty', path);
    END IF;
    PERFORM fs3_check_delete(c, dir, node, path);
    DELETE FROM dentries WHERE parent = dir.id AND name = fs3_basename(path);
    PERFORM fs3_discard(node, now);
END $$ {_PIN};

CREATE OR REPLACE FUNCTION fs3_truncate(
    c fs3_caller, path TEXT, new_length BIGINT, now DOUBLE PRECISION
) RETURNS inodes AS $$
DECLARE node inodes := fs3_lock(fs3_resolve(c, path));
BEGIN
    IF node.kind = 'directory' THEN
        PERFORM fs3_fail('IsADirectory', 'is a directory', path);
    END IF;
    PERFORM fs3_check(c, node, 2, path);
    PERFORM fs3_charge_dir(node.parent, new_length - node.length, 0, path);
    IF new_length < node.length AND node.chains <> '' THEN  -- chunks wholly past the new end
        INSERT INTO garbage (inode, from_index, chains)
            VALUES (node.id, (new_length + node.chunk_size - 1) / node.chunk_size, node.chains);
    END IF;
    UPDATE inodes SET length = new_length, mtime = now, ctime = now,
                      mode = fs3_after_write(c, node)
        WHERE id = node.id RETURNING * INTO node;
    RETURN node;
END $$ {_PIN};

CREATE OR REPLACE FUNCTION fs3_set_length(
    c fs3_caller, inode_id BIGINT, new_length BIGINT, now DOUBLE PRECISION
) RETURNS inodes AS $$
DECLARE node inodes;
BEGIN
    SELECT * INTO node FROM inodes WHERE id = inode_id FOR UPDATE;
    IF NOT FOUND THEN
        PERFORM fs3_fail('NotFound', 'file with inode ' || inode_id || ' was deleted while open',
                         NULL);
    END IF;
    -- Its owner too: a file created 0444 is written through the handle that made it.
    IF NOT fs3_is_owner(c, node) THEN
        PERFORM fs3_check(c, node, 2, 'inode ' || inode_id);
    END IF;
    PERFORM fs3_charge_dir(node.parent, new_length - node.length, 0, NULL);
    UPDATE inodes SET length = new_length, mtime = now, ctime = now,
                      mode = fs3_after_write(c, node)
        WHERE id = node.id RETURNING * INTO node;
    RETURN node;
END $$ {_PIN};

CREATE OR REPLACE FUNCTION fs3_set_attr(
    c fs3_caller, path TEXT, new_mode INTEGER, new_atime DOUBLE PRECISION,
    new_mtime DOUBLE PRECISION, now DOUBLE PRECISION
) RETURNS inodes AS $$
DECLARE node inodes := fs3_lock(fs3_resolve(c, path));
BEGIN
    IF new_mode IS NOT NULL THEN
        new_mode := fs3_chmod_mode(c, node, new_mode, path);
    END IF;
    IF new_atime IS NOT NULL OR new_mtime IS NOT NULL THEN
        -- The FUSE kernel sends "now" as a time: within a second of meta's clock is "now".
        PERFORM fs3_check_utime(c, node, coalesce(abs(new_atime - now) < 1.0, TRUE)
                                         AND coalesce(abs(new_mtime - now) < 1.0, TRUE), path);
    END IF;
    UPDATE inodes SET ctime = now, mode = coalesce(new_mode, mode),
                      atime = coalesce(new_atime, atime), mtime = coalesce(new_mtime, mtime)
        WHERE id = node.id RETURNING * INTO node;
    RETURN node;
END $$ {_PIN};

CREATE OR REPLACE FUNCTION fs3_chown(
    c fs3_caller, path TEXT, new_uid BIGINT, new_gid BIGINT, now DOUBLE PRECISION
) RETURNS inodes AS $$
DECLARE node inodes := fs3_chowned(c, fs3_lock(fs3_resolve(c, path)), new_uid, new_gid, path);
BEGIN
    UPDATE inodes SET uid = node.uid, gid = node.gid, mode = node.mode, ctime = now
        WHERE id = node.id RETURNING * INTO node;
    RETURN node;
END $$ {_PIN};

CREATE OR REPLACE FUNCTION fs3_symlink(c fs3_caller, path TEXT, target TEXT, now DOUBLE PRECISION)
RETURNS inodes AS $$
DECLARE dir inodes := fs3_lock_touched(fs3_parent(c, path), now);
BEGIN
    IF fs3_has_entry(dir.id, fs3_basename(path)) THEN
        PERFORM fs3_fail('AlreadyExists', 'file exists', path);
    END IF;
    RETURN fs3_make(c, dir, fs3_basename(path), 'symlink', 511, path, NULL, now, 0, '', 0, target);
END $$ {_PIN};

-- Namespace.link: a hard link ``dst`` to the file at ``src``.
CREATE OR REPLACE FUNCTION fs3_link(c fs3_caller, src TEXT, dst TEXT, now DOUBLE PRECISION)
RETURNS inodes AS $$
DECLARE
    node inodes := fs3_resolve(c, src);
    ddir inodes := fs3_lock_touched(fs3_parent(c, dst), now);
BEGIN
    IF fs3_has_entry(ddir.id, fs3_basename(dst)) THEN
        PERFORM fs3_fail('AlreadyExists', 'file exists', dst);
    END IF;
    IF node.kind = 'directory' THEN
        PERFORM fs3_fail('NotPermitted', 'hard links to directories are not allowed', src);
    END IF;
    PERFORM fs3_check(c, ddir, 3, dst);
    node := fs3_lock(node);  -- deleted since the walk: run again (then src is not found)
    UPDATE inodes SET nlink = node.nlink + 1, ctime = now WHERE id = node.id RETURNING * INTO node;
    INSERT INTO dentries VALUES (ddir.id, fs3_basename(dst), node.id)
        ON CONFLICT (parent, name) DO UPDATE SET child = EXCLUDED.child;
    RETURN node;
END $$ {_PIN};

CREATE OR REPLACE FUNCTION fs3_mknod(
    c fs3_caller, path TEXT, kind TEXT, mode INTEGER, now DOUBLE PRECISION
) RETURNS inodes AS $$
DECLARE dir inodes := fs3_lock_touched(fs3_parent(c, path), now);
BEGIN
    IF fs3_has_entry(dir.id, fs3_basename(path)) THEN
        PERFORM fs3_fail('AlreadyExists', 'file exists', path);
    END IF;
    RETURN fs3_make(c, dir, fs3_basename(path), kind, mode, path, NULL, now);
END $$ {_PIN};

-- Namespace.set_quota: NULL keeps a limit, 0 removes it; both 0: no quota.
CREATE OR REPLACE FUNCTION fs3_set_quota(
    c fs3_caller, path TEXT, max_bytes BIGINT, max_inodes BIGINT
) RETURNS inodes AS $$
DECLARE
    node inodes := fs3_resolve(c, path);
    usage RECORD;
BEGIN
    IF NOT c.admin THEN
        PERFORM fs3_fail('NotPermitted', 'setting a quota needs an admin token', path);
    END IF;
    IF node.kind <> 'directory' THEN
        PERFORM fs3_fail('NotADirectory', 'quotas are set on directories', path);
    END IF;
    -- No charge that found no quota is in flight while the usage below is counted.
    LOCK TABLE fs3_quota_gate IN EXCLUSIVE MODE;
    node := fs3_lock(node);
    max_bytes := coalesce(max_bytes, node.q_max_bytes, 0);
    max_inodes := coalesce(max_inodes, node.q_max_inodes, 0);
    IF max_bytes = 0 AND max_inodes = 0 THEN  -- quota.new_quota
        UPDATE inodes SET q_max_bytes = NULL, q_max_inodes = NULL, q_used_bytes = NULL,
                          q_used_inodes = NULL WHERE id = node.id RETURNING * INTO node;
    ELSIF node.q_max_bytes IS NOT NULL THEN
        UPDATE inodes SET q_max_bytes = max_bytes, q_max_inodes = max_inodes
            WHERE id = node.id RETURNING * INTO node;
    ELSE
        SELECT * INTO usage FROM fs3_usage_below(node.id);
        UPDATE inodes SET q_max_bytes = max_bytes, q_max_inodes = max_inodes,
                          q_used_bytes = usage.nbytes, q_used_inodes = usage.ninodes
            WHERE id = node.id RETURNING * INTO node;
    END IF;
    RETURN node;
END $$ {_PIN};

-- Namespace.length_limit (quota.length_limit): NULL when no quota limits the file's bytes.
CREATE OR REPLACE FUNCTION fs3_length_limit(inode_id BIGINT) RETURNS BIGINT AS $$
DECLARE node inodes;
BEGIN
    SELECT * INTO node FROM inodes WHERE id = inode_id;
    IF NOT FOUND THEN
        PERFORM fs3_fail('NotFound', 'file with inode ' || inode_id || ' was deleted while open',
                         NULL);
    END IF;
    RETURN node.length + (
        SELECT min(greatest(q.q_max_bytes - q.q_used_bytes, 0)) FROM inodes q
            WHERE q.id = ANY(fs3_quota_dirs(node.parent)) AND q.q_max_bytes <> 0);
END $$ {_PIN};

-- MetaTxn.take_lease (fs3.db.take_lease) in one statement: True when ``holder`` holds the
-- lease afterwards; ``previous`` is who held it before.
CREATE OR REPLACE FUNCTION fs3_take_lease(
    lease TEXT, holder_name TEXT, ttl_s DOUBLE PRECISION, OUT won BOOLEAN, OUT previous TEXT
) AS $$
DECLARE
    expires_at DOUBLE PRECISION;
    now DOUBLE PRECISION := extract(epoch from clock_timestamp())::float8;
BEGIN
    INSERT INTO leases VALUES (lease, '', '', 0) ON CONFLICT (name) DO NOTHING;
    SELECT holder, expires INTO previous, expires_at FROM leases WHERE name = lease FOR UPDATE;
    won := previous = holder_name OR expires_at <= now;
    IF won THEN
        UPDATE leases SET holder = holder_name, address = '', expires = now + ttl_s
            WHERE name = lease;
    END IF;
END $$ {_PIN};
"""

# Helpers first: a function's body is checked when it runs, but its parameter types (inodes,
# fs3_caller) must exist when it is created.
STATEMENTS = [_CALLER_TYPE, _HELPERS, _OPERATIONS]
"""What :func:`install` runs, in order (each a script of several statements), before
:func:`listdir_function`."""

# The columns of table inodes with their types, in table order (what ``i.*`` yields).
_INODE_COLUMNS = """SELECT string_agg(format('%I %s', attname, format_type(atttypid, atttypmod)),
                          ', ' ORDER BY attnum)
    FROM pg_attribute WHERE attrelid = 'inodes'::regclass AND attnum > 0 AND NOT attisdropped"""


def listdir_function(inode_columns: str) -> str:
    """fs3_listdir (Namespace.listdir): one page of entries, after ``after_name`` by name, at
    most ``page`` of them, each its name and its inode's columns, ``inode_columns`` (name and
    type of each, in table order). Flat columns, not an ``inodes`` value per entry: taking
    the 19 fields out of 100 such values cost a listing a third of its time on the server."""
    return f"""
CREATE OR REPLACE FUNCTION fs3_listdir(c fs3_caller, path TEXT, after_name TEXT, page BIGINT)
RETURNS TABLE (entry_name TEXT, {inode_columns}) AS $$
DECLARE node inodes := fs3_resolve(c, path);
BEGIN
    IF node.kind <> 'directory' THEN
        PERFORM fs3_fail('NotADirectory', 'not a directory', path);
    END IF;
    IF NOT fs3_allowed(c, node, 4) THEN
        PERFORM fs3_fail('PermissionDenied', 'permission denied', path);
    END IF;
    RETURN QUERY SELECT d.name::TEXT, i.* FROM dentries d JOIN inodes i ON i.id = d.child
        WHERE d.parent = node.id AND d.name > after_name COLLATE "C" ORDER BY d.name LIMIT page;
END $$ {_PIN};"""


def install(cur: Any) -> None:
    """Creates or replaces the functions, inside the caller's transaction (which holds the
    schema lock), pinned to the store's schema: the current one, and pg_temp last."""
    cur.execute(
        "SELECT set_config('search_path', quote_ident(current_schema()) || ', pg_temp', TRUE)"
    )
    for script in STATEMENTS:
        cur.execute(script)
    cur.execute(_INODE_COLUMNS)
    # Its result columns follow the table's: made anew when they differ (a column was added,
    # or the store was made by a version returning one inodes value per entry).
    (columns,) = cur.fetchone()
    cur.execute(
        "SELECT pg_get_function_result(to_regprocedure('fs3_listdir(fs3_caller,text,text,bigint)'))"
    )
    (current,) = cur.fetchone()
    if current is not None and current != f"TABLE(entry_name text, {columns})":
        cur.execute("DROP FUNCTION fs3_listdir(fs3_caller, text, text, bigint)")
    cur.execute(listdir_function(columns))
