"""Rank logs travel from agents to the server, so ``hai logs`` needs no shared folder.

Each agent's ranks write their logs into the agent's own state folder. A thread of the
agent (:class:`LogShipper`) sends what each log gained since its last call with the node
caller's ``AppendLogs``: ``(run, rank, offset, bytes)``. The server (:class:`LogSink`)
appends them to the same relative path under its state folder, where ``hai logs`` reads.

Offsets make the transfer safe to repeat: bytes the server already has are skipped (a
retried call whose answer was lost), a call that would leave a hole is not written, and
every answer carries the server's size of each log, from which the agent sends next. An
agent that shares the server's state folder (``hai up`` on one host) writes the very files
the server serves: it learns so from its first call (the server's folder id in
``server.json``) and ships nothing.

The agent reports a run's exit only once its logs are shipped (:meth:`LogShipper.flushed`),
so ``hai logs`` after ``hai wait`` shows every line a rank wrote before it exited.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hai.errors import ConfigError, ForbiddenError, HaiError, HaiTimeoutError, Unavailable
from hai.files import open_private, private_dir
from hai.protocol import rank_log, run_log_dir
from hai.rpc import ApiClient
from hai.store import StateStore

log = logging.getLogger("hai.logship")

CALL_BYTES = 1 << 20
"""Log bytes one ``AppendLogs`` call may carry: gRPC's default message limit is 4 MiB,
and base64 and JSON add a third."""
CALL_ENTRIES = 1024
"""Logs one call may name: a node's ranks (8 GPUs) of a few runs need far fewer."""
FOLDER_FILE = "server.json"
"""Where the server keeps its folder id (:attr:`LogSink.folder_id`) in its state folder."""


@dataclass
class Append:
    """Bytes of rank ``rank``'s log of run ``run_id`` from ``offset`` on."""

    run_id: int
    rank: int
    offset: int
    data: bytes = b""

    def wire(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "rank": self.rank,
            "offset": self.offset,
            "data": base64.b64encode(self.data).decode(),
        }


@dataclass
class ShipReply:
    shared: bool
    """The agent writes the server's own files (one state folder): nothing was written."""
    sizes: list[int] = field(default_factory=list)
    """How much of each named log the server has taken after the call, in the call's
    order: its size, or past the server's limit also what it read and dropped."""


def _number(entry: dict[str, Any], name: str) -> int:
    value = entry.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise ConfigError(f"AppendLogs: {name} must be an integer 0 or more, got {value!r}")
    return value


