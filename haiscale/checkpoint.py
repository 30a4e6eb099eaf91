"""Asynchronous checkpoints: a short host copy in the training thread, the write in the background.

Training stalls only while the state is copied into one flat host buffer (pinned when CUDA
is present, reused between saves); a background thread then writes it to any fsspec URL
(local paths, ``memory://``, ``fs3://``) in large pieces. Layout under the URL::

    step-000000001200/              published: complete, only ever renamed into place
        rank-00000.safetensors      one file per writing rank; its header is the tensor index
        rank-00000.json             structure and non-tensor values; written last (= "done")
    step-000000001400.tmp/          being written, or left by a crash: never loaded

Each writing rank marks its shard done with its JSON file; rank 0 waits for every rank's
mark (a barrier through storage, so the background thread issues no collectives that could
interleave with training's), renames ``.tmp/`` to its final name and drops all but the
newest ``keep`` checkpoints.

Usage::

    ckpt, start = AsyncCheckpointer("fs3://mgmtd:8000/run1/ckpt", keep=3), 0
    if (found := ckpt.load_latest()) is not None:
        start, state = found
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optim"])
    for step in range(start + 1, steps):
        ...
        if step % 500 == 0:  # returns once the state is on the host
            ckpt.save(step, {"model": model.state_dict(), "optim": opt.state_dict(), "step": step})
    ckpt.close()  # raises if the last write failed
"""

from __future__ import annotations

import json
import re
import struct
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import fsspec
import torch
import torch.distributed as dist

__all__ = ["AsyncCheckpointer", "CheckpointError", "CheckpointStore", "load", "load_latest"]

_PUBLISHED = re.compile(r"^step-(\d+)$")
_STALE = re.compile(r"^step-(\d+)\.tmp$")
# Writes of 64 MiB keep per-call overhead negligible and give fs3 many whole chunks
# (4 MiB by default) to ship in parallel.
_WRITE_BYTES = 64 << 20
_POLL_S = 0.05

