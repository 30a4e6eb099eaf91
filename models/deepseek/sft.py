"""Supervised fine-tuning data: prompt/response examples whose loss covers the response only.

`data.format: sft` reads JSON-lines files (fsspec URLs or globs, in sorted order; blank
lines are skipped). Each line is one example, either

    {"prompt": "...", "response": "..."}
    {"messages": [{"role": "system" | "user" | "assistant" | ..., "content": "..."}, ...]}

A prompt/response example is the prompt's tokens, the response's tokens and the end-of-
sequence token. A conversation is rendered with the tokenizer's chat template (the
`chat_template` of the tokenizer_config.json beside `data.tokenizer`, a Jinja template as
Hugging Face defines it) and cut after its last assistant message; each assistant turn is
what the template adds to the conversation before it rendered with the generation prompt.
Each piece is tokenised on its own and the ids concatenated, so a label never straddles a
prompt/response boundary. The byte-level tokenizer has no template of its own and uses
`BYTE_CHAT_TEMPLATE`:

    <|system|>\\nYou are terse.\\n<|user|>\\nHi\\n<|assistant|>\\nHello<NUL>

Labels are next-token targets where the target is a response (assistant) token or the
end-of-sequence token ending the example (appended when the last assistant turn does not
already end with it), and IGNORE_INDEX (-100) everywhere else: prompt, system and user
tokens, template markup and padding. One example fills one row of seq_len positions
(no packing); a longer one keeps its first seq_len + 1 tokens (the end of the response is
cut, the prompt kept), and an example with no response token left is skipped; both are
counted in the log. Examples are held in memory.

Batches depend only on (seed, step, rank, world) (`deepseek.data.EpochOrder`), so the
step saved in a training checkpoint is the whole data position and resume is exact.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import fsspec
import torch

from deepseek.data import (
    ByteTokenizer,
    DataConfig,
    EpochOrder,
    HFTokenizer,
    Tokenizer,
    expand_urls,
)
from deepseek.errors import ConfigError, DataError
from deepseek.model import IGNORE_INDEX

log = logging.getLogger("deepseek.train")

BYTE_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m.role + '|>\\n' + m.content }}"
    "{{ eos_token if m.role == 'assistant' else '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
"""The chat format of the byte-level tokenizer: a role line per message, then its content;
an assistant turn ends with the end-of-sequence byte (NUL), other turns with a newline."""


class ChatTemplate:
    """A Hugging Face chat template (Jinja) with the special-token strings it may use."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        # Hugging Face renders templates with these options; templates are written for them.
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
        )
        env.globals["raise_exception"] = _template_error
        try:
            self._template = env.from_string(source)
        except TemplateError as err:
            raise ConfigError(f"chat template does not parse: {err}") from None
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        """The conversation as text; with `add_generation_prompt`, followed by what opens
        an assistant turn."""
        return self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )


def _template_error(message: str) -> None:
    raise ValueError(message)


def _token_text(value: Any) -> str:
    """A tokenizer_config.json special token: a string or an AddedToken-like dict."""
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return value or ""


def load_sft_tokenizer(config: DataConfig) -> tuple[Tokenizer, ChatTemplate | None]:
    """The tokenizer of SFT data and its chat template (None: the tokenizer has none).

    With `data.tokenizer`, the tokenizer_config.json beside the tokenizer.json (when there
    is one) gives the chat template and, unless `data.eos_token` is set, the end-of-
    sequence token.

    Raises:
        ConfigError: tokenizer_config.json is not JSON, or its template does not parse.
    """
    if config.tokenizer is None:
        return ByteTokenizer(), ChatTemplate(BYTE_CHAT_TEMPLATE, eos_token="\0")
    fs, path = fsspec.core.url_to_fs(config.tokenizer)
    settings_path = f"{path.rsplit('/', 1)[0]}/tokenizer_config.json"
    settings: dict[str, Any] = {}
    if fs.exists(settings_path):
        try:
            with fs.open(settings_path, "r", encoding="utf-8") as f:
                settings = json.load(f)
        except ValueError as err:
            raise ConfigError(f"{fs.unstrip_protocol(settings_path)}: not JSON ({err})") from None
    eos = config.eos_token or _token_text(settings.get("eos_token")) or None
    tokenizer = HFTokenizer(config.tokenizer, eos)
    source = settings.get("chat_template")
    if isinstance(source, list):  # named templates: the "default" one renders chats
        source = next((t["template"] for t in source if t.get("name") == "default"), None)
    if not source:
        return tokenizer, None
    bos = _token_text(settings.get("bos_token"))
    return tokenizer, ChatTemplate(source, bos, _token_text(settings.get("eos_token")))


@dataclass
class Example:
    """One tokenised example: ids and whether each id is trained on (is a target)."""

    ids: torch.Tensor
    """int64 token ids, at most seq_len + 1."""
    trained: torch.Tensor
    """bool, one per id: true for response (assistant) tokens and the final eos."""