def parse_appends(entries: Any) -> list[Append]:
    """The appends of an ``AppendLogs`` body, every size checked before anything is decoded.

    Raises:
        ConfigError: not a list of ``{run_id, rank, offset, data}``, more than
            :data:`CALL_ENTRIES` of them, or more than :data:`CALL_BYTES` of data in all.
    """
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError("AppendLogs: appends must be a list of {run_id, rank, offset, data}")
    if len(entries) > CALL_ENTRIES:
        raise ConfigError(f"AppendLogs: {len(entries)} logs in one call; at most {CALL_ENTRIES}")
    texts = [e.get("data", "") for e in entries]
    if not all(isinstance(t, str) for t in texts):
        raise ConfigError("AppendLogs: data must be base64 text")
    encoded = sum(map(len, texts))
    if encoded > 4 * (CALL_BYTES + 2) // 3:  # base64's length for CALL_BYTES, padded
        raise _too_big(encoded * 3 // 4)
    appends = []
    for entry, text in zip(entries, texts, strict=True):
        try:
            data = base64.b64decode(text, validate=True)
        except binascii.Error:
            raise ConfigError("AppendLogs: data is not valid base64") from None
        appends.append(
            Append(_number(entry, "run_id"), _number(entry, "rank"), _number(entry, "offset"), data)
        )
    if (size := sum(len(a.data) for a in appends)) > CALL_BYTES:
        raise _too_big(size)
    return appends


def _too_big(size: int) -> ConfigError:
    return ConfigError(
        f"AppendLogs carries {size} bytes of log; the limit is {CALL_BYTES} per call: split it"
    )


class LogSink:
    """The server's side: checks who ships what, and appends it under the state folder."""

    def __init__(self, store: StateStore, state_dir: Path, folder_id: str, limit: int) -> None:
        self.store = store
        self.state_dir = state_dir
        self.limit = limit
        """The most kept of one log (``server.rank_log_bytes``)."""
        self.folder_id = folder_id
        """Random, new at each server start, kept in the state folder's ``server.json``:
        an agent that finds the same id in its own folder shares this one."""
        self._lock = threading.Lock()  # one writer at a time per log: offsets stay true

    def append(self, node: str, folder: str, appends: list[Append]) -> ShipReply:
        """Appends what ``node`` (already authenticated) ships; see the module docstring.

        Raises:
            NotFoundError: a run is unknown.
            ForbiddenError: a run was never placed on ``node``, or the rank is another
                node's: a node ships only its own ranks' logs.
        """
        paths = [self._path(node, a) for a in appends]
        if folder and folder == self.folder_id:
            return ShipReply(True, [_size(p) for p in paths])
        sizes = []
        with self._lock:
            for path, a in zip(paths, appends, strict=True):
                sizes.append(self._append(path, a, node))
        return ShipReply(False, sizes)

    def _append(self, path: Path, a: Append, node: str) -> int:
        size = _size(path)
        if size >= self.limit:  # full: what comes is taken and dropped
            return max(size, a.offset + len(a.data))
        # Already here (a retry), or a hole if written: skip; the size tells the agent
        # where to go on from.
        new = a.data[size - a.offset :] if a.offset <= size else b""
        if not new:
            return size
        taken = size + len(new)
        if taken > self.limit:
            new = (
                new[: self.limit - size]
                + (
                    f"\n[hai: this log is cut at {self.limit} bytes; the rest is on node {node}]\n"
                ).encode()
            )
        private_dir(path.parent)
        with open_private(path) as f:
            f.write(new)
        return taken

    def _path(self, node: str, a: Append) -> Path:
        run = self.store.get_run(a.run_id)
        if node not in run.nodes:
            raise ForbiddenError(
                f"node {node} may not ship logs of run {a.run_id}: it runs on "
                f"{', '.join(run.nodes)}"
            )
        job = self.store.get_job(run.job_id)
        per_node = max(job.gpus_per_node, 1)
        first = run.nodes.index(node) * per_node
        if not first <= a.rank < first + per_node:
            raise ForbiddenError(
                f"node {node} may not ship rank {a.rank}'s log of run {a.run_id}: "
                f"its ranks are {first}-{first + per_node - 1}"
            )
        # Built from the store's ids only, never from a path the agent sent.
        return rank_log(self.state_dir, run_log_dir(run.job_id, run.attempt), a.rank)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


@dataclass
class _Log:
    run_id: int
    rank: int
    path: Path
    sent: int = 0
    """What the server has of it (its last answer)."""
    abandoned: bool = False
    """The server refused it (the run is not this node's any more): it is not sent."""


class LogShipper:
    """The agent's side: a thread that ships its ranks' logs every ``interval_s`` or when
    woken, at most :data:`CALL_BYTES` per call, so that neither a large log nor a slow
    server holds up the agent's heartbeats (``client`` is the thread's own)."""

    def __init__(self, client: ApiClient, node: str, state_dir: Path, interval_s: float) -> None:
        self.client = client
        self.node = node
        self.state_dir = state_dir
        self.interval_s = interval_s
        self.shared: bool | None = None
        """Whether the server's state folder is ours; None until its first answer."""
        self._logs: dict[tuple[int, int], _Log] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hai-logship", daemon=True)

    @property
    def started(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self.started:
            self._thread.join(timeout=self.client.timeout_s + 5)
        self.client.close()

    def watch(self, run_id: int, logs: dict[int, Path]) -> None:
        """Ships rank -> log file of a run started here from now on."""
        with self._lock:
            for rank, path in logs.items():
                self._logs[run_id, rank] = _Log(run_id, rank, path)
        self._wake.set()

    def drop(self, run_id: int) -> None:
        """Stops shipping a run's logs (it is forgotten here)."""
        with self._lock:
            for key in [k for k in self._logs if k[0] == run_id]:
                del self._logs[key]

    def flushed(self, run_id: int) -> bool:
        """Whether the server has all of the run's logs as they are now (wakes the thread
        otherwise)."""
        if self.shared:
            return True
        with self._lock:
            logs = [entry for key, entry in self._logs.items() if key[0] == run_id]
        if all(entry.abandoned or entry.sent >= _size(entry.path) for entry in logs):
            return True
        self._wake.set()
        return False

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            try:
                while not self._stop.is_set() and self._ship_once():
                    pass  # more to send: go on at once
            except (Unavailable, HaiTimeoutError) as err:
                log.warning("%s: shipping logs: %s; retrying", self.node, err)
            except Exception:
                # A bug or a bad answer must not end shipping for good: retried next round.
                log.exception("%s: shipping logs failed; retrying", self.node)

    def _ship_once(self) -> bool:
        """One call with what the logs gained; True when some log has more to send. The
        first call goes out even with nothing to send: its answer says whether to ship."""
        if self.shared:
            return False
        batch = self._batch()
        if not batch and self.shared is not None:
            return False
        try:
            self._apply(batch, self._send(batch))
        except (Unavailable, HaiTimeoutError):
            raise
        except HaiError as err:
            if len(batch) < 2:
                self._abandon(batch, err)
                return False
            for one in batch:  # which log was refused: each alone, the others go on
                try:
                    self._apply([one], self._send([one]))
                except (Unavailable, HaiTimeoutError):
                    raise
                except HaiError as refused:
                    self._abandon([one], refused)
        return bool(batch) and not self.shared

    def _send(self, batch: list[tuple[_Log, Append]]) -> ShipReply:
        reply = self.client.call(
            "AppendLogs",
            node=self.node,
            folder=_folder_id(self.state_dir),
            appends=[a.wire() for _, a in batch],
        )
        return ShipReply(bool(reply["shared"]), [int(s) for s in reply["sizes"]])

    def _apply(self, batch: list[tuple[_Log, Append]], reply: ShipReply) -> None:
        self.shared = reply.shared
        with self._lock:
            for (entry, _), size in zip(batch, reply.sizes, strict=True):
                entry.sent = size

    def _abandon(self, batch: list[tuple[_Log, Append]], err: HaiError) -> None:
        for entry, a in batch:
            entry.abandoned = True
            log.warning(
                "%s: the server refused rank %d's log of run %d: %s",
                self.node,
                a.rank,
                a.run_id,
                err,
            )

    def _batch(self) -> list[tuple[_Log, Append]]:
        """What each log gained, up to :data:`CALL_BYTES` in all."""
        with self._lock:
            logs = [e for e in self._logs.values() if not e.abandoned]
        batch, room = [], CALL_BYTES
        # Each log's share first, so that one rank's flood delays the others' lines by
        # one call at most; what the quiet ones leave goes to the later ones.
        share = max(CALL_BYTES // max(len(logs), 1), 64 << 10)
        for entry in logs:
            if room <= 0 or len(batch) == CALL_ENTRIES:
                break
            try:
                with entry.path.open("rb") as f:
                    f.seek(entry.sent)
                    data = f.read(min(share, room))
            except FileNotFoundError:
                continue  # not made yet (the executor opens it as the rank starts)
            if data:
                batch.append((entry, Append(entry.run_id, entry.rank, entry.sent, data)))
                room -= len(data)
        return batch


def _folder_id(state_dir: Path) -> str:
    """The folder id of the server whose ``server.json`` is in ``state_dir``, or ''."""
    try:
        return str(json.loads((state_dir / FOLDER_FILE).read_text()).get("folder", ""))
    except (OSError, ValueError, AttributeError):
        return ""
