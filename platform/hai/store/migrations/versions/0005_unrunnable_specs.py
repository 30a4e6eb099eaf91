"""Stored job specs that issue 17's submit checks refuse: their jobs fail, their specs read back.

Issue 17 made :class:`hai.spec.JobSpec` stricter (the entrypoint is split like a shell
command, NUL characters are refused, counts and seconds are bounded, a variable may not be
both plain and secret). The store builds a JobSpec from each job's stored JSON, so one job
an older release accepted (``nodes: 0``, an unclosed quote) made ``hai ls`` an error and
every scheduling pass fail. This revision walks the jobs once:

* a spec that passes is left as it is;
* a spec that fails has each bad field replaced by its default (``name`` and
  ``entrypoint``, which have none, by the job's name or ``job-ID`` and ``false``), and an
  event keeps the spec as it was stored, secret values masked;
* such a job that had not finished fails, with one line naming the checks it fails and an
  event, and its live runs end, so its agents stop their ranks.

The checks are a frozen copy of ``hai.spec`` as of this revision, not an import: a revision
must do tomorrow what it does today, and the spec module will change (a later tightening
gets its own revision). The copy may only be stricter than ``hai.spec``, never looser (a
value it wrongly refuses is replaced by a default and kept in the event; one it wrongly
passed would still break reads); tests/hai/test_migrate_specs.py checks every rewritten
spec against the current ``hai.spec``.

Revision ID: 0005
"""

import json
import math
import re
import shlex
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"

# Only the columns this revision reads or writes, as they were at 0004.
jobs = sa.table(
    "jobs",
    sa.column("id", sa.Integer),
    sa.column("name", sa.String),
    sa.column("spec", sa.JSON),
    sa.column("state", sa.String),
    sa.column("finished_at", sa.Float),
    sa.column("message", sa.Text),
)
runs = sa.table(
    "runs",
    sa.column("id", sa.Integer),
    sa.column("job_id", sa.Integer),
    sa.column("state", sa.String),
    sa.column("ended_at", sa.Float),
    sa.column("after_stop", sa.String),
    sa.column("reason", sa.Text),
)
events = sa.table(
    "events",
    sa.column("time", sa.Float),
    sa.column("kind", sa.String),
    sa.column("message", sa.Text),
    sa.column("job_id", sa.Integer),
)
UNFINISHED = ("queued", "running", "suspending", "suspended")
LIVE_RUNS = ("running", "suspending", "stopping")

# hai.spec's rules at this revision.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_VARIABLE = re.compile(r"^[A-Za-z_]\w*$")
_PRIORITIES = (50, 40, 30, 20, 10, -1)
_MAX_SECONDS = 10.0**9
Check = Callable[[Any], str | None]
"""A field's check: None when the value passes, else what is wrong with it."""


