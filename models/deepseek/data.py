"""Pretraining data: parquet files through fsspec, tokenised into one stream of fixed windows.

(`data.format: sft` reads prompt/response examples instead: `deepseek.sft`.)

Every file matched by the configured URLs (globs allowed, any fsspec protocol) is read in
sorted order; a text column is tokenised (documents separated by the tokenizer's end-of-
text id), or a column of token-id lists is used as is. The stream is cut into windows of
seq_len + 1 tokens. Which windows a step reads is a pure function of (seed, step, rank), so
the data position in a checkpoint is just the step number and resume is exact.

The stream never has to fit in memory: files are read one record batch at a time and their
token ids appended to a flat int32 file, which is then memory-mapped, so a step touches
only the pages of the windows it reads and the kernel may drop them again. That file lives
in `DataConfig.cache_dir` under a digest of everything it was made from (file URLs, sizes
and times, column, tokenizer), so later runs, resumes and other ranks on the node reuse it;
without a cache_dir it is an unnamed temporary file, deleted as soon as it is mapped.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Literal, Protocol

import fsspec
import numpy as np
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict, Field

from deepseek.errors import DataError


class Tokenizer(Protocol):
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255; byte 0 (NUL, absent from text) ends a document."""

    vocab_size = 256
    eos_id = 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


class HFTokenizer:
    """A Hugging Face `tokenizer.json` through the `tokenizers` library."""

    def __init__(self, url: str, eos_token: str | None = None) -> None:
        from tokenizers import Tokenizer as _Tokenizer

        with fsspec.open(url, "r", encoding="utf-8") as f:
            self._tok = _Tokenizer.from_str(f.read())
        self.vocab_size = self._tok.get_vocab_size()
        eos = self._tok.token_to_id(eos_token) if eos_token else None
        self.eos_id = eos if eos is not None else self.vocab_size - 1

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids


