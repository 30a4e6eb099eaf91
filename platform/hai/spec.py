"""Job specs: what a user asks to run, parsed from YAML and checked field by field.

:class:`JobSpec` is the one shape a job has from ``hai submit`` (or a HaiJob) to the
scheduler's store and the assignments agents get: its defaults and rules live here and
nowhere else, and the HaiJob CRD's schema is generated from it (:mod:`hai.k8s.crd`).

It is a pydantic dataclass: validated on construction, and still a dataclass, so
``dataclasses.asdict`` turns it into the JSON the store and the wire carry.

Every bad field is reported, each on its own line naming the field, the value found and
what is allowed, so one submission shows all that needs fixing.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pydantic.dataclasses import dataclass
from pydantic_core import ErrorDetails

from hai.errors import ConfigError, SpecError

# HAI-Platform's levels (conf/flags/implement.py): 50 highest ... 10 NORMAL.
PRIORITY_LEVELS = (50, 40, 30, 20, 10)
AUTO = -1
"""Priority AUTO: the highest level at which the owner still has quota for the job."""
PRIORITY_NAMES = {"HIGHEST": 50, "VERY_HIGH": 40, "HIGH": 30, "ABOVE_NORMAL": 20, "NORMAL": 10}
RestartPolicy = Literal["never", "on_failure"]
RESTART_POLICIES: tuple[str, ...] = get_args(RestartPolicy)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_VARIABLE = re.compile(r"^[A-Za-z_]\w*$")


def parse_priority(value: Any) -> int:
    """Turns ``50``, ``"50"``, ``"HIGH"`` or ``"AUTO"`` into a level.

    Raises:
        ConfigError: anything else (a ValueError, so a spec's field reports it, and one line
            where a server parses a request's priority).
    """
    if isinstance(value, str):
        upper = value.strip().upper()
        if upper == "AUTO":
            return AUTO
        if upper in PRIORITY_NAMES:
            return PRIORITY_NAMES[upper]
        value = int(upper) if upper.lstrip("-").isdigit() else value
    if isinstance(value, int) and not isinstance(value, bool) and value in (*PRIORITY_LEVELS, AUTO):
        return value
    raise ConfigError(f"must be one of 50, 40, 30, 20, 10 or AUTO, got {value!r}")


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"must be 1-63 letters, digits, '.', '_' or '-' starting with a letter or digit, "
            f"got {value!r}"
        )
    return value


_PLAIN_COMMAND = re.compile(r"[!#-&(-\[\]-~ \t\r\n]*")
"""ASCII with no quote, backslash or whitespace other than shlex's: ``str.split`` cuts such a
command into the same words as ``shlex.split``, several times faster (every stored job's
spec is checked again when the store reads it)."""


def _command(value: str) -> str:
    """Splits the command as the scheduler will for each rank, so a broken one is refused at
    submit instead of failing every heartbeat of the node it lands on."""
    try:
        words = value.split() if _PLAIN_COMMAND.fullmatch(value) else shlex.split(value)
    except ValueError as err:  # shlex's "No closing quotation" / "No escaped character"
        raise ValueError(
            f"cannot be split like a shell command ({str(err).lower()}), got {value!r}; "
            f"close the quote or escape it"
        ) from None
    if not words or not words[0]:
        raise ValueError(f"must be a non-empty command, got {value!r}")
    return value


# YAML reads `--lr 3` and `OMP_NUM_THREADS: 4` as numbers; a command line and an
# environment hold strings, so scalars in those two places become the text YAML read.
def _strings(value: Any) -> Any:
    return [str(v) for v in value] if isinstance(value, list) else value


def _no_nul(value: Any) -> Any:
    """A NUL can be in YAML text but in no argv or environment: exec refuses it on the node."""
    texts = (
        value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
    )
    bad = [text for text in texts if "\x00" in text]
    if bad:
        raise ValueError(f"holds a NUL character, which no command line can carry, got {bad[0]!r}")
    return value


def _no_nul_secret(value: dict[str, str]) -> dict[str, str]:
    """As :func:`_no_nul`, naming the variable and never its value."""
    bad = [name for name, text in value.items() if "\x00" in text]
    if bad:
        raise ValueError(f"{bad[0]} holds a NUL character, which no environment can carry")
    return value


def _environment(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    bad = [k for k in value if not isinstance(k, str) or not _VARIABLE.match(k)]
    if bad:
        raise ValueError(f"has invalid variable names {bad!r}")
    return {k: str(v) for k, v in value.items()}


# Counts and seconds are strict: YAML's `true` or `"2"` where a number belongs is a mistake
# to report, not to coerce. Each has an upper bound, so a typo like 10**30 is one line here
# and never overflows the store's 64-bit INTEGER (an internal error) or schedules forever.
MAX_NODES = 100_000
"""More nodes than any one cluster has (DeepSeek's Fire-Flyer 2 has about 1,250)."""
MAX_GPUS_PER_NODE = 1024
"""More GPUs than any one machine holds (8 is usual; 16-way boards exist)."""
MAX_RESTARTS = 1_000_000
MAX_SECONDS = 10.0**9
"""About 31 years: longer than any run, and finite (YAML's `.inf` is refused)."""
Count = Annotated[int, Field(strict=True)]
Seconds = Annotated[float, Field(strict=True, gt=0, le=MAX_SECONDS)]
Priority = Annotated[
    int,
    BeforeValidator(parse_priority),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "enum": [*PRIORITY_LEVELS, AUTO]},
                {"type": "string", "enum": [*PRIORITY_NAMES, "AUTO"]},
            ]
        }
    ),
]


