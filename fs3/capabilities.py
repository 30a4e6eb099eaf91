"""Capabilities: meta's signed permission for one client to touch one file's chunks.

A storage target cannot check POSIX modes (it knows chunks, not paths or users), so meta,
which does, hands the client a capability with each Open, Create and Truncate reply: the
inode, the operations (read, write), a chunk range, an expiry and a nonce, signed with an
HMAC-SHA256 key that meta and the targets derive from the cluster secret. The client
sends it with every chunk request (:mod:`fs3.wire.framing`); the target checks it before it
touches anything, with no round trip to meta. Services among themselves (chain
forwarding, resync, meta's chunk collector, fsck) sign *service* capabilities with another
key, which no client holds, and only those open the chain-internal ops (REPLICATE, SYNC,
DUMP, VERIFY, REPAIR) and deletes of other inodes.

Keys are derived per purpose from the 32-byte cluster secret (``security.secret_file``),
HKDF-expand style (one HMAC per purpose), so a key that leaks from one use, say the
capability key, signs nothing of another (service capabilities, mgmtd calls).

This module is pure: no I/O besides reading and creating the secret file.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fs3.config import SecurityConfig
from fs3.errors import CapabilityRefused, ConfigError

READ = 1
WRITE = 2
ALL_OPS = READ | WRITE
WHOLE_FILE = 0xFFFFFFFF
"""``end`` of a capability that covers every chunk of its inode."""

SECRET_BYTES = 32
_CLIENT, _SERVICE = 1, 2  # the kind byte: a client's capability, or a service's
# kind, ops, first chunk, end chunk (exclusive), inode, expiry (ms since the epoch), nonce
_BODY = struct.Struct("!BBxxIIQQ8s")
_MAC_BYTES = 32  # HMAC-SHA256, untruncated: 32 bytes per request cost nothing next to a chunk
SIZE = _BODY.size + _MAC_BYTES
"""Bytes of every capability on the wire (68): fixed, so a frame's reader bounds it."""


@dataclass(frozen=True)
class Keys:
    """The keys one service derives from the cluster secret, one per purpose."""

    capability: bytes
    """Signs and checks client capabilities (meta signs, targets check)."""
    service: bytes
    """Signs and checks service capabilities on the data path (every service)."""
    mgmtd: bytes
    """Signs and checks the service calls to mgmtd (heartbeats, registrations)."""

    @classmethod
    def from_secret(cls, secret: bytes) -> Keys:
        def derive(purpose: bytes) -> bytes:
            return hmac.digest(secret, b"fs3 key/" + purpose, hashlib.sha256)

        return cls(derive(b"capability"), derive(b"service"), derive(b"mgmtd"))


def create_secret(path: Path) -> None:
    """Writes a new random cluster secret to ``path`` (0600) unless one is there."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(SECRET_BYTES))


def read_secret(path: str | os.PathLike[str]) -> bytes:
    """The cluster secret in ``path``.

    Raises:
        ConfigError: unreadable, not :data:`SECRET_BYTES` long, or open to group/others
            (a secret others can read authenticates them as services).
    """
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            secret = f.read(SECRET_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"security.secret_file {path}: {err.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise ConfigError(
            f"security.secret_file {path} is mode {stat.S_IMODE(mode):o}: "
            "other accounts may read it; chmod 600 it"
        )
    if len(secret) != SECRET_BYTES:
        raise ConfigError(
            f"security.secret_file {path} holds {len(secret)} bytes, not {SECRET_BYTES}"
        )
    return secret


@dataclass(frozen=True)
class Capability:
    """A capability's fields (see the module docstring); ``service`` ones cover everything."""

    inode: int
    ops: int
    first: int
    end: int
    expires: float
    service: bool = False

    @property
    def expires_ms(self) -> int:
        return int(self.expires * 1000)


def _sign(
    key: bytes, kind: int, ops: int, first: int, end: int, inode: int, expires: float
) -> bytes:
    body = _BODY.pack(kind, ops, first, end, inode, int(expires * 1000), secrets.token_bytes(8))
    return body + hmac.digest(key, body, hashlib.sha256)


