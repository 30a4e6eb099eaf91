"""Supervised fine-tuning data: the label mask (prompt, system and user tokens are never
targets), chat templates (byte fallback and a Hugging Face tokenizer's, rendered as
transformers renders them), truncation and skipping, malformed lines, deterministic
batches; fine-tuning runs started from an init checkpoint (model.init): the first loss is
the checkpoint's, the response loss falls, a preempted run resumes without reading init
again, and a bad init is one line and exit status 2."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import deepseek
from deepseek.data import ByteTokenizer, DataConfig
from deepseek.model import IGNORE_INDEX
from deepseek.sft import (
    BYTE_CHAT_TEMPLATE,
    ChatTemplate,
    Example,
    SFTBatches,
    encode_example,
    labels_of,
    load_sft_tokenizer,
    read_examples,
)
from deepseek.train import TrainConfig, load_train_config, main, run

BYTES = ByteTokenizer()
BYTE_TEMPLATE = ChatTemplate(BYTE_CHAT_TEMPLATE, eos_token="\0")


def _write_jsonl(path: Path, records: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _targets(labels: torch.Tensor) -> list[int]:
    return [t for t in labels.flatten().tolist() if t != IGNORE_INDEX]


def test_prompt_tokens_and_padding_are_never_targets(tmp_path: Path) -> None:
    files = _write_jsonl(tmp_path / "a.jsonl", [{"prompt": "ab", "response": "cd"}])
    config = DataConfig(format="sft", files=[files], seq_len=6, batch_size=1)
    (example,) = read_examples(config, BYTES, BYTE_TEMPLATE)
    inputs, labels = SFTBatches([example], 6, 1, seed=0, pad_id=0).batch(0)
    a, b, c, d = b"abcd"
    assert inputs.tolist() == [[a, b, c, d, 0, 0]]
    # "b" predicts "c": the first response token; "d" predicts the end of the sequence.
    assert labels.tolist() == [[IGNORE_INDEX, c, d, BYTES.eos_id, IGNORE_INDEX, IGNORE_INDEX]]


def test_chat_targets_are_the_assistant_turns_and_their_ends() -> None:
    messages = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye?"},
        {"role": "assistant", "content": "Bye"},
        {"role": "user", "content": "a trailing question carries no loss"},
    ]
    ids, trained = encode_example({"messages": messages}, BYTES, BYTE_TEMPLATE)
    text = bytes(ids).decode()
    assert text == (
        "<|system|>\nBe terse.\n<|user|>\nHi\n<|assistant|>\nHello\0<|user|>\nBye?\n"
        "<|assistant|>\nBye\0"
    )
    assert bytes(i for i, t in zip(ids, trained, strict=True) if t) == b"Hello\0Bye\0"


def test_a_flipped_prompt_token_changes_nothing_in_the_loss() -> None:
    """With our labels, a prompt position's target may be anything: the loss stays
    bit-identical; a response position's target counts."""
    torch.manual_seed(0)
    model = deepseek.DeepseekForCausalLM(deepseek.preset("v3-tiny", num_hidden_layers=2))
    prompt, response = "what is two plus two? ", "four"

    def labels(prompt: str, response: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids, trained = encode_example({"prompt": prompt, "response": response}, BYTES, None)
        return labels_of(Example(torch.tensor(ids), torch.tensor(trained)), 32, BYTES.eos_id)

    inputs, base = labels(prompt, response)
    flipped_prompt = labels("what is two plus twO? ", response)[1]
    flipped_response = labels(prompt, "fouR")[1]
    with torch.no_grad():
        loss = model(inputs[None], base[None]).ce_loss
        same = model(inputs[None], flipped_prompt[None]).ce_loss
        other = model(inputs[None], flipped_response[None]).ce_loss
    assert torch.equal(loss, same)
    assert not torch.equal(loss, other)


def test_long_examples_are_cut_and_promptless_ones_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = [
        {"prompt": "p" * 12, "response": "r"},  # the prompt fills the window: skipped
        {"prompt": "pp", "response": "r" * 20},  # cut after 9 tokens
        {"prompt": "pp", "response": "rr"},
    ]
    files = [_write_jsonl(tmp_path / "a.jsonl", records)]
    config = DataConfig(format="sft", files=files, seq_len=8)
    with caplog.at_level(logging.WARNING, logger="deepseek.train"):
        examples = read_examples(config, BYTES, BYTE_TEMPLATE)
    assert [bytes(e.ids.tolist()) for e in examples] == [b"pp" + b"r" * 7, b"pprr\0"]
    assert "2 of 3 examples were longer than seq_len+1=9 tokens" in caplog.text
    assert "1 skipped with no response token left" in caplog.text
    with pytest.raises(deepseek.DataError, match="no SFT example in 1 file"):
        read_examples(DataConfig(format="sft", files=files, seq_len=1), BYTES, BYTE_TEMPLATE)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"a\.jsonl:3: not valid JSON"),
        ('["prompt"]', r"a\.jsonl:3: expected a JSON object, got list"),
        ('{"prompt": "x"}', r"a\.jsonl:3: expected \"prompt\" and \"response\" strings"),
        ('{"messages": [{"role": "user"}]}', r"a\.jsonl:3: \"messages\" must be a list"),
        ('{"messages": [{"role": "user", "content": "x"}]}', r"a\.jsonl:3: .*no assistant"),
    ],
)
def test_a_malformed_line_is_named_by_file_and_line(
    tmp_path: Path, line: str, message: str
) -> None:
    good = json.dumps({"prompt": "a", "response": "b"})
    (tmp_path / "a.jsonl").write_text(f"{good}\n\n{line}\n{good}\n")
    config = DataConfig(format="sft", files=[str(tmp_path / "*.jsonl")])
    with pytest.raises(deepseek.DataError, match=message) as caught:
        read_examples(config, BYTES, BYTE_TEMPLATE)
    assert "\n" not in str(caught.value)