def _shown(value: Any) -> str:
    """The value in a one-line message: repr escapes newlines; long values are cut."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _name(value: Any) -> str | None:
    if isinstance(value, str) and _NAME.match(value):
        return None
    return f"must be 1-63 letters, digits, '.', '_' or '-', got {_shown(value)}"


def _command(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"must be a string, got {_shown(value)}"
    if "\x00" in value:
        return "holds a NUL character"
    try:
        words = shlex.split(value)
    except ValueError as err:
        return f"cannot be split like a shell command ({str(err).lower()}), got {_shown(value)}"
    return None if words and words[0] else f"must be a non-empty command, got {_shown(value)}"


def _strings(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return f"must be a list of strings, got {_shown(value)}"
    return "holds a NUL character" if any("\x00" in v for v in value) else None


def _variables(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"must be a mapping, got {type(value).__name__}"
    for name, text in value.items():
        if not isinstance(name, str) or not _VARIABLE.match(name):
            return f"has an invalid variable name {_shown(name)}"
        if not isinstance(text, str):  # never a value here: it may be a secret's
            return f"{name} is not a string"
        if "\x00" in text:
            return f"{name} holds a NUL character"
    return None


def _integer(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        if type(value) is int and low <= value <= high:
            return None
        return f"must be an integer {low}-{high}, got {_shown(value)}"

    return check


def _seconds(optional: bool) -> Check:
    def check(value: Any) -> str | None:
        if value is None and optional:
            return None
        if type(value) in (int, float) and math.isfinite(value) and 0 < value <= _MAX_SECONDS:
            return None
        return f"must be seconds above 0 and at most {_MAX_SECONDS:g}, got {_shown(value)}"

    return check


def _one_of(*allowed: Any) -> Check:
    def check(value: Any) -> str | None:
        if any(type(value) is type(a) and value == a for a in allowed):
            return None
        return f"must be one of {', '.join(map(str, allowed))}, got {_shown(value)}"

    return check


def _image(value: Any) -> str | None:
    return (
        None
        if value is None or isinstance(value, str)
        else f"must be a string, got {_shown(value)}"
    )


def _group(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return None
    return f"must be a non-empty string, got {_shown(value)}"


# Each field's check and the value a failing one is replaced by: its default, or for the
# two required fields the job's name and `false` (a command that fails if ever run).
FIELDS: dict[str, tuple[Any, Check]] = {
    "name": (None, _name),
    "entrypoint": ("false", _command),
    "arguments": ([], _strings),
    "environment": ({}, _variables),
    "secret_environment": ({}, _variables),
    "image": (None, _image),
    "nodes": (1, _integer(1, 100_000)),
    "gpus_per_node": (8, _integer(0, 1024)),
    "priority": (-1, _one_of(*_PRIORITIES)),
    "group": ("default", _group),
    "max_run_time": (None, _seconds(optional=True)),
    "restart_policy": ("never", _one_of("never", "on_failure")),
    "max_restarts": (3, _integer(0, 1_000_000)),
    "suspend_grace_period": (5.0, _seconds(optional=False)),
}
REQUIRED = ("name", "entrypoint")


def readable(job_id: int, job_name: str, stored: Any) -> tuple[dict[str, Any], list[str]]:
    """The stored spec with each field that fails its check replaced (unknown ones dropped),
    and one line per failed check; no lines when the spec passes as stored."""
    if not isinstance(stored, dict):
        problems = [f"the spec is not a mapping, got {_shown(stored)}"]
        stored = {}
    else:
        problems = [f"{key}: unknown field" for key in stored if key not in FIELDS]
    spec = {key: value for key, value in stored.items() if key in FIELDS}
    for key, (default, check) in FIELDS.items():
        if key in spec:
            why = check(spec[key])
        elif key in REQUIRED:
            why = "required field is missing"
        else:
            continue
        if why is None:
            continue
        problems.append(f"{key}: {why}")
        if key == "name":
            default = job_name if _name(job_name) is None else f"job-{job_id}"
        spec[key] = default
    both = sorted(set(spec.get("environment", {})) & set(spec.get("secret_environment", {})))
    if both:
        problems.append(f"environment and secret_environment both set {', '.join(both)}")
        spec["secret_environment"] = {}
    return spec, problems


def _masked(stored: Any) -> str:
    """The stored spec as one JSON line, each secret value shown as ***."""
    if isinstance(stored, dict) and isinstance(stored.get("secret_environment"), dict):
        stored = {
            **stored,
            "secret_environment": dict.fromkeys(stored["secret_environment"], "***"),
        }
    return json.dumps(stored, sort_keys=True)


def upgrade() -> None:
    conn = op.get_bind()
    now = time.time()
    every = sa.select(jobs.c.id, jobs.c.name, jobs.c.state, jobs.c.spec).order_by(jobs.c.id)
    for job_id, name, state, stored in conn.execute(every).all():  # all: the loop updates jobs
        spec, problems = readable(job_id, name, stored)
        if not problems:
            continue
        checks = "; ".join(problems)
        conn.execute(sa.update(jobs).where(jobs.c.id == job_id).values(spec=spec))
        conn.execute(
            sa.insert(events).values(
                time=now,
                kind="spec",
                job_id=job_id,
                message=f"job {job_id}'s spec was rewritten by the upgrade to schema 0005, "
                f"as it failed the checks of this hai ({checks}); as stored before: "
                f"{_masked(stored)}",
            )
        )
        if state not in UNFINISHED:
            continue
        why = (
            f"its spec fails the checks of this hai ({checks}); the spec as "
            f"stored is in the job's events: fix it and submit it again"
        )
        conn.execute(
            sa.update(jobs)
            .where(jobs.c.id == job_id)
            .values(state="failed", finished_at=now, message=why)
        )
        # Ending its runs takes them out of their nodes' assignments: the agents stop them.
        conn.execute(
            sa.update(runs)
            .where((runs.c.job_id == job_id) & runs.c.state.in_(LIVE_RUNS))
            .values(state="done", ended_at=now, after_stop="fail", reason=why)
        )
        conn.execute(
            sa.insert(events).values(
                time=now, kind="finish", job_id=job_id, message=f"job {job_id} failed: {why}"
            )
        )