def issue(
    key: bytes,
    inode: int,
    ops: int,
    lifetime_s: float,
    first: int = 0,
    end: int = WHOLE_FILE,
    now: float | None = None,
) -> bytes:
    """A client capability for chunks ``[first, end)`` of ``inode``, ``ops`` a mask of
    :data:`READ` and :data:`WRITE`, valid for ``lifetime_s`` from ``now``."""
    expires = (time.time() if now is None else now) + lifetime_s
    return _sign(key, _CLIENT, ops, first, end, inode, expires)


def issue_service(key: bytes, lifetime_s: float, now: float | None = None) -> bytes:
    """A service capability: every op on every chunk, valid for ``lifetime_s``."""
    expires = (time.time() if now is None else now) + lifetime_s
    return _sign(key, _SERVICE, ALL_OPS, 0, WHOLE_FILE, 0, expires)


def parse(raw: bytes | memoryview) -> Capability:
    """The fields of ``raw``, unchecked: what a client reads to know when to renew.

    Raises CapabilityRefused when ``raw`` is not :data:`SIZE` bytes."""
    if len(raw) != SIZE:
        raise CapabilityRefused(f"a capability is {SIZE} bytes, not {len(raw)}")
    kind, ops, first, end, inode, expires_ms, _ = _BODY.unpack_from(raw)
    return Capability(inode, ops, first, end, expires_ms / 1000, kind == _SERVICE)