def test_batches_depend_only_on_seed_step_and_rank(tmp_path: Path) -> None:
    records = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(10)]
    config = DataConfig(format="sft", files=[_write_jsonl(tmp_path / "a.jsonl", records)])
    examples = read_examples(config, BYTES, BYTE_TEMPLATE)
    first = SFTBatches(examples, 8, 3, seed=5, pad_id=0)
    steps = [(s, r) for s in range(8) for r in range(2)]  # several epochs, two ranks
    expected = {key: first.batch(*key, 2) for key in steps}
    resumed = SFTBatches(read_examples(config, BYTES, BYTE_TEMPLATE), 8, 3, seed=5, pad_id=0)
    for s, r in reversed(steps):
        inputs, labels = resumed.batch(s, r, 2)
        assert torch.equal(inputs, expected[s, r][0]) and torch.equal(labels, expected[s, r][1])
    # One epoch of two ranks (10 examples, 3 a row: steps 0 and 1 read 12) covers them all.
    seen = {
        bytes(row[:2].tolist()) for s in (0, 1) for r in (0, 1) for row in first.batch(s, r, 2)[0]
    }
    assert seen == {f"q{i}".encode()[:2] for i in range(10)}
    assert not torch.equal(
        SFTBatches(examples, 8, 3, seed=6, pad_id=0).batch(0)[0], expected[0, 0][0]
    )


TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }} {% endif %}"
    "{% if m['role'] == 'user' %}User: {{ m['content'] }} {% endif %}"
    "{% if m['role'] == 'assistant' %}Assistant: {{ m['content'] }} {{ eos_token }} {% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