@dataclass(frozen=True, config=ConfigDict(extra="forbid", use_attribute_docstrings=True))
class JobSpec:
    """One job: the command to run on each rank and the resources it needs."""

    name: Annotated[str, AfterValidator(_name)]
    """The job's name: 1-63 letters, digits, '.', '_' or '-'."""
    entrypoint: Annotated[
        str, Field(min_length=1), AfterValidator(_command), AfterValidator(_no_nul)
    ]
    """The command each rank runs, e.g. "python train.py"; split like a shell would."""
    arguments: Annotated[list[str], BeforeValidator(_strings), AfterValidator(_no_nul)] = (
        dataclasses.field(default_factory=list)
    )
    """Arguments after the entrypoint."""
    environment: Annotated[
        dict[str, str], BeforeValidator(_environment), AfterValidator(_no_nul)
    ] = dataclasses.field(default_factory=dict)
    """Extra environment variables of every rank."""
    secret_environment: Annotated[
        dict[str, str], BeforeValidator(_environment), AfterValidator(_no_nul_secret)
    ] = dataclasses.field(default_factory=dict)
    """Environment variables of every rank whose values no API, log or event ever shows."""
    image: str | None = None
    """Container image of the ranks (Kubernetes only); the executor's default when unset."""
    nodes: Annotated[Count, Field(ge=1, le=MAX_NODES)] = 1
    """Whole nodes the job runs on, all at once or not at all."""
    gpus_per_node: Annotated[Count, Field(ge=0, le=MAX_GPUS_PER_NODE)] = 8
    """GPUs per node, one rank each; 0 runs one CPU rank."""
    priority: Priority = AUTO
    """50 (HIGHEST), 40, 30, 20, 10 (NORMAL), a name, or AUTO (-1): the highest with quota."""
    group: Annotated[str, Field(min_length=1)] = "default"
    """The node pool the job runs in."""
    max_run_time: Seconds | None = None
    """Seconds one run may last before it is stopped; unset is no limit."""
    restart_policy: RestartPolicy = "never"
    """Whether a failed run is started again or fails the job."""
    max_restarts: Annotated[Count, Field(ge=0, le=MAX_RESTARTS)] = 3
    """Restarts after failures that the restart policy allows."""
    suspend_grace_period: Seconds = 5.0
    """Seconds between a suspend request and the forced stop (HAI's default is 5 s)."""

    def __post_init__(self) -> None:
        both = sorted(set(self.environment) & set(self.secret_environment))
        if both:
            raise ValueError(
                f"environment and secret_environment both set {', '.join(both)}; "
                f"keep each variable in one of them"
            )

    def to_dict(self) -> dict[str, Any]:
        """Every field, as the store and ``Submit`` carry it (JSON types)."""
        return dataclasses.asdict(self)

    def redacted(self) -> JobSpec:
        """This spec as the platform shows it: each secret value replaced by ``***``."""
        if not self.secret_environment:
            return self
        return dataclasses.replace(
            self, secret_environment={name: SECRET_MASK for name in self.secret_environment}
        )


SECRET_MASK = "***"
"""What is shown in place of a secret environment value."""
FIELDS = tuple(f.name for f in dataclasses.fields(JobSpec))
_ADAPTER = TypeAdapter(JobSpec)


def json_schema() -> dict[str, Any]:
    """The spec's JSON Schema (what it accepts), as pydantic generates it."""
    return _ADAPTER.json_schema()


def _problem(error: ErrorDetails) -> str:
    """One line for one of pydantic's errors, in the form ``FIELD: what is wrong, got VALUE``."""
    where = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if not where and kind == "value_error":  # a rule across fields (JobSpec.__post_init__)
        return str(error["ctx"]["error"])
    if kind == "missing":
        return f"{where}: required field is missing"
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"{where}: unknown field (known: {', '.join(sorted(FIELDS))})"
    if kind == "value_error":  # our own validators' messages name the value already
        return f"{where}: {error['ctx']['error']}"
    message = error["msg"]
    return f"{where}: {message[0].lower()}{message[1:]}, got {error['input']!r}"


def spec_from_dict(data: Any) -> JobSpec:
    """Validates a mapping and builds the spec.

    Raises:
        SpecError: listing every bad, missing or unknown field, one line each.
    """
    if not isinstance(data, dict):
        raise SpecError([f"the spec must be a mapping of fields, got {type(data).__name__}"])
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as err:
        raise SpecError([_problem(e) for e in err.errors()]) from None


def load_spec(text: str, source: str | None = None) -> JobSpec:
    """Parses YAML text into a spec.

    Raises:
        SpecError: the YAML is broken or a field is bad; each line starts with ``source``
            (e.g. the file's name) when given.
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError([f"{source or 'the spec'}: not valid YAML: {err}"]) from None
    try:
        return spec_from_dict(data)
    except SpecError as err:
        if source is None:
            raise
        raise SpecError([f"{source}: {line}" for line in err.problems]) from None


def load_spec_file(path: str | Path) -> JobSpec:
    """Reads and validates a spec file; every problem names the file and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SpecError([f"{path}: cannot read the spec file: {err.strerror}"]) from None
    except UnicodeDecodeError as err:
        raise SpecError(
            [f"{path}: not UTF-8 text (byte {err.start}); save the spec file as UTF-8"]
        ) from None
    return load_spec(text, str(path))