class DataConfig(BaseModel):
    """Where the tokens come from and how they are batched."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    format: Literal["parquet", "sft"] = "parquet"
    """"parquet": pretraining text (this module). "sft": supervised fine-tuning examples,
    JSON lines of {"prompt", "response"} or {"messages"} (`deepseek.sft`)."""
    files: list[str] = Field(default_factory=list)
    """fsspec URLs or globs of the data files, e.g. ["fs3://corpus/*.parquet"]."""
    column: str = "text"
    """parquet: a string column (tokenised) or a list-of-int column (token ids)."""
    tokenizer: str | None = None
    """URL of a HF tokenizer.json; None means the byte-level tokenizer. For sft chat data
    the chat template is read from the tokenizer_config.json beside it."""
    eos_token: str | None = None
    """With `tokenizer`: the end-of-text token (default: tokenizer_config.json's eos_token
    for sft, else the last id)."""
    seq_len: int = Field(64, gt=0)
    batch_size: int = Field(8, gt=0)
    """Sequences per step per rank."""
    cache_dir: str | None = None
    """parquet: local folder for the tokenised stream (int32 ids, 4 bytes a token), reused across
    runs; None: a temporary file in TMPDIR (which must then hold the whole stream, so point
    this at a disk for corpora larger than memory when TMPDIR is a tmpfs)."""


def load_tokenizer(config: DataConfig) -> Tokenizer:
    if config.tokenizer is None:
        return ByteTokenizer()
    return HFTokenizer(config.tokenizer, config.eos_token)


def expand_urls(urls: list[str]) -> list[str]:
    """The files the fsspec URLs and globs name, each glob's matches in sorted order, as
    URLs with their protocol."""
    paths: list[str] = []
    for url in urls:
        fs, _ = fsspec.core.url_to_fs(url)
        matches = sorted(fs.glob(url)) if fsspec.core.has_magic(url) else [url]
        paths.extend(fs.unstrip_protocol(p) for p in matches)
    return paths


# Rows decoded and token ids held at a time while tokenising: bound the memory a large file
# needs (about 60 MB of Python ints at 2^20 ids, whatever the file's size).
_BATCH_ROWS = 1024
_FLUSH_TOKENS = 1 << 20
_TOKEN_DTYPE = np.int32


def _fingerprint(config: DataConfig, paths: list[str]) -> str:
    """Digest of everything the token stream depends on; names its cache file."""
    sources = [config.tokenizer] if config.tokenizer else []
    infos = []
    for url in paths + sources:
        fs, path = fsspec.core.url_to_fs(url)
        info = fs.info(path)
        infos.append([url] + [str(info.get(k)) for k in ("size", "mtime", "created", "ETag")])
    what = {
        "files": infos,
        "column": config.column,
        "eos_token": config.eos_token,
        "tokenizer": config.tokenizer,
        "format": 1,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]


def _tokenise_file(path: str, column: str, tokenizer: Tokenizer, out) -> int:
    """Appends the token ids of one parquet file to the open binary file `out`; returns how
    many were written."""
    written = 0
    pending: list[int] = []
    try:
        with fsspec.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            if column not in parquet.schema_arrow.names:
                raise ValueError(f"no column {column!r} (columns: {parquet.schema_arrow.names})")
            for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=[column]):
                for value in batch.column(0).to_pylist():
                    if value is None:
                        continue
                    pending.extend(tokenizer.encode(value) if isinstance(value, str) else value)
                    pending.append(tokenizer.eos_id)
                    if len(pending) >= _FLUSH_TOKENS:
                        written += _flush(pending, path, out)
    except DataError:
        raise
    except (OSError, ValueError) as err:  # pyarrow raises ArrowInvalid (a ValueError)
        raise DataError(
            f"{path}: not a readable parquet file with column {column!r} ({err})"
        ) from err
    return written + _flush(pending, path, out)


def _flush(pending: list[int], path: str, out) -> int:
    ids = np.asarray(pending, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(_TOKEN_DTYPE).max):
        bad = ids[(ids < 0) | (ids > np.iinfo(_TOKEN_DTYPE).max)][0]
        raise DataError(f"{path}: token id {bad} is outside 0..{np.iinfo(_TOKEN_DTYPE).max}")
    out.write(ids.astype(_TOKEN_DTYPE).tobytes())
    pending.clear()
    return int(ids.size)


def _map(path: str) -> torch.Tensor:
    # Copy-on-write mapping: torch wants a writable array, and nothing writes to it.
    return torch.from_numpy(np.memmap(path, dtype=_TOKEN_DTYPE, mode="c"))


def read_tokens(config: DataConfig, tokenizer: Tokenizer) -> torch.Tensor:
    """The token stream of the configured files: a 1-D int32 tensor mapped from a file.

    Tokenises the files unless `config.cache_dir` already holds their stream.

    Raises:
        DataError: no file matches, a file is not readable parquet, the column is missing,
            a token id does not fit int32, or the stream is shorter than one window.
    """
    paths = expand_urls(config.files)
    if not paths:
        raise DataError(f"no parquet files match data.files={config.files}")
    cached = None
    if config.cache_dir is not None:
        os.makedirs(config.cache_dir, exist_ok=True)
        cached = os.path.join(config.cache_dir, f"tokens-{_fingerprint(config, paths)}.i32")
        if os.path.exists(cached):
            return _map(cached)
    fd, tmp = tempfile.mkstemp(prefix=".tokens-", suffix=".tmp", dir=config.cache_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            count = sum(_tokenise_file(p, config.column, tokenizer, out) for p in paths)
        window = config.seq_len + 1
        if count < window:
            raise DataError(
                f"dataset of {count} tokens in {len(paths)} file(s) is shorter than one "
                f"sequence of seq_len+1={window} tokens"
            )
        if cached is None:
            return _map(tmp)  # the mapping outlives the name, removed below
        os.replace(tmp, cached)  # atomic: ranks tokenising at once all leave a whole file
        return _map(cached)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Batches(Protocol):
    """What the training loop steps through: a pure function of (step, rank, world)."""

    def batch(
        self, step: int, rank: int = 0, world: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


class EpochOrder:
    """Which item the n-th read of a run takes: items are visited in a fresh seeded
    permutation every epoch, so the order depends only on (seed, n) and resuming at a step
    needs no other state. Step s on rank r of w reads items [(s·w + r)·B, (s·w + r + 1)·B),
    so ranks never overlap. The permutation takes 8 bytes per item."""

    def __init__(self, count: int, seed: int) -> None:
        self.count, self.seed = count, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def items(self, step: int, rank: int, world: int, batch_size: int) -> list[int]:
        """The item indices of `step` on `rank` of `world`."""
        first = (step * world + rank) * batch_size
        return [self._item(n) for n in range(first, first + batch_size)]

    def _item(self, n: int) -> int:
        epoch = n // self.count
        if epoch != self._epoch:  # one permutation per epoch, kept while it is in use
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.count, generator=generator)
        return int(self._perm[n % self.count])


class TokenBatches:
    """Deterministic (inputs, labels) batches of seq_len+1-token windows of a token stream,
    in `EpochOrder`. The stream may be memory-mapped (`read_tokens`): only the windows a
    step reads are copied, as int64."""

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch_size: int, seed: int) -> None:
        self.windows = tokens[: (len(tokens) - 1) // seq_len * seq_len + 1]
        self.count = (len(self.windows) - 1) // seq_len
        self.seq_len, self.batch_size = seq_len, batch_size
        self.order = EpochOrder(self.count, seed)

    def batch(self, step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels), each (batch_size, seq_len), for `step` on `rank`."""
        rows = []
        for window in self.order.items(step, rank, world, self.batch_size):
            start = window * self.seq_len
            rows.append(self.windows[start : start + self.seq_len + 1])
        window = torch.stack(rows).long()
        return window[:, :-1], window[:, 1:]
