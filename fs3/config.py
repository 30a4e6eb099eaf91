"""fs3 configuration: small grouped dataclasses with defaults, loaded by :func:`load_config`.

Order of precedence: built-in defaults, then a YAML file (``FS3_CONFIG`` or
``~/.config/fs3/config.yaml``), then environment (``FS3_CLUSTER``), then explicit overrides.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fs3.errors import ConfigError

MiB = 1 << 20
# Largest chunk the on-disk header can describe (see fs3.storage.local.HEADER_SIZE).
MAX_CHUNK_SIZE = 32 * MiB


@dataclass
class Timeouts:
    connect_s: float = 3.0
    """Opening a TCP or gRPC connection; loopback and a LAN answer in milliseconds."""
    rpc_s: float = 10.0
    """One metadata or control RPC, or one chunk transfer once connected."""
    retry_s: float = 30.0
    """Total time the client keeps retrying retryable errors (a dead chain member, a stale
    chain table) before raising ``Fs3TimeoutError``. Must exceed the mgmtd lease so that a
    failed target can be taken out of its chain within it."""

    def __post_init__(self) -> None:
        for name in ("connect_s", "rpc_s", "retry_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"timeouts.{name} must be > 0, got {getattr(self, name)}")


@dataclass
class ClientConfig:
    address: str = ""
    """mgmtd address ``host:port`` (the "cluster address" ``hai fs3 up`` prints)."""
    chunk_size: int = 4 * MiB
    """Chunk size of new files; 4 MiB keeps one chunk one efficient TCP transfer."""
    stripe: int = 0
    """Chains a new file spreads over; 0 means all chains."""
    parallel: int = 8
    """Chunk transfers in flight per open file."""
    readahead_chunks: int = 4
    """Chunks fetched ahead once reads look sequential."""
    read_threads: int = 0
    """Threads that fetch chunks for reads; 0: one per CPU this process may run on (at
    least 2, at most ``2 * parallel``). Every byte read is copied and CRC-checked here, so
    threads beyond the cores only queue for them: on 2 cores, 16 threads read a warm file
    at 4.6-5.0 GB/s where 2 read it at 6.6-7.5, and 4 readers at 2.2 where 2 threads
    gave 8.0 (local reads; over loopback TCP 1.8 vs 2.1)."""
    local_reads: bool = True
    """Read replicas on this machine through descriptors their targets pass over a Unix
    socket (no socket copy of the bytes); anything wrong with that path falls back to TCP."""

    def __post_init__(self) -> None:
        if not 0 < self.chunk_size <= MAX_CHUNK_SIZE:
            raise ConfigError(
                f"client.chunk_size must be in (0, {MAX_CHUNK_SIZE}], got {self.chunk_size}"
            )
        if self.parallel < 1:
            raise ConfigError(f"client.parallel must be >= 1, got {self.parallel}")
        if self.read_threads < 0:
            raise ConfigError(f"client.read_threads must be >= 0, got {self.read_threads}")

    def read_pool_size(self) -> int:
        """``read_threads``, or for 0 the CPUs this process may run on within [2, 2 * parallel]."""
        if self.read_threads:
            return self.read_threads
        affinity = getattr(os, "sched_getaffinity", None)
        cpus = len(affinity(0)) if affinity else os.cpu_count() or 2
        return max(2, min(cpus, 2 * self.parallel))


@dataclass
class MgmtdConfig:
    lease_s: float = 3.0
    """A target whose last heartbeat is older than this is taken offline."""
    heartbeat_s: float = 0.5
    """How often servers heartbeat; several heartbeats fit in one lease. mgmtd processes
    renew (or try to take) the primary lease at the same period."""
    primary_lease_s: float = 3.0
    """How long the primary mgmtd's lease lasts without renewal: a standby takes over this
    long (plus one heartbeat) after the primary died. Several renewals fit in it, so one slow
    database round trip does not cost the primary its role."""

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_s < self.lease_s:
            raise ConfigError(
                f"mgmtd.heartbeat_s ({self.heartbeat_s}) must be > 0 and < "
                f"mgmtd.lease_s ({self.lease_s})"
            )
        if not 2 * self.heartbeat_s < self.primary_lease_s:
            raise ConfigError(
                f"mgmtd.primary_lease_s ({self.primary_lease_s}) must exceed two "
                f"mgmtd.heartbeat_s ({self.heartbeat_s}) so that renewals fit in it"
            )


@dataclass
class StorageConfig:
    fsync: bool = True
    """fdatasync every chunk version before acknowledging it: acknowledged means durable."""
    local_socket_mode: int = 0o660
    """Permissions of the local-read Unix socket: who on this machine may read chunks
    through it (the target's user and group by default). In YAML write 0660 (octal)."""


@dataclass
class Fs3Config:
    client: ClientConfig = field(default_factory=ClientConfig)
    mgmtd: MgmtdConfig = field(default_factory=MgmtdConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    timeouts: Timeouts = field(default_factory=Timeouts)


def _same_kind(default: Any, value: Any) -> bool:
    """Whether ``value`` may replace a field whose default is ``default`` (an int stands in
    for a float; a bool is not a number here)."""
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (int, str)):
        return isinstance(value, type(default))
    return True


def _apply(obj: Any, values: Mapping[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(obj)}
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown setting {where}{key}; known: {sorted(known)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}{key} must be a mapping, got {value!r}")
            value = _apply(current, value, f"{where}{key}.")
        elif not _same_kind(current, value):
            raise ConfigError(
                f"{where}{key} must be {type(current).__name__} (like {current!r}), got {value!r}"
            )
        changes[key] = value
    return dataclasses.replace(obj, **changes)


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Fs3Config:
    """Builds the configuration from defaults, a YAML file, the environment and overrides.

    Args:
        path: YAML file; defaults to ``$FS3_CONFIG`` or ``~/.config/fs3/config.yaml`` if present.
        env: environment to read (``os.environ`` by default); ``FS3_CLUSTER`` sets the address.
        overrides: nested mapping such as ``{"client": {"address": "127.0.0.1:7000"}}``.

    Raises:
        ConfigError: unknown key or invalid value, named in the message.
    """
    env = os.environ if env is None else env
    config = Fs3Config()
    file = Path(path or env.get("FS3_CONFIG") or Path.home() / ".config" / "fs3" / "config.yaml")
    if path is not None or file.exists():
        import yaml

        try:
            data = yaml.safe_load(file.read_text()) or {}
        except OSError as err:
            raise ConfigError(f"cannot read fs3 config file {file}: {err}") from err
        config = _apply(config, data, "")
    if env.get("FS3_CLUSTER"):
        config = _apply(config, {"client": {"address": env["FS3_CLUSTER"]}}, "")
    if overrides:
        config = _apply(config, overrides, "")
    return config