class Verifier:
    """Checks capabilities on a storage target: a forged, altered, expired or foreign one
    raises :class:`CapabilityRefused` (one error code, so a client learns nothing more)."""

    def __init__(
        self, keys: Keys, clock_skew_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._keys = keys
        self._skew = clock_skew_s
        self._clock = clock

    def check(
        self,
        raw: bytes | memoryview,
        inode: int,
        op: int,
        first: int,
        end: int,
        service_only: bool = False,
    ) -> Capability:
        """Whether ``raw`` allows ``op`` on chunks ``[first, end)`` of ``inode``; a service
        capability allows anything, and only it passes when ``service_only``.

        Raises:
            CapabilityRefused: naming what is wrong (missing, bad signature, expired, ...).
        """
        return allows(self.authentic(raw), inode, op, first, end, service_only)

    def authentic(self, raw: bytes | memoryview) -> Capability:
        """The fields of ``raw`` once its signature and expiry hold: what every use of it
        shares (:func:`allows` then checks the use itself).

        Raises:
            CapabilityRefused: missing, malformed, bad signature or expired.
        """
        if not raw:
            raise CapabilityRefused("no capability: open the file through meta first")
        cap = parse(raw)
        key = self._keys.service if cap.service else self._keys.capability
        mac = hmac.digest(key, bytes(raw[: _BODY.size]), hashlib.sha256)
        if not hmac.compare_digest(mac, bytes(raw[_BODY.size :])):
            raise CapabilityRefused("capability signature does not match")
        if cap.expires + self._skew < self._clock():
            raise CapabilityRefused("capability expired: reopen the file")
        return cap

    def batch(self) -> BatchChecks:
        """Checks for the uses of one batch of requests (:class:`BatchChecks`)."""
        return BatchChecks(self)


def allows(
    cap: Capability, inode: int, op: int, first: int, end: int, service_only: bool = False
) -> Capability:
    """``cap`` (authentic: :meth:`Verifier.authentic`) when it allows ``op`` on chunks
    ``[first, end)`` of ``inode``; a service capability allows anything, and only it
    passes when ``service_only``.

    Raises:
        CapabilityRefused: naming what it does not allow.
    """
    if cap.service:
        return cap
    if service_only:
        raise CapabilityRefused(
            "this operation is for fs3 services only (hai fs3 fsck needs "
            "security.secret_file: the cluster folder's config.yaml names it)"
        )
    if cap.inode != inode:
        raise CapabilityRefused(f"capability is for inode {cap.inode}, not {inode}")
    if not cap.ops & op:
        raise CapabilityRefused(f"capability does not allow {_OP_NAMES[op]}")
    if first < cap.first or end > cap.end:
        raise CapabilityRefused(
            f"chunks {first}..{end} are outside the capability's {cap.first}..{cap.end}"
        )
    return cap


class BatchChecks:
    """The capability checks of one batch (a READ_BATCH's pieces): each distinct
    capability's signature and expiry are checked once, at its first use, and every use
    then checks what differs (inode, op, chunk range). Same outcome per use as
    :meth:`Verifier.check`, one HMAC per capability instead of one per piece; live only
    for the batch (milliseconds), so an expiry passes no later than a request's would."""

    def __init__(self, verifier: Verifier) -> None:
        self._verifier = verifier
        self._seen: dict[bytes, Capability | CapabilityRefused] = {}

    def check(self, raw: bytes, inode: int, op: int, first: int, end: int) -> Capability:
        """As :meth:`Verifier.check` (never ``service_only``).

        Raises:
            CapabilityRefused: naming what is wrong with ``raw`` or this use of it.
        """
        known = self._seen.get(raw)
        if known is None:
            try:
                known = self._verifier.authentic(raw)
            except CapabilityRefused as err:
                known = err
            self._seen[raw] = known
        if isinstance(known, CapabilityRefused):
            raise CapabilityRefused(known.strerror)
        return allows(known, inode, op, first, end)


_OP_NAMES = {READ: "reading", WRITE: "writing"}


class ServiceSigner:
    """A service's own capability, re-signed when half its life is gone (not per request:
    a chain hop should not pay an HMAC it need not)."""

    def __init__(
        self, key: bytes, lifetime_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._key = key
        self._lifetime = lifetime_s
        self._clock = clock
        self._token = b""
        self._renew_at = 0.0

    def token(self) -> bytes:
        now = self._clock()
        if now >= self._renew_at:
            self._token = issue_service(self._key, self._lifetime, now)
            self._renew_at = now + self._lifetime / 2
        return self._token


def service_keys(security: SecurityConfig) -> Keys | None:
    """The keys a service runs with; None when ``security.capabilities`` is off.

    Raises ConfigError: capabilities on but no readable, private secret configured."""
    if not security.capabilities:
        return None
    if not security.secret_file:
        raise ConfigError(
            "security.capabilities is on but security.secret_file is not set: give the "
            "cluster secret (hai fs3 up writes one) or set security.capabilities: false"
        )
    return Keys.from_secret(read_secret(security.secret_file))


# -- signed service calls to mgmtd ---------------------------------------------------------
CALL_METADATA = "fs3-service-call"
"""gRPC metadata key of a signed call: ``<ms since the epoch>.<hex HMAC>``."""


CALL_TRANSIT_S = 10.0
"""How long a signed call may take to arrive, beyond the clock skew: the default
``timeouts.rpc_s``, after which its caller gave up on it anyway."""


def _call_mac(key: bytes, method: str, body: bytes, stamp: str) -> str:
    digest = hashlib.sha256(body).digest()
    return hmac.digest(key, f"{method}\n{stamp}\n".encode() + digest, hashlib.sha256).hex()


def sign_call(key: bytes, method: str, body: bytes, now: float | None = None) -> str:
    """The metadata value that signs one call of ``method`` with request bytes ``body``.

    A signature binds the method, the request and the time: a forged heartbeat needs the
    key, and a captured one replays only within the clock-skew window and only as itself
    (the same target at the same address), which mgmtd had just been told anyway."""
    stamp = str(int((time.time() if now is None else now) * 1000))
    return f"{stamp}.{_call_mac(key, method, body, stamp)}"


def check_call(
    key: bytes, method: str, body: bytes, value: str | None, skew_s: float, now: float | None = None
) -> None:
    """Refuses a call whose signature ``value`` is missing or wrong, or whose time is more
    than ``skew_s`` ahead or ``skew_s`` + :data:`CALL_TRANSIT_S` behind.

    Raises CapabilityRefused naming the method."""
    stamp, _, mac = (value or "").partition(".")
    expected = _call_mac(key, method, body, stamp).encode()
    if not stamp.isdigit() or not hmac.compare_digest(mac.encode(), expected):
        raise CapabilityRefused(f"mgmtd {method}: not signed with the cluster secret")
    age = (time.time() if now is None else now) - int(stamp) / 1000
    if not -skew_s <= age <= skew_s + CALL_TRANSIT_S:
        raise CapabilityRefused(
            f"mgmtd {method}: signed {int(stamp) / 1000:.0f}, outside security.clock_skew_s"
        )


class Issuer:
    """Meta's side: signs a capability for each file it opens to a client."""

    def __init__(self, keys: Keys, lifetime_s: float) -> None:
        self._key = keys.capability
        self._lifetime = lifetime_s

    def grant(self, inode: int, ops: int) -> bytes:
        """A capability for ``ops`` on every chunk of ``inode``."""
        return issue(self._key, inode, ops, self._lifetime)