def _pieces(record: Any, template: ChatTemplate | None, where: str) -> list[tuple[str, bool]]:
    """(text, trained) pieces of one JSON line, in order; `where` is file:line for errors."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        return _chat_pieces(record["messages"], template, where)
    prompt, response = record.get("prompt"), record.get("response")
    if not isinstance(prompt, str) or not isinstance(response, str):
        raise DataError(
            f'{where}: expected "prompt" and "response" strings or a "messages" list, '
            f"got keys {sorted(record)}"
        )
    return [(prompt, False), (response, True)]


def _chat_pieces(
    messages: Any, template: ChatTemplate | None, where: str
) -> list[tuple[str, bool]]:
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise DataError(f'{where}: "messages" must be a list of {{"role", "content"}} strings')
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise DataError(f"{where}: the conversation has no assistant message to train on")
    if template is None:
        raise DataError(
            f"{where}: chat data needs a chat template, and the tokenizer's "
            "tokenizer_config.json has none; use prompt/response lines or add a chat_template"
        )
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i in turns:
        try:
            before = template.render(messages[:i], add_generation_prompt=True)
            after = template.render(messages[: i + 1], add_generation_prompt=False)
        except Exception as err:  # Jinja raises many types; the template is user data
            raise DataError(f"{where}: the chat template fails on it: {err}") from None
        if not before.startswith(done) or not after.startswith(before):
            raise DataError(
                f"{where}: the chat template renders turn {i} in a way that does not extend "
                "the conversation before it, so its assistant tokens cannot be told apart"
            )
        pieces += [(before[len(done) :], False), (after[len(before) :], True)]
        done = after
    return pieces


def encode_example(
    record: Any, tokenizer: Tokenizer, template: ChatTemplate | None, where: str = "example"
) -> tuple[list[int], list[bool]]:
    """Token ids of one JSON line and which of them are trained on (untruncated).

    Raises:
        DataError: the record is not a prompt/response or messages example (named `where`).
    """
    ids: list[int] = []
    trained: list[bool] = []
    for text, train in _pieces(record, template, where):
        piece = tokenizer.encode(text) if text else []
        ids += piece
        trained += [train] * len(piece)
    if not ids or ids[-1] != tokenizer.eos_id:
        ids.append(tokenizer.eos_id)
        trained.append(True)
    return ids, trained


def read_examples(
    config: DataConfig, tokenizer: Tokenizer, template: ChatTemplate | None
) -> list[Example]:
    """The SFT examples of the configured JSON-lines files, truncated to seq_len + 1 tokens.

    Raises:
        DataError: no file matches, a file cannot be read, a line is not a valid example
            (named by file and line number), or no example keeps a response token.
    """
    paths = expand_urls(config.files)
    if not paths:
        raise DataError(f"no SFT files match data.files={config.files}")
    window = config.seq_len + 1
    examples: list[Example] = []
    seen = truncated = skipped = 0
    for path in paths:
        try:
            with fsspec.open(path, "r", encoding="utf-8") as f:
                lines = list(f)
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{path}: cannot read it as UTF-8 JSON lines ({err})") from None
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except ValueError as err:
                raise DataError(f"{where}: not valid JSON ({err})") from None
            ids, trained = encode_example(record, tokenizer, template, where)
            seen += 1
            truncated += len(ids) > window
            # Position 0 is never a target: labels are ids[1:].
            if not any(trained[1:window]):
                skipped += 1
                continue
            examples.append(
                Example(
                    torch.tensor(ids[:window], dtype=torch.long),
                    torch.tensor(trained[:window], dtype=torch.bool),
                )
            )
    if truncated or skipped:
        log.warning(
            "SFT data: %d of %d examples were longer than seq_len+1=%d tokens and truncated; "
            "%d skipped with no response token left",
            truncated,
            seen,
            window,
            skipped,
        )
    if not examples:
        raise DataError(
            f"no SFT example in {len(paths)} file(s) keeps a response token within "
            f"seq_len+1={window} tokens ({seen} examples read)"
        )
    log.info("SFT data: %d examples from %d file(s)", len(examples), len(paths))
    return examples


def labels_of(example: Example, seq_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, labels) of one example, each seq_len long: labels are the next ids where
    those are trained on, IGNORE_INDEX elsewhere and on padding (inputs padded with
    pad_id)."""
    n = len(example.ids) - 1
    inputs = torch.full((seq_len,), pad_id, dtype=torch.long)
    labels = torch.full((seq_len,), IGNORE_INDEX, dtype=torch.long)
    inputs[:n] = example.ids[:-1]
    labels[:n] = example.ids[1:].masked_fill(~example.trained[1:], IGNORE_INDEX)
    return inputs, labels


class SFTBatches:
    """Deterministic (inputs, labels) batches of SFT examples, one example a row, in
    `EpochOrder`."""

    def __init__(
        self, examples: list[Example], seq_len: int, batch_size: int, seed: int, pad_id: int
    ) -> None:
        self.examples, self.seq_len, self.batch_size, self.pad_id = (
            examples,
            seq_len,
            batch_size,
            pad_id,
        )
        self.order = EpochOrder(len(examples), seed)

    def batch(self, step: int, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels), each (batch_size, seq_len), for `step` on `rank`."""
        rows = [
            labels_of(self.examples[i], self.seq_len, self.pad_id)
            for i in self.order.items(step, rank, world, self.batch_size)
        ]
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
