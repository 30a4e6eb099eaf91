"""Job specs: what a user asks to run, parsed from YAML and checked field by field.

Every bad field is reported, each on its own line naming the field, the value found and
what is allowed, so one submission shows all that needs fixing.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hai.errors import SpecError

# HAI-Platform's levels (conf/flags/implement.py): 50 highest ... 10 NORMAL.
PRIORITY_LEVELS = (50, 40, 30, 20, 10)
AUTO = -1
"""Priority AUTO: the highest level at which the owner still has quota for the job."""
PRIORITY_NAMES = {"HIGHEST": 50, "VERY_HIGH": 40, "HIGH": 30, "ABOVE_NORMAL": 20, "NORMAL": 10}
RESTART_POLICIES = ("never", "on_failure")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


@dataclass(frozen=True)
class JobSpec:
    """One job: the command to run on each rank and the resources it needs."""

    name: str
    entrypoint: str
    """The command each rank runs, e.g. ``python train.py``; split like a shell would."""
    arguments: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    image: str | None = None
    """Container image; only the Kubernetes executor uses it."""
    nodes: int = 1
    gpus_per_node: int = 8
    priority: int = AUTO
    group: str = "default"
    """The node pool the job runs in."""
    max_run_time: float | None = None
    """Seconds a single run may last before it is stopped; None means no limit."""
    restart_policy: str = "never"
    max_restarts: int = 3
    suspend_grace_period: float = 5.0
    """Seconds between the suspend request and the forced stop (HAI's default is 5 s)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name for f in dataclasses.fields(JobSpec)}


def parse_priority(value: Any) -> int:
    """Turns ``50``, ``"50"``, ``"HIGH"`` or ``"AUTO"`` into a level; raises ValueError."""
    if isinstance(value, str):
        upper = value.strip().upper()
        if upper == "AUTO":
            return AUTO
        if upper in PRIORITY_NAMES:
            return PRIORITY_NAMES[upper]
        value = int(upper) if upper.lstrip("-").isdigit() else value
    if isinstance(value, int) and not isinstance(value, bool) and value in (*PRIORITY_LEVELS, AUTO):
        return value
    raise ValueError(f"must be one of 50, 40, 30, 20, 10 or AUTO, got {value!r}")


def _positive_int(value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"must be an integer >= {minimum}, got {value!r}")
    return value


def _seconds(value: Any, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"must be a positive number of seconds, got {value!r}")
    return float(value)


def _string_list(value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, list):
        raise ValueError(f"must be a list of strings, got {value!r}")
    return [str(v) for v in value]


def _environment(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping of NAME: value, got {value!r}")
    bad = [k for k in value if not isinstance(k, str) or not re.match(r"^[A-Za-z_]\w*$", k)]
    if bad:
        raise ValueError(f"has invalid variable names {bad!r}")
    return {k: str(v) for k, v in value.items()}


def _name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ValueError(
            f"must be 1-63 letters, digits, '.', '_' or '-' starting with a letter or digit, "
            f"got {value!r}"
        )
    return value


def _entrypoint(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty command, got {value!r}")
    return value


def _restart_policy(value: Any) -> str:
    if value not in RESTART_POLICIES:
        raise ValueError(f"must be one of {', '.join(RESTART_POLICIES)}, got {value!r}")
    return value


def _optional_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


def _group(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a non-empty node pool name, got {value!r}")
    return value


_CHECKS = {
    "name": _name,
    "entrypoint": _entrypoint,
    "arguments": _string_list,
    "environment": _environment,
    "image": _optional_str,
    "nodes": lambda v: _positive_int(v, 1),
    "gpus_per_node": lambda v: _positive_int(v, 0),
    "priority": parse_priority,
    "group": _group,
    "max_run_time": lambda v: _seconds(v, allow_none=True),
    "restart_policy": _restart_policy,
    "max_restarts": lambda v: _positive_int(v, 0),
    "suspend_grace_period": lambda v: _seconds(v, allow_none=False),
}


def spec_from_dict(data: Any) -> JobSpec:
    """Validates a mapping and builds the spec.

    Raises:
        SpecError: listing every bad, missing or unknown field, one line each.
    """
    if not isinstance(data, dict):
        raise SpecError([f"the spec must be a mapping of fields, got {type(data).__name__}"])
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key in data:
        if key not in _FIELDS:
            problems.append(f"{key}: unknown field (known: {', '.join(sorted(_FIELDS))})")
    for key in ("name", "entrypoint"):
        if key not in data:
            problems.append(f"{key}: required field is missing")
    for key, check in _CHECKS.items():
        if key in data:
            try:
                values[key] = check(data[key])
            except ValueError as err:
                problems.append(f"{key}: {err}")
    if problems:
        raise SpecError(problems)
    return JobSpec(**values)


def load_spec(text: str, source: str = "<spec>") -> JobSpec:
    """Parses YAML text into a spec; YAML syntax errors become a SpecError naming ``source``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError([f"{source}: not valid YAML: {err}"]) from None
    return spec_from_dict(data)


def load_spec_file(path: str | Path) -> JobSpec:
    """Reads and validates a spec file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SpecError([f"{path}: cannot read the spec file: {err.strerror}"]) from None
    return load_spec(text, str(path))