# The safetensors dtype names (https://github.com/huggingface/safetensors, format spec).
_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}  # fmt: skip
_DTYPES = {name: dtype for dtype, name in _DTYPE_NAMES.items()}
_SCALARS = (str, int, float, bool, type(None))


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; the message names the step and the URL."""


# -- structure: tensors out, everything else into JSON ----------------------------------------
def _flatten(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Splits ``state`` into a JSON tree (tensors replaced by their names) and the tensors.

    Dicts become key/value pairs so int keys (optimiser state) survive JSON; tuples are
    tagged so they come back as tuples (``random.getstate()``).
    """
    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any, path: tuple[str, ...]) -> Any:
        where = "/".join(path) or "<root>"
        if isinstance(value, torch.Tensor):
            if where in tensors:
                raise ValueError(f"two checkpoint tensors are named {where!r}; rename a key")
            tensors[where] = value
            return {"__tensor__": where}
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, _SCALARS):
                    raise TypeError(
                        f"checkpoint key {key!r} under {where!r} is a {type(key).__name__}; "
                        "use str, int, float, bool or None"
                    )
            return {"__dict__": [[k, encode(v, (*path, str(k)))] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            items = [encode(v, (*path, str(i))) for i, v in enumerate(value)]
            return {"__tuple__": items} if isinstance(value, tuple) else items
        if isinstance(value, _SCALARS):
            return value
        raise TypeError(
            f"checkpoint value at {where!r} is a {type(value).__name__}; use tensors, "
            "dicts, lists, tuples, str, int, float, bool or None"
        )

    return encode(state, ()), tensors


def _unflatten(tree: Any, tensor: Callable[[str], torch.Tensor]) -> Any:
    if isinstance(tree, list):
        return [_unflatten(v, tensor) for v in tree]
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensor(tree["__tensor__"])
        if "__tuple__" in tree:
            return tuple(_unflatten(v, tensor) for v in tree["__tuple__"])
        return {k: _unflatten(v, tensor) for k, v in tree["__dict__"]}
    return tree


# -- the shard file: safetensors ----------------------------------------------------------------
def _index(tensors: dict[str, torch.Tensor]) -> tuple[bytes, dict[str, dict], int]:
    """The safetensors header for ``tensors``, its index and the payload size.

    Larger elements first, as safetensors orders them: with the header padded to 8 bytes
    every tensor then starts aligned to its element size, so it can be viewed in place.
    """
    index: dict[str, dict] = {}
    offset = 0
    for name in sorted(tensors, key=lambda n: (-tensors[n].element_size(), n)):
        t = tensors[name]
        if t.dtype not in _DTYPE_NAMES:
            raise TypeError(
                f"checkpoint tensor {name!r} has dtype {t.dtype}; "
                f"supported: {', '.join(map(str, _DTYPE_NAMES))}"
            )
        size = t.numel() * t.element_size()
        index[name] = {
            "dtype": _DTYPE_NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    header = json.dumps(index, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header, index, offset


def _parse_header(read: Callable[[int, int], bytes]) -> tuple[int, dict[str, dict]]:
    """Where a safetensors file's data starts, and its index; ``read(lo, hi)`` reads bytes."""
    (length,) = struct.unpack("<Q", read(0, 8))
    return 8 + length, json.loads(read(8, 8 + length))


def _bytes(blob: bytearray, offset: int = 0) -> torch.Tensor:
    """``blob[offset:]`` as a uint8 tensor without a copy (frombuffer refuses empty ranges)."""
    if offset >= len(blob):
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(blob, dtype=torch.uint8, offset=offset)


def _view(data: torch.Tensor, entry: dict) -> torch.Tensor:
    """The tensor an index entry describes, viewed inside the uint8 tensor ``data``."""
    start, end = entry["data_offsets"]
    return data[start:end].view(_DTYPES[entry["dtype"]]).view(entry["shape"])


class _HostBuffer:
    """One flat host buffer that every save copies into; grown when the state grows."""

    def __init__(self) -> None:
        self.data = torch.empty(0, dtype=torch.uint8)

    def stage(
        self, tensors: dict[str, torch.Tensor], index: dict[str, dict], size: int
    ) -> memoryview:
        """Copies ``tensors`` into the buffer at their index offsets; returns the bytes."""
        on_gpu = any(t.is_cuda for t in tensors.values())
        if self.data.numel() < size or (on_gpu and not self.data.is_pinned()):
            # Pinned memory lets the device-to-host copies run at full PCIe speed.
            self.data = torch.empty(size, dtype=torch.uint8, pin_memory=on_gpu)
        with torch.no_grad():
            for name, t in tensors.items():
                _view(self.data, index[name]).copy_(t, non_blocking=on_gpu)
        if on_gpu:
            torch.cuda.synchronize()
        return memoryview(self.data[:size].numpy())


# -- storage ------------------------------------------------------------------------------------
class CheckpointStore:
    """The checkpoints under one fsspec URL: listing, paths and reading."""

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = self.root.rstrip("/")

    def path(self, step: int, tmp: bool = False) -> str:
        return f"{self.root}/step-{step:012d}" + (".tmp" if tmp else "")

    def shard(self, step: int, rank: int, suffix: str, tmp: bool = False) -> str:
        return f"{self.path(step, tmp)}/rank-{rank:05d}.{suffix}"

    def _steps(self, pattern: re.Pattern) -> list[int]:
        if not self.fs.isdir(self.root):
            return []
        names = (p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.root, detail=False))
        return sorted(int(m.group(1)) for n in names if (m := pattern.match(n)))

    def steps(self) -> list[int]:
        """Steps of the published (complete) checkpoints, oldest first."""
        return self._steps(_PUBLISHED)

    def latest(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def _meta(self, step: int, rank: int) -> dict:
        try:
            return json.loads(self.fs.cat_file(self.shard(step, rank, "json")))
        except FileNotFoundError:
            raise CheckpointError(
                f"checkpoint step {step} under {self.url} has no shard for rank {rank}; "
                "load with the world size and sharding it was saved with"
            ) from None

    def read(self, step: int, rank: int = 0, writers: int | None = None) -> Any:
        """The state rank ``rank`` saved at ``step``, tensors on the CPU.

        With ``writers``, raises CheckpointError unless that many ranks wrote the
        checkpoint: a sharded state must be loaded by as many ranks as saved it.
        """
        meta = self._meta(step, rank)
        if writers is not None and meta["writers"] != writers:
            raise CheckpointError(
                f"checkpoint step {step} under {self.url} was written by {meta['writers']} "
                f"rank(s) but this job loads it as {writers}; load with the world size and "
                "sharding it was saved with"
            )
        blob = bytearray(self.fs.cat_file(self.shard(step, rank, "safetensors")))
        start, index = _parse_header(lambda lo, hi: blob[lo:hi])
        data = _bytes(blob, start)
        # A storage of its own per tensor: some consumers (torch.set_rng_state) read a
        # storage from its start, and one kept tensor must not pin the whole file.
        return _unflatten(meta["tree"], lambda name: _view(data, index[name]).clone())

    def read_tensor(self, step: int, name: str, rank: int = 0) -> torch.Tensor:
        """One tensor (``"model/layer.weight"``), reading only the header and its bytes."""
        path = self.shard(step, rank, "safetensors")
        data_start, index = _parse_header(lambda lo, hi: self.fs.cat_file(path, lo, hi))
        if name not in index:
            raise KeyError(
                f"no tensor {name!r} in checkpoint step {step} under {self.url}; "
                f"it has {', '.join(sorted(index)) or 'none'}"
            )
        start, end = index[name]["data_offsets"]
        blob = bytearray(self.fs.cat_file(path, data_start + start, data_start + end))
        return _view(_bytes(blob), {**index[name], "data_offsets": [0, end - start]})

    def remove_old(self, keep: int, published: int) -> None:
        """Keeps the newest ``keep`` checkpoints; drops ``.tmp`` ones older than ``published``."""
        for step in self.steps()[:-keep]:
            self.fs.rm(self.path(step), recursive=True)
        for step in self._steps(_STALE):
            if step < published:
                self.fs.rm(self.path(step, tmp=True), recursive=True)


def load_latest(url: str, rank: int = 0, **storage_options: Any) -> tuple[int, Any] | None:
    """``(step, state)`` of the newest complete checkpoint under ``url``, or None if none."""
    store = CheckpointStore(url, **storage_options)
    step = store.latest()
    return None if step is None else (step, store.read(step, rank))


def load(url: str, step: int, rank: int = 0, **storage_options: Any) -> Any:
    """The state saved at ``step`` under ``url`` (by ``rank``, for sharded checkpoints)."""
    return CheckpointStore(url, **storage_options).read(step, rank)


# -- the checkpointer ---------------------------------------------------------------------------
def _rank_and_world(group: dist.ProcessGroup | None) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


class AsyncCheckpointer:
    """Saves training state in the background; loads the newest complete checkpoint.

    Args:
        url: fsspec URL of the checkpoint folder (``/path``, ``memory://x``, ``fs3://h:p/x``).
        keep: how many published checkpoints to keep (older ones are deleted after a publish).
        process_group: the ranks that save together (default: the default group, if any).
        sharded: every rank saves its own state (FSDP shards, pipeline stages); otherwise
            the state is replicated (DDP) and rank 0 alone writes it.
        publish_timeout_s: how long rank 0 waits for the other ranks' shards.
        storage_options: passed to the fsspec filesystem.

    Every rank of the group must call ``save`` with the same steps, in the same order.
    """

    def __init__(
        self,
        url: str,
        *,
        keep: int = 3,
        process_group: dist.ProcessGroup | None = None,
        sharded: bool = False,
        publish_timeout_s: float = 600.0,
        **storage_options: Any,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep={keep}: keep at least 1 checkpoint")
        self.store = CheckpointStore(url, **storage_options)
        self.keep, self.group, self.sharded = keep, process_group, sharded
        self.publish_timeout_s = publish_timeout_s
        self.rank, self.world = _rank_and_world(process_group)
        # Tells this job's shard marks from those a crashed job left in the same .tmp folder.
        self.session = self._from_rank0(uuid.uuid4().hex)
        self._buffer = _HostBuffer()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="haiscale-checkpoint")
        self._pending: tuple[int, Future[None]] | None = None

    def _from_rank0(self, value: Any) -> Any:
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, group=self.group, group_src=0)
        return box[0]

    @property
    def writers(self) -> int:
        return self.world if self.sharded else 1

    def save(self, step: int, state: Any) -> Future[None]:
        """Copies ``state`` to host memory and returns; the write runs in the background.

        Waits first for the previous save (its buffer is reused) and raises its error if
        it failed. The returned future completes when this rank's part is written (and,
        on rank 0, published).
        """
        self.wait()
        done: Future[None] = Future()
        if self.rank >= self.writers:
            done.set_result(None)
            return done
        tree, tensors = _flatten(state)
        header, index, size = _index(tensors)
        payload = self._buffer.stage(tensors, index, size)
        meta = {"session": self.session, "step": step, "writers": self.writers, "tree": tree}
        done = self._executor.submit(self._write, step, header, payload, meta)
        self._pending = (step, done)
        return done

    def _write(self, step: int, header: bytes, payload: memoryview, meta: dict) -> None:
        fs, store = self.store.fs, self.store
        fs.makedirs(store.path(step, tmp=True), exist_ok=True)
        with fs.open(store.shard(step, self.rank, "safetensors", tmp=True), "wb") as f:
            f.write(header)
            for start in range(0, len(payload), _WRITE_BYTES):
                f.write(payload[start : start + _WRITE_BYTES])
        fs.pipe_file(store.shard(step, self.rank, "json", tmp=True), json.dumps(meta).encode())
        if self.rank == 0:
            self._publish(step)

    def _shard_done(self, step: int, rank: int) -> bool:
        try:
            meta = json.loads(
                self.store.fs.cat_file(self.store.shard(step, rank, "json", tmp=True))
            )
        except (FileNotFoundError, ValueError):  # not there yet, or being written
            return False
        return meta.get("session") == self.session

    def _publish(self, step: int) -> None:
        deadline = time.monotonic() + self.publish_timeout_s
        missing = list(range(1, self.writers))
        while missing := [r for r in missing if not self._shard_done(step, r)]:
            if time.monotonic() > deadline:
                raise CheckpointError(
                    f"ranks {missing} did not finish checkpoint step {step} within "
                    f"{self.publish_timeout_s:g}s; not published"
                )
            time.sleep(_POLL_S)
        fs, final = self.store.fs, self.store.path(step)
        if fs.exists(final):  # saved again after resuming from an earlier step
            fs.rm(final, recursive=True)
        fs.mv(self.store.path(step, tmp=True), final, recursive=True)
        self.store.remove_old(self.keep, step)

    def wait(self) -> None:
        """Blocks until the last save is written; raises CheckpointError if it failed."""
        if self._pending is None:
            return
        (step, future), self._pending = self._pending, None
        try:
            future.result()
        except Exception as exc:
            raise CheckpointError(
                f"checkpoint step {step} to {self.store.url} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def load_latest(self) -> tuple[int, Any] | None:
        """``(step, state)`` of the newest complete checkpoint (the same on every rank), or
        None when there is none. Collective over the process group."""
        self.wait()
        step = self._from_rank0(self.store.latest())
        return None if step is None else (step, self.load(step))

    def load(self, step: int) -> Any:
        """The state this rank saved at ``step`` (rank 0's, when not sharded)."""
        return self.store.read(step, self.rank if self.sharded else 0, self.writers)

    def close(self) -> None:
        """Waits for the last save (raising its error) and stops the background thread."""
        try:
            self.wait()
        finally:
            self._executor.shutdown()

    def __enter__(self) -> AsyncCheckpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