@pytest.fixture
def hf_tokenizer(tmp_path: Path) -> Path:
    """A word-level tokenizer.json with <bos>/<eos> special tokens and a chat template."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    words = "[UNK] User: Assistant: hi hello how are you fine thanks be brief".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens([AddedToken("<bos>", special=True), AddedToken("<eos>", special=True)])
    folder = tmp_path / "tok"
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    settings = {
        "bos_token": "<bos>",
        "eos_token": {"__type": "AddedToken", "content": "<eos>", "special": True},
        "chat_template": TEMPLATE,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))
    return folder


CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hi how are you"},
    {"role": "assistant", "content": "fine thanks"},
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "hi"},
]


def test_hf_chat_template_renders_as_transformers_and_masks_all_but_assistant(
    hf_tokenizer: Path,
) -> None:
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(str(hf_tokenizer))
    tokenizer, template = load_sft_tokenizer(
        DataConfig(format="sft", tokenizer=str(hf_tokenizer / "tokenizer.json"))
    )
    assert template is not None
    for end in range(1, len(CHAT) + 1):
        for prompt in (False, True):
            ours = template.render(CHAT[:end], add_generation_prompt=prompt)
            theirs = reference.apply_chat_template(
                CHAT[:end], tokenize=False, add_generation_prompt=prompt
            )
            assert ours == theirs
    ids, trained = encode_example({"messages": CHAT}, tokenizer, template)
    assert ids == reference.apply_chat_template(CHAT, tokenize=True, return_dict=False)
    eos = reference.convert_tokens_to_ids("<eos>")
    assert tokenizer.eos_id == eos and ids[-1] == eos
    words = reference.convert_ids_to_tokens([i for i, t in zip(ids, trained, strict=True) if t])
    assert words == ["fine", "thanks", "<eos>", "hi", "<eos>"]


def test_chat_data_without_a_template_is_one_clear_error(hf_tokenizer: Path) -> None:
    (hf_tokenizer / "tokenizer_config.json").unlink()
    tokenizer, template = load_sft_tokenizer(
        DataConfig(format="sft", tokenizer=str(hf_tokenizer / "tokenizer.json"))
    )
    assert template is None
    with pytest.raises(deepseek.DataError, match="a.jsonl:1: chat data needs a chat template"):
        encode_example({"messages": CHAT}, tokenizer, template, "a.jsonl:1")
    ids, trained = encode_example({"prompt": "hi", "response": "hello"}, tokenizer, template)
    assert trained == [False, True, True] and ids[-1] == tokenizer.eos_id


# -- fine-tuning runs -----------------------------------------------------------------------
WORDS = (
    "apple river stone cloud maple tiger ocean lemon piano candle forest silver "
    "garden rocket violet thunder pepper marble anchor meadow copper falcon harbor "
    "jungle kettle lantern mirror needle orchid pebble quartz saddle tunnel velvet "
    "walnut yellow"
).split()


@pytest.fixture
def sft_files(tmp_path: Path) -> str:
    records = [{"prompt": f"reverse {w}: ", "response": w[::-1]} for w in WORDS]
    return _write_jsonl(tmp_path / "sft.jsonl", records)


def _pretrained(url: str) -> deepseek.DeepseekForCausalLM:
    """A tiny V3 (with an MTP module) saved as a Hugging Face checkpoint folder at `url`."""
    torch.manual_seed(123)
    model = deepseek.DeepseekForCausalLM(deepseek.preset("v3-tiny", num_hidden_layers=2))
    deepseek.save_pretrained(model, url)
    return model


def _sft_config(tmp_path: Path, init: str, files: str, **values) -> TrainConfig:
    path = tmp_path / "train.yaml"
    base = {
        "model": {"init": init},
        "data": {"format": "sft", "files": [files], "seq_len": 32, "batch_size": 4},
        "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2},
        "steps": 6,
        "log_every": 3,
        "checkpoint_every": 3,
    }
    path.write_text(yaml.safe_dump({**base, **values}))
    return load_train_config(str(path))


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("where", ["local", "memory", "fs3"])
def test_first_step_loss_is_the_init_checkpoints_loss(
    tmp_path: Path, sft_files: str, where: str, request: pytest.FixtureRequest
) -> None:
    if where == "fs3":
        init = f"fs3://{request.getfixturevalue('fs3_address')}/init-{tmp_path.name}"
    else:
        init = str(tmp_path / "init") if where == "local" else f"memory://init-{tmp_path.name}"
    _pretrained(init)
    config = _sft_config(tmp_path, init, sft_files, steps=1)
    reference = deepseek.from_pretrained(init).train()
    tokenizer, template = load_sft_tokenizer(config.data)
    batches = SFTBatches(read_examples(config.data, tokenizer, template), 32, 4, 0, 0)
    inputs, labels = batches.batch(0)
    with torch.no_grad():
        expected = reference(inputs, labels).loss.item()
    assert run(config).losses == [expected]
    scratch = run(_sft_config(tmp_path, init, sft_files, steps=1, model={}))
    assert scratch.losses[0] != expected  # the same run from random weights starts elsewhere


def test_finetuning_lowers_the_response_loss(tmp_path: Path, sft_files: str) -> None:
    _pretrained(str(tmp_path / "init"))
    metrics = tmp_path / "metrics.jsonl"
    config = _sft_config(
        tmp_path, str(tmp_path / "init"), sft_files, steps=30, metrics_file=str(metrics)
    )
    assert run(config).reason == "finished"
    ce = [e["ce_loss"] for e in _events(metrics) if e["event"] == "step"]
    assert len(ce) == 30 and sum(ce[-3:]) / 3 < 0.6 * sum(ce[:3]) / 3


def test_preempted_finetuning_resumes_without_reading_init_again(
    tmp_path: Path, sft_files: str
) -> None:
    init = tmp_path / "init"
    _pretrained(str(init))
    straight = run(_sft_config(tmp_path, str(init), sft_files, checkpoint_dir=f"{tmp_path}/a"))
    metrics = tmp_path / "metrics.jsonl"
    config = _sft_config(
        tmp_path,
        str(init),
        sft_files,
        checkpoint_dir=f"{tmp_path}/b",
        metrics_file=str(metrics),
    )
    calls: list[int] = []
    first = run(config, should_suspend=lambda: calls.append(1) or len(calls) >= 2)
    assert (first.step, first.reason) == (2, "suspended")
    (init / "model.safetensors").unlink()  # reading the init weights again would fail now
    second = run(config)
    assert second.reason == "finished"
    assert first.losses + second.losses == straight.losses
    starts = [e for e in _events(metrics) if e["event"] == "start"]
    assert [(s["init"], s["step"]) for s in starts] == [(str(init), 0), (None, 2)]
    assert starts[1]["resumed_from"].endswith("step-000000000002")


def test_missing_init_is_one_line_and_exit_status_2(tmp_path: Path, sft_files: str) -> None:
    _sft_config(tmp_path, str(tmp_path / "nowhere"), sft_files)
    result = subprocess.run(
        [sys.executable, "-m", "deepseek.train", "train.yaml", "steps=1"],
        cwd=tmp_path,
        env={**os.environ, "OMP_NUM_THREADS": "1", "WORLD_SIZE": "1"},
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"deepseek.train: model.init={tmp_path}/nowhere: no config.json there"
    )


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("weights", "no model.safetensors or model.safetensors.index.json in {init}"),
        ("reshape", "model.overrides {{'hidden_size': 128}} change the shapes of the weights"),
        ("config", "model.init={init}: "),
    ],
)
def test_bad_init_is_one_clear_line(
    tmp_path: Path, sft_files: str, capsys: pytest.CaptureFixture, damage: str, message: str
) -> None:
    init = tmp_path / "init"
    _pretrained(str(init))
    overrides = ["steps=1"]
    if damage == "weights":
        (init / "model.safetensors").unlink()
    elif damage == "reshape":
        overrides.append("model.overrides.hidden_size=128")
    else:  # a config.json that does not describe the weights beside it
        hf = json.loads((init / "config.json").read_text())
        (init / "config.json").write_text(json.dumps({**hf, "num_hidden_layers": 1}))
    _sft_config(tmp_path, str(init), sft_files)
    assert main([str(tmp_path / "train.yaml"), *overrides]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("deepseek.train: ") and message.format(init=init) in line
