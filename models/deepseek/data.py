"""Training data: parquet files through fsspec, tokenised into one stream of fixed windows.

Every file matched by the configured URLs (globs allowed, any fsspec protocol) is read in
sorted order; a text column is tokenised (documents separated by the tokenizer's end-of-
text id), or a column of token-id lists is used as is. The stream is cut into windows of
seq_len + 1 tokens. Which windows a step reads is a pure function of (seed, step, rank), so
the data position in a checkpoint is just the step number and resume is exact.

The token stream is held in memory; this suits the corpora the tests and demo use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import fsspec
import pyarrow.parquet as pq
import torch

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


@dataclass
class DataConfig:
    """Where the tokens come from and how they are batched."""

    files: list[str] = field(default_factory=list)
    """fsspec URLs or globs of parquet files, e.g. ["fs3://corpus/*.parquet"]."""
    column: str = "text"
    """A string column (tokenised) or a list-of-int column (token ids)."""
    tokenizer: str | None = None
    """URL of a HF tokenizer.json; None means the byte-level tokenizer."""
    eos_token: str | None = None
    """With `tokenizer`: the end-of-text token (default: the last id)."""
    seq_len: int = 64
    batch_size: int = 8
    """Sequences per step per rank."""


def load_tokenizer(config: DataConfig) -> Tokenizer:
    if config.tokenizer is None:
        return ByteTokenizer()
    return HFTokenizer(config.tokenizer, config.eos_token)


def _expand(urls: list[str]) -> list[str]:
    paths: list[str] = []
    for url in urls:
        fs, _ = fsspec.core.url_to_fs(url)
        matches = sorted(fs.glob(url)) if fsspec.core.has_magic(url) else [url]
        paths.extend(fs.unstrip_protocol(p) for p in matches)
    return paths


def read_tokens(config: DataConfig, tokenizer: Tokenizer) -> torch.Tensor:
    """The whole token stream (int64) of the configured files.

    Raises:
        DataError: no file matches, a file is not readable parquet, the column is missing,
            or the stream is shorter than one window.
    """
    paths = _expand(config.files)
    if not paths:
        raise DataError(f"no parquet files match data.files={config.files}")
    ids: list[int] = []
    for path in paths:
        try:
            with fsspec.open(path, "rb") as f:
                table = pq.read_table(f, columns=[config.column])
        except (OSError, ValueError) as err:  # pyarrow raises ArrowInvalid (a ValueError)
            raise DataError(
                f"{path}: not a readable parquet file with column {config.column!r} ({err})"
            ) from err
        for value in table.column(config.column).to_pylist():
            if value is None:
                continue
            ids.extend(tokenizer.encode(value) if isinstance(value, str) else value)
            ids.append(tokenizer.eos_id)
    window = config.seq_len + 1
    if len(ids) < window:
        raise DataError(
            f"dataset of {len(ids)} tokens in {len(paths)} file(s) is shorter than one "
            f"sequence of seq_len+1={window} tokens"
        )
    return torch.tensor(ids, dtype=torch.long)


class TokenBatches:
    """Deterministic (inputs, labels) batches from a token stream.

    Windows are visited in a fresh seeded permutation every epoch; step s on rank r of w
    reads windows [(s·w + r)·B, (s·w + r + 1)·B) of that order, so ranks never overlap.
    """

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch_size: int, seed: int) -> None:
        self.windows = tokens[: (len(tokens) - 1) // seq_len * seq_len + 1]
        self.count = (len(self.windows) - 1) // seq_len
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:  # one permutation per epoch, kept while it is in use
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.count, generator=generator)
        return self._perm

    def batch(self, step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels), each (batch_size, seq_len), for `step` on `rank`."""
        first = (step * world + rank) * self.batch_size
        rows = []
        for n in range(first, first + self.batch_size):
            start = int(self._order(n // self.count)[n % self.count]) * self.seq_len
            rows.append(self.windows[start : start + self.seq_len + 1])
        window = torch.stack(rows)
        return window[:, :-1], window[:, 1:]
