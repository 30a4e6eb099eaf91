"""Zero-copy local reads, target side: committed chunk files handed to clients on this machine.

A client on the target's machine need not have chunk bytes copied through TCP (the target
preads them, sends them, the client receives them: three copies, and the target's CPU
besides the client's). So a target also listens on a Unix socket. For each read it applies
the rules of a TCP READ (it must serve the chain; a write pending here means busy unless it
is the tail), opens the committed chunk file with its own permissions and passes the
descriptor (SCM_RIGHTS). The client preads the bytes straight into its own buffer and checks
the block CRC32Cs itself (:mod:`fs3.client.local_read`), as it checks TCP reads.

Why a passed descriptor is safe to read later: committed chunk files are immutable
(:mod:`fs3.storage.local`); a new version is a new file renamed over the old one, removal
only unlinks. The descriptor keeps reading the version that was committed when the target
opened it, whatever is written meanwhile, so a client never sees two versions mixed. The read
is linearised at the target's check, as a TCP READ is; the client opens a descriptor per
read and closes it after, so no descriptor outlives the read it was checked for.

Protocol, in the frames of :mod:`fs3.wire.framing` (REQUEST header, RESPONSE header):

- TCP ``LOCAL_INFO``: the payload is JSON ``{"socket", "machine", "token", "target"}``, or
  empty when this target serves no local reads. A client uses the socket only when
  ``machine`` equals its own :func:`host_id`.
- Unix ``LOCAL_HELLO``: the payload is the token, so a client whose path led to some other
  socket (another container's target at the same path, a restarted target) notices.
- Unix ``LOCAL_OPEN`` (chain, table version, inode, index): the reply's ``version`` is the
  committed version and ``crc`` is 1 when a descriptor rides along, 0 for an absent chunk (a
  hole); refusals are the wire's error frames, the same errors a READ gets.
- Unix ``LOCAL_BAD`` (chain, inode, index, offset; payload the client's message): a block
  failed its CRC32C on a client, logged here as a TCP read's mismatch is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import secrets
import socket
import socketserver
import struct
import tempfile
import threading
from pathlib import Path

from fs3.errors import ChecksumMismatch, Fs3Error
from fs3.storage.engine import ChunkEngine
from fs3.storage.target import StorageTarget
from fs3.types import ChunkId
from fs3.wire.framing import (
    LOCAL_MESSAGE_MAX,
    REQUEST,
    RESPONSE,
    Request,
    error_frame,
    recv_exact,
    recv_request,
    send_frame,
)
from fs3.wire.ops import LOCAL_BAD, LOCAL_HELLO, LOCAL_OPEN, READ

log = logging.getLogger("fs3.storage")

SOCKET_NAME = "local.sock"
"""The local-read socket, in the target's folder. Who may connect is
``storage.local_socket_mode`` (the target's user and group, as for the chunk files
themselves); a client refused there reads over TCP."""
_MAX_UNIX_PATH = 107  # Linux's sun_path is 108 bytes, the last one the terminating NUL
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid of the connecting process


def host_id(explicit: str = "") -> str | None:
    """This host as local reads compare it: ``explicit`` (``host.id``, ``FS3_HOST_ID``) when
    given, else the kernel boot id and the inode of this process's network namespace.

    The boot id tells machines (and reboots) apart; the network namespace tells apart
    containers and test hosts on one kernel, each with its own addresses (a client there
    reaches the target over the network like any other host's, however its files look).
    Never the address: a target announced at a LAN address may be this host's, and one at
    127.0.0.1 may be a forwarded port of another. None where the kernel has no boot id
    (not Linux) and nothing was given: no local reads there.
    """
    if explicit:
        return explicit
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        net = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return None
    return f"{boot}/net:{net}"


def socket_path(root: Path) -> Path:
    """Where the target whose chunks live under ``root`` listens: ``root/local.sock``, or a
    name derived from ``root`` in the temporary folder when that path is too long for a
    Unix socket."""
    root = Path(root).resolve()
    path = root / SOCKET_NAME
    if len(os.fsencode(path)) <= _MAX_UNIX_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(root)).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"fs3-{digest}.sock"


class LocalReadServer(socketserver.ThreadingUnixStreamServer):
    """Answers local-read requests for one target, one thread per client connection.

    Run ``serve_forever`` in a thread of its own; ``server_close`` removes the socket file.
    """

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, path: Path, target: StorageTarget, mode: int, host: str) -> None:
        self.path = Path(path)
        self.target = target
        self.host = host
        self.token = secrets.token_hex(16)
        # A socket file left by a killed target refuses bind; ours is the one to serve now.
        self.path.unlink(missing_ok=True)
        super().__init__(str(self.path), _LocalHandler)
        os.chmod(self.path, mode)

    def info(self) -> bytes:
        """The LOCAL_INFO payload for this target."""
        info = {
            "socket": str(self.path),
            "machine": self.host,
            "token": self.token,
            "target": self.target.target_id,
        }
        return json.dumps(info).encode()

    def answer(self, req: Request, payload: memoryview) -> tuple[bytes, bytes, int | None]:
        """One request's reply: (response header, payload, descriptor to pass or None)."""
        if req.op == LOCAL_OPEN:
            self.target.authorize(req)  # a READ's capability, as on TCP
            # The READ rules, applied by the very code a TCP READ runs: a zero-length read
            # checks serving state and pending writes and touches no chunk file (the
            # client checks the header and the blocks it reads).
            version, _, _ = self.target.read(dataclasses.replace(req, op=READ, offset=0, length=0))
            cid = ChunkId(req.chain, req.inode, req.index)
            fd = self.target.engine.open_committed(cid)
            if fd is None and self.target.engine.stat(cid)[0] is not None:
                # Committed but its file is gone (deleted by hand, a disk error): a bad
                # replica, not a hole; the client reads another one.
                raise ChecksumMismatch(
                    f"target {self.target.target_id}: chunk {tuple(cid)} file is missing"
                )
            return RESPONSE.pack(0, 0, int(fd is not None), version), b"", fd
        if req.op == LOCAL_HELLO:
            token = self.token.encode()
            return RESPONSE.pack(0, len(token), 0, 0), token, None
        if req.op == LOCAL_BAD:
            log.error(
                "target %d: chunk %s at offset %d fails CRC32C on a local client: %s",
                self.target.target_id,
                (req.chain, req.inode, req.index),
                req.offset,
                bytes(payload).decode(errors="replace"),
            )
            return RESPONSE.pack(0, 0, 0, 0), b"", None
        raise Fs3Error(f"unknown local-read op {req.op}")

    def server_close(self) -> None:
        super().server_close()
        self.path.unlink(missing_ok=True)


class _LocalHandler(socketserver.BaseRequestHandler):
    server: LocalReadServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        header = bytearray(REQUEST.size)
        while True:
            try:
                req = recv_request(sock, header)
                size = req.length if req.op == LOCAL_BAD else 0
                if size > LOCAL_MESSAGE_MAX:  # checked before allocating: the length is the peer's
                    pid, uid, _ = _PEERCRED.unpack(
                        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
                    )
                    log.warning(
                        "target %d: closing local-read connection of pid %d (uid %d): "
                        "a message of %d bytes, over %d",
                        self.server.target.target_id,
                        pid,
                        uid,
                        size,
                        LOCAL_MESSAGE_MAX,
                    )
                    return
                payload = memoryview(bytearray(size))
                recv_exact(sock, payload)
            except OSError:  # the client went away (ConnectionError is an OSError too)
                return
            fd = None
            try:
                head, body, fd = self.server.answer(req, payload)
            except Fs3Error as err:
                head, body = error_frame(err)
            except Exception as err:
                log.exception("local-read op %d failed", req.op)
                head, body = error_frame(Fs3Error(f"internal error: {type(err).__name__}: {err}"))
            try:
                if fd is None:
                    send_frame(sock, head, body)
                else:
                    socket.send_fds(sock, [head], [fd])
            except OSError:
                return
            finally:
                if fd is not None:
                    os.close(fd)


def start_local_reads(
    root: Path, target: StorageTarget, mode: int = 0o660, host: str = ""
) -> LocalReadServer | None:
    """Starts serving local reads for ``target`` (chunks under ``root``) in a thread, for
    clients whose :func:`host_id` is this one's (``host``: ``host.id`` of the config).

    Returns None, after a warning, where that cannot work (an engine that keeps chunks in no
    file, no host id, a socket path that cannot be bound): clients then read over TCP.
    """
    me = host_id(host)
    if type(target.engine).open_committed is ChunkEngine.open_committed or me is None:
        return None
    path = socket_path(root)
    try:
        server = LocalReadServer(path, target, mode, me)
    except OSError as err:
        log.warning(
            "target %d: no local reads, cannot listen on %s: %s", target.target_id, path, err
        )
        return None
    threading.Thread(target=server.serve_forever, daemon=True, name="local-reads").start()
    log.info("target %d: local reads on %s for host %s", target.target_id, path, me)
    return server
