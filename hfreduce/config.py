"""Tuning knobs of hfreduce: one pydantic-settings model, read from ``HFREDUCE_*`` variables.

Values come from the environment (``HFREDUCE_<FIELD>``; the timeout is ``HFREDUCE_TIMEOUT``),
then from keyword arguments, under pydantic's lax coercion, the rule fs3, hai and deepseek
settings follow too: ``"65536"`` is an int, ``"2.5"`` a float, anything else is an error.
"""

from __future__ import annotations

import ipaddress

from pydantic import Field, ValidationError, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from hfreduce.errors import ConfigError

# Chosen by sweeping chunk size and depth with 64 MiB calls on the 2-core dev machine
# (1x2, 1x4 and 2x2 ranks; see the issue note): 2 MiB chunks beat 512 KiB and 1 MiB in
# every layout (the per-chunk Python and wake-up cost, 30-60 us, is amortised), and the
# staging area of depth x chunk x (local ranks + 1) still fits the 32 MiB L3 at depth 2.
SINGLE_NODE_CHUNK_BYTES = 2 << 20
MULTI_NODE_CHUNK_BYTES = 4 << 20
"""Across nodes every chunk also costs each tree thread a frame (Python, a wake-up, a
syscall or two): 2x2 ranks on test hosts spent 10% less CPU per 64 MiB call with 4 MiB
chunks than with 2 (issue 19), and their only cost, a longer pipeline fill, is kept
small by the call's short first chunk (plan.FIRST_CHUNK_BYTES)."""
SINGLE_NODE_DEPTH = 2
"""On one node two slots already overlap one chunk's adds with the next one's copy, and
more slots only push the staging area out of cache (1x2: 21 ms at depth 2, 28 at 4)."""
MULTI_NODE_DEPTH = 4
"""Across nodes a chunk spends a tree round trip on the wire; more slots keep it busy."""


class HfreduceConfig(BaseSettings):
    """How hfreduce pipelines a call; every rank of a group must use the same values.

    Built with no arguments it reads the environment, as :func:`load_config` does.
    """

    model_config = SettingsConfigDict(
        env_prefix="HFREDUCE_", extra="forbid", use_attribute_docstrings=True, populate_by_name=True
    )

    chunk_bytes: int | None = None
    """Bytes of each rank's tensor staged, summed and sent as one pipeline step; None
    picks SINGLE_NODE_CHUNK_BYTES or MULTI_NODE_CHUNK_BYTES by the job's layout."""
    pipeline_depth: int | None = Field(None, ge=2)
    """Chunks in flight at once (staging slots per rank); None picks SINGLE_NODE_DEPTH or
    MULTI_NODE_DEPTH by the job's layout."""
    timeout_s: float = Field(300.0, gt=0, validation_alias="HFREDUCE_TIMEOUT")
    """Longest wait for a peer to make progress before the call fails naming that peer."""
    socket_ifname: str | None = None
    """Interfaces whose address the links to other nodes use, comma-separated, in order
    of preference (``eth0,eth1``); a leading ``^`` lists interfaces to skip instead."""
    socket_address: str | None = None
    """The exact address to listen on and advertise to other nodes; wins over
    socket_ifname."""

    @field_validator("chunk_bytes")
    @classmethod
    def _whole_cache_lines(cls, value: int | None) -> int | None:
        if value is not None and (value < 4096 or value % 64):
            raise ValueError("must be a multiple of 64 and at least 4096")
        return value

    @field_validator("socket_address")
    @classmethod
    def _an_ip_address(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise ValueError("must be an IPv4 or IPv6 address") from None
        return value

    @field_validator("socket_ifname")
    @classmethod
    def _some_interface(cls, value: str | None) -> str | None:
        if value is not None and not value.removeprefix("^").replace(",", "").strip():
            raise ValueError("must name at least one interface")
        return value


def load_config(**overrides: object) -> HfreduceConfig:
    """Defaults, then ``HFREDUCE_*`` environment variables, then explicit ``overrides``
    (those that are None are left out).

    Raises:
        ConfigError: one line per bad value, naming the variable or argument and the value.
    """
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return HfreduceConfig(**given)
    except ValidationError as err:
        raise ConfigError("\n".join(_describe(p, given) for p in err.errors())) from None


def _describe(problem: ErrorDetails, given: dict[str, object]) -> str:
    """One error as fs3, hai and deepseek settings word it, naming the variable or argument."""
    field = str(problem["loc"][0])
    aliases = {f.validation_alias: name for name, f in HfreduceConfig.model_fields.items()}
    if field in aliases:  # read from the environment under its variable's name
        source, field = field, aliases[field]
    else:
        source = "arguments" if field in given else f"HFREDUCE_{field.upper()}"
    reason = problem["ctx"]["error"] if problem["type"] == "value_error" else problem["msg"]
    return f"hfreduce config ({source}): {field}: {reason}, got {problem['input']!r}"


def for_layout(config: HfreduceConfig, num_nodes: int) -> HfreduceConfig:
    """``config`` with its chunk size and pipeline depth settled for a job spanning
    ``num_nodes``."""
    one = num_nodes == 1
    return config.model_copy(
        update={
            "chunk_bytes": config.chunk_bytes
            or (SINGLE_NODE_CHUNK_BYTES if one else MULTI_NODE_CHUNK_BYTES),
            "pipeline_depth": config.pipeline_depth
            or (SINGLE_NODE_DEPTH if one else MULTI_NODE_DEPTH),
        }
    )
