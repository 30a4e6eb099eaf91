"""fs3 configuration: small grouped pydantic models with defaults, loaded by :func:`load_config`.

Order of precedence: built-in defaults, then a YAML file (``FS3_CONFIG`` or
``~/.config/fs3/config.yaml``), then environment (``FS3_<GROUP>__<FIELD>``, and
``FS3_CLUSTER`` for the address), then explicit overrides, with fs3.settings' one
coercion rule.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import SettingsConfigDict

from fs3.errors import ConfigError
from fs3.settings import Environment, Settings, layered, read_yaml

MiB = 1 << 20
# Largest chunk the on-disk header can describe (see fs3.storage.local.HEADER_SIZE).
MAX_CHUNK_SIZE = 32 * MiB

_GROUP = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Timeouts(BaseModel):
    model_config = _GROUP

    connect_s: float = Field(3.0, gt=0)
    """Opening a TCP or gRPC connection; loopback and a LAN answer in milliseconds."""
    rpc_s: float = Field(10.0, gt=0)
    """One metadata or control RPC, or one chunk transfer once connected."""
    retry_s: float = Field(30.0, gt=0)
    """Total time the client keeps retrying retryable errors (a dead chain member, a stale
    chain table) before raising ``Fs3TimeoutError``. Must exceed the mgmtd lease so that a
    failed target can be taken out of its chain within it."""


class ClientConfig(BaseModel):
    model_config = _GROUP

    address: str = ""
    """mgmtd address ``host:port`` (the "cluster address" ``hai fs3 up`` prints)."""
    token: str = ""
    """This client's fs3 token (``FS3_TOKEN``; an admin gives one with ``hai fs3 users
    add``). Empty: the admin token a local cluster of this account left for its address."""
    chunk_size: int = Field(4 * MiB, gt=0, le=MAX_CHUNK_SIZE)
    """Chunk size of new files; 4 MiB keeps one chunk one efficient TCP transfer."""
    stripe: int = 0
    """Chains a new file spreads over; 0 means all chains."""
    parallel: int = Field(8, ge=1)
    """Chunk transfers in flight per open file."""
    readahead_chunks: int = 4
    """Chunks fetched ahead once reads look sequential."""
    read_threads: int = Field(0, ge=0)
    """Threads that fetch chunks for reads; 0: one per CPU this process may run on (at
    least 2, at most ``2 * parallel``). Every byte read is copied and CRC-checked here, so
    threads beyond the cores only queue for them: on 2 cores, 16 threads read a warm file
    at 4.6-5.0 GB/s where 2 read it at 6.6-7.5, and 4 readers at 2.2 where 2 threads
    gave 8.0 (local reads; over loopback TCP 1.8 vs 2.1)."""
    local_reads: bool = True
    """Read replicas on this machine through descriptors their targets pass over a Unix
    socket (no socket copy of the bytes); anything wrong with that path falls back to TCP."""

    def read_pool_size(self) -> int:
        """``read_threads``, or for 0 the CPUs this process may run on within [2, 2 * parallel]."""
        if self.read_threads:
            return self.read_threads
        affinity = getattr(os, "sched_getaffinity", None)
        cpus = len(affinity(0)) if affinity else os.cpu_count() or 2
        return max(2, min(cpus, 2 * self.parallel))


class MgmtdConfig(BaseModel):
    model_config = _GROUP

    lease_s: float = 3.0
    """A target whose last heartbeat is older than this is taken offline."""
    heartbeat_s: float = 0.5
    """How often servers heartbeat; several heartbeats fit in one lease. mgmtd processes
    renew (or try to take) the primary lease at the same period."""
    primary_lease_s: float = 3.0
    """How long the primary mgmtd's lease lasts without renewal: a standby takes over this
    long (plus one heartbeat) after the primary died. Several renewals fit in it, so one slow
    database round trip does not cost the primary its role."""

    @model_validator(mode="after")
    def _renewals_fit(self) -> MgmtdConfig:
        if not 0 < self.heartbeat_s < self.lease_s:
            raise ValueError(
                f"mgmtd.heartbeat_s ({self.heartbeat_s}) must be > 0 and < "
                f"mgmtd.lease_s ({self.lease_s})"
            )
        if not 2 * self.heartbeat_s < self.primary_lease_s:
            raise ValueError(
                f"mgmtd.primary_lease_s ({self.primary_lease_s}) must exceed two "
                f"mgmtd.heartbeat_s ({self.heartbeat_s}) so that renewals fit in it"
            )
        return self


class MetaConfig(BaseModel):
    """The meta server's metadata store."""

    model_config = _GROUP

    db_connections: int = Field(16, ge=1, le=256)
    """PostgreSQL connections one meta server keeps (``--db postgresql://...``): operations
    in flight against the database at once; more wait for a free one. Each operation is one
    statement, so a few per core of the database server keep it busy; every meta server's
    connections count against PostgreSQL's ``max_connections`` (100 by default)."""


class StorageConfig(BaseModel):
    model_config = _GROUP

    fsync: bool = True
    """fdatasync every chunk version before acknowledging it: acknowledged means durable."""
    local_socket_mode: int = 0o660
    """Permissions of the local-read Unix socket: who on this machine may read chunks
    through it (the target's user and group by default). In YAML write 0660 (octal)."""


