"""The data loader: a memory-mapped token stream (reused from cache_dir, or an unnamed
temporary file), tokenised in bounded pieces, and batches that depend only on (seed, step,
rank). Bad data: test_train.py."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import deepseek
from deepseek import data
from deepseek.data import ByteTokenizer, DataConfig, TokenBatches, read_tokens

DOCS = ["the quick brown fox", "jumps over", "the lazy dog", "", "a stitch in time"]


def _expected(docs: list[str]) -> list[int]:
    ids: list[int] = []
    for doc in docs:
        ids.extend(doc.encode())
        ids.append(ByteTokenizer.eos_id)
    return ids


def _mapping_of(tensor: torch.Tensor) -> str:
    """The /proc/self/maps line of the mapping that holds tensor's first byte."""
    address = tensor.data_ptr()
    with open("/proc/self/maps") as f:
        for line in f:
            low, high = (int(a, 16) for a in line.split()[0].split("-"))
            if low <= address < high:
                return line.strip()
    return ""


class CountingTokenizer(ByteTokenizer):
    def __init__(self) -> None:
        self.calls = 0

    def encode(self, text: str) -> list[int]:
        self.calls += 1
        return super().encode(text)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    pq.write_table(pa.table({"text": DOCS[:2]}), folder / "part-0.parquet")
    pq.write_table(pa.table({"text": DOCS[2:]}), folder / "part-1.parquet")
    return folder


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc (Linux)")
def test_stream_is_mapped_from_the_cache_file_and_reused(corpus: Path, tmp_path: Path) -> None:
    config = DataConfig(files=[f"{corpus}/*.parquet"], seq_len=8, cache_dir=str(tmp_path / "c"))
    tokenizer = CountingTokenizer()
    tokens = read_tokens(config, tokenizer)
    assert tokens.dtype == torch.int32 and tokens.tolist() == _expected(DOCS)
    (cache,) = (tmp_path / "c").iterdir()
    assert cache.stat().st_size == 4 * len(tokens)
    assert str(cache) in _mapping_of(tokens)  # pages of the file, not a copy in memory
    calls = tokenizer.calls
    again = read_tokens(config, tokenizer)
    assert tokenizer.calls == calls and torch.equal(again, tokens)
    # A changed file is a different stream.
    pq.write_table(pa.table({"text": ["something else entirely"]}), corpus / "part-1.parquet")
    changed = read_tokens(config, tokenizer)
    assert changed.tolist() == _expected(DOCS[:2] + ["something else entirely"])
    assert len(list((tmp_path / "c").iterdir())) == 2


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc (Linux)")
def test_without_cache_dir_the_file_is_gone_once_mapped(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(data.tempfile, "tempdir", str(scratch))
    tokens = read_tokens(DataConfig(files=[f"{corpus}/*.parquet"], seq_len=8), ByteTokenizer())
    assert tokens.tolist() == _expected(DOCS)
    assert list(scratch.iterdir()) == []
    assert "(deleted)" in _mapping_of(tokens)


def test_any_fsspec_file_system(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    for i, docs in enumerate((DOCS[:2], DOCS[2:])):
        with fs.open(f"/ds-test-{tmp_path.name}/part-{i}.parquet", "wb") as f:
            pq.write_table(pa.table({"text": docs}), f)
    url = f"memory:///ds-test-{tmp_path.name}/*.parquet"
    config = DataConfig(files=[url], seq_len=8, cache_dir=str(tmp_path / "c"))
    try:
        assert read_tokens(config, ByteTokenizer()).tolist() == _expected(DOCS)
        assert read_tokens(config, ByteTokenizer()).tolist() == _expected(DOCS)  # cached
    finally:
        fs.rm(f"/ds-test-{tmp_path.name}", recursive=True)


def test_tokenising_in_small_pieces_gives_the_same_stream(
    corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = DataConfig(files=[f"{corpus}/*.parquet"], seq_len=8)
    whole = read_tokens(config, ByteTokenizer())
    monkeypatch.setattr(data, "_FLUSH_TOKENS", 5)
    monkeypatch.setattr(data, "_BATCH_ROWS", 1)
    assert torch.equal(read_tokens(config, ByteTokenizer()), whole)


def test_token_id_columns_and_ids_that_do_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "ids.parquet"
    pq.write_table(pa.table({"ids": [[5, 6, 7], None, [8] * 10]}), path)
    config = DataConfig(files=[str(path)], column="ids", seq_len=4)
    assert read_tokens(config, ByteTokenizer()).tolist() == [5, 6, 7, 0] + [8] * 10 + [0]
    pq.write_table(pa.table({"ids": [[1, 2**40] + [3] * 10]}), path)
    with pytest.raises(deepseek.DataError, match="token id 1099511627776"):
        read_tokens(config, ByteTokenizer())


def test_missing_column_is_reported(corpus: Path) -> None:
    config = DataConfig(files=[f"{corpus}/*.parquet"], column="content", seq_len=8)
    with pytest.raises(deepseek.DataError, match="no column 'content'"):
        read_tokens(config, ByteTokenizer())


def test_batches_depend_only_on_seed_step_and_rank(corpus: Path, tmp_path: Path) -> None:
    config = DataConfig(files=[f"{corpus}/*.parquet"], seq_len=4, cache_dir=str(tmp_path / "c"))
    mapped = read_tokens(config, ByteTokenizer())
    in_memory = torch.tensor(_expected(DOCS), dtype=torch.long)
    first = TokenBatches(mapped, 4, 3, seed=7)
    steps = [(s, r) for s in range(12) for r in range(2)]  # several epochs, two ranks
    expected = {(s, r): first.batch(s, r, 2) for s, r in steps}
    # A resumed run builds a new TokenBatches and asks for steps in its own order.
    resumed = TokenBatches(in_memory, 4, 3, seed=7)
    for s, r in reversed(steps):
        inputs, labels = resumed.batch(s, r, 2)
        assert inputs.dtype == torch.long
        assert torch.equal(inputs, expected[s, r][0]) and torch.equal(labels, expected[s, r][1])
        assert torch.equal(inputs[:, 1:], labels[:, :-1])