class HostConfig(BaseModel):
    model_config = _GROUP

    id: str = ""
    """This host's identity (``FS3_HOST_ID``): a client reads a target through the local
    path only when both name the same host. Empty: the kernel's boot id and this network
    namespace (:func:`fs3.storage.local_read.host_id`), which tells machines, reboots and
    containers with networks of their own apart; set it where that is not enough (one
    network shared by containers that see different files)."""


class LimitsConfig(BaseModel):
    """Bounds on what one message may make a server allocate, checked on the header before
    any of the body is read: a frame over them closes its connection (logged with the peer)."""

    model_config = _GROUP

    chunk_bytes: int = Field(MAX_CHUNK_SIZE, gt=0, le=MAX_CHUNK_SIZE)
    """Largest chunk a storage target handles: a data-path frame's payload, and the
    ``offset + length`` a read or write reaches within a chunk, may not exceed it. The
    default is the largest ``client.chunk_size``; lower it only below every file's chunk."""
    meta_request_bytes: int = Field(64 * MiB, gt=0)
    """Largest request a meta server accepts. Paths are at most 4 KiB; the biggest request
    is fsck's list of inode ids (about 5 bytes each), so 64 MiB, gRPC's bound in fs3.rpc,
    checks some ten million inodes at once."""


class TlsConfig(BaseModel):
    """TLS on fs3's gRPC ports (mgmtd, storage targets' chunk service, meta's health port);
    the framed meta and storage data ports stay plain TCP."""

    model_config = _GROUP

    enabled: bool = False
    """Serve and call gRPC over TLS; clients verify each server against ``ca_file``."""
    ca_file: str = ""
    """PEM certificate(s) of the CA that signed the servers' certificates."""
    cert_file: str = ""
    """A server's own PEM certificate (services only; their ``--tls-cert`` overrides it)."""
    key_file: str = ""
    """A server's private key for ``cert_file`` (PEM; keep it 0600)."""

    @model_validator(mode="after")
    def _ca_when_enabled(self) -> TlsConfig:
        if self.enabled and not self.ca_file:
            raise ValueError("tls.enabled needs tls.ca_file, the CA clients verify servers with")
        return self


class SecurityConfig(BaseModel):
    """How services authenticate each other and clients' chunk requests
    (:mod:`fs3.capabilities`)."""

    model_config = _GROUP

    capabilities: bool = True
    """Storage targets serve chunk requests only with a capability from meta, and mgmtd
    takes heartbeats and registrations only from services holding the cluster secret. Off
    (``false``) only to measure what the checks cost (``python -m fs3.bench``): then anyone
    who reaches a port reads, writes and deletes chunks."""
    secret_file: str = ""
    """The cluster secret (32 bytes, 0600) every mgmtd, meta and storage process reads;
    ``hai fs3 up`` writes ``secret`` in the cluster folder. Clients never get it."""
    capability_s: float = Field(600.0, gt=0)
    """How long a capability meta issues stays valid; clients renew it (by reopening)
    before it runs out, so this bounds how long a revoked permission still reaches data."""
    clock_skew_s: float = Field(30.0, ge=0)
    """How far the clocks of meta, mgmtd and targets may differ: an expiry or a signed
    call's time is accepted this much past (NTP keeps machines within milliseconds)."""


class Fs3Config(Settings):
    """The whole fs3 configuration; build it with :func:`load_config`."""

    model_config = SettingsConfigDict(
        env_prefix="FS3_", env_nested_delimiter="__", extra="forbid", use_attribute_docstrings=True
    )

    client: ClientConfig = Field(default_factory=ClientConfig)
    mgmtd: MgmtdConfig = Field(default_factory=MgmtdConfig)
    meta: MetaConfig = Field(default_factory=MetaConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    host: HostConfig = Field(default_factory=HostConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    tls: TlsConfig = Field(default_factory=TlsConfig)


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Fs3Config:
    """Builds the configuration from defaults, a YAML file, the environment and overrides.

    Args:
        path: YAML file; defaults to ``$FS3_CONFIG`` or ``~/.config/fs3/config.yaml`` if present.
        env: environment to read (``os.environ`` by default): ``FS3_<GROUP>__<FIELD>``, and
            ``FS3_CLUSTER`` for ``client.address``, ``FS3_TOKEN`` for ``client.token``,
            ``FS3_HOST_ID`` for ``host.id``.
        overrides: nested mapping such as ``{"client": {"address": "127.0.0.1:7000"}}``.

    Raises:
        ConfigError: an unreadable file, an unknown key or an invalid value; one line per
            problem naming the field and its source.
    """
    environ = os.environ if env is None else env
    file = Path(path or environ.get("FS3_CONFIG") or Path.home() / ".config/fs3/config.yaml")
    from_file = read_yaml(file, "fs3 config", ConfigError) if path or file.exists() else {}
    layers = [
        (f"file {file}", from_file),
        (
            "environment FS3_<GROUP>__<FIELD>",
            Environment(
                Fs3Config,
                environ,
                {
                    "FS3_CLUSTER": "FS3_CLIENT__ADDRESS",
                    "FS3_TOKEN": "FS3_CLIENT__TOKEN",
                    "FS3_HOST_ID": "FS3_HOST__ID",
                },
            )(),
        ),
        ("overrides", overrides or {}),
    ]
    return layered(Fs3Config, layers, "fs3 config", ConfigError)
