"""Hugging Face checkpoints: safetensors read and written shard by shard, through fsspec.

A checkpoint is `model.safetensors` or shards listed by `model.safetensors.index.json`, next
to `config.json`, in a folder at any fsspec URL. A `Layout` (default: the one the config's
architecture uses, `deepseek.architectures.checkpoint_layout`) says where each stored
tensor goes, so loading holds one shard at a time (local shards memory-mapped, tensor by
tensor) and saving converts one shard at a time. Official FP8 checkpoints (`deepseek.fp8`)
are dequantised while loading.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem
from safetensors import safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from deepseek import fp8 as fp8_format
from deepseek.architectures import build_model, checkpoint_layout
from deepseek.config import config_from_hf
from deepseek.errors import CheckpointError, CheckpointNotFoundError
from deepseek.layout import HubLayout, Layout, Slot, describe, place, view
from deepseek.model import CausalLM

CONFIG_FILE = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Suffix of files being written; renamed to their real names once complete.
_PARTIAL = ".partial"
# How many offending keys an error message lists before summarising the rest.
_LIST_KEYS = 12
# A safetensors file starts with the byte length of its JSON header (8 bytes, little endian).
_HEADER_LENGTH_BYTES = 8
# The largest header the safetensors library reads; a claimed longer one is not read at all.
_MAX_HEADER_BYTES = 100_000_000


@dataclass(frozen=True)
class _Stored:
    """One tensor as a shard header describes it."""

    dtype: str
    shape: tuple[int, ...]


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_LIST_KEYS])
    return shown + (f" (and {len(keys) - _LIST_KEYS} more)" if len(keys) > _LIST_KEYS else "")


def _shard_names(fs: fsspec.AbstractFileSystem, root: str, url: str) -> list[str]:
    if fs.exists(f"{root}/{INDEX_FILE}"):
        with fs.open(f"{root}/{INDEX_FILE}", "r") as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    if fs.exists(f"{root}/{SINGLE_FILE}"):
        return [SINGLE_FILE]
    raise CheckpointNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {url}")


def _read_header(fs: fsspec.AbstractFileSystem, root: str, shard: str) -> dict[str, _Stored]:
    """The tensors a shard holds, read from its header alone; checks the file is complete."""
    path = f"{root}/{shard}"
    if not fs.exists(path):
        raise CheckpointError(f"{shard}: listed in {INDEX_FILE} but missing from {root}")
    size = fs.size(path)
    with fs.open(path, "rb") as f:
        length = int.from_bytes(f.read(_HEADER_LENGTH_BYTES), "little")
        if size < _HEADER_LENGTH_BYTES or length > size - _HEADER_LENGTH_BYTES:
            raise CheckpointError(f"{shard}: truncated or not safetensors ({size} bytes)")
        if length > _MAX_HEADER_BYTES:
            raise CheckpointError(
                f"{shard}: a {length}-byte header is over safetensors' {_MAX_HEADER_BYTES}"
            )
        try:
            header = json.loads(f.read(length))
        except ValueError as err:
            raise CheckpointError(f"{shard}: unreadable safetensors header ({err})") from None
    try:
        header.pop("__metadata__", None)
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
        stored = {
            key: _Stored(str(v["dtype"]), tuple(map(int, v["shape"]))) for key, v in header.items()
        }
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as err:
        raise CheckpointError(f"{shard}: malformed safetensors header ({err!r})") from None
    needed = _HEADER_LENGTH_BYTES + length + end
    if size < needed:
        raise CheckpointError(f"{shard}: truncated: {size} bytes, its header needs {needed}")
    return stored


def _read_quantisation(fs: fsspec.AbstractFileSystem, root: str) -> fp8_format.Block | None:
    """The FP8 block size announced by config.json next to the weights, if any."""
    if not fs.exists(f"{root}/{CONFIG_FILE}"):
        return None
    with fs.open(f"{root}/{CONFIG_FILE}", "r") as f:
        return fp8_format.block_size(json.load(f).get("quantization_config"))


def _check(
    model: CausalLM,
    layout: Layout,
    stored: dict[str, _Stored],
    block: fp8_format.Block | None,
    url: str,
) -> None:
    """Raises one CheckpointError naming every missing, unexpected and misshapen tensor."""
    state = model.state_dict()
    missing: set[str] = set()
    unexpected: list[str] = []
    wrong: list[str] = []
    unannounced: list[str] = []  # FP8 tensors without a quantization_config
    filled: set[Slot] = set()
    for key, info in stored.items():
        if block is not None and key.endswith(fp8_format.SCALE_SUFFIX):
            weight = stored.get(key.removesuffix(fp8_format.SCALE_SUFFIX))
            if weight is None:
                unexpected.append(key)
            elif info.shape != fp8_format.scale_shape(weight.shape, block):
                wrong.append(f"{key} {info.shape} vs {fp8_format.scale_shape(weight.shape, block)}")
            continue
        if info.dtype.startswith("F8"):
            if block is None:
                unannounced.append(key)
            elif key + fp8_format.SCALE_SUFFIX not in stored:
                missing.add(key + fp8_format.SCALE_SUFFIX)
        slot = layout.slot(key)
        if slot is None:
            continue
        if slot.key not in state:
            unexpected.append(key)
            continue
        try:
            part = view(state[slot.key], slot)
        except ValueError:
            unexpected.append(key)
            continue
        if tuple(part.shape) != info.shape:
            wrong.append(f"{key} {info.shape} vs {describe(slot)} {tuple(part.shape)}")
        filled.add(slot)
    for hub_key, _ in layout.hub_items(state):
        slot = layout.slot(hub_key)
        if slot is not None and slot not in filled:
            missing.add(hub_key)
    problems = [
        f"{what} [{_listing(keys)}]"
        for what, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", wrong),
            ("FP8 tensors but no quantization_config in config.json", unannounced),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"checkpoint {url} does not fit a {model.config.model_type} model: "
            + "; ".join(problems)
        )


def _read_shard(
    fs: fsspec.AbstractFileSystem, root: str, shard: str
) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of one shard, one at a time (memory-mapped when local)."""
    path = f"{root}/{shard}"
    if isinstance(fs, LocalFileSystem):
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                yield key, f.get_tensor(key)
        return
    with fs.open(path, "rb") as f:
        tensors = load_bytes(f.read())
    while tensors:  # pop, so that each tensor is freed once placed
        yield tensors.popitem()


def _dequantised(
    tensors: Iterable[tuple[str, torch.Tensor]], block: fp8_format.Block, stored: dict[str, _Stored]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Pairs each FP8 weight with its scale (held until both arrived, possibly from different
    shards) and yields the float32 weight in its place."""
    pending: dict[str, torch.Tensor] = {}
    for key, tensor in tensors:
        weight_key = key.removesuffix(fp8_format.SCALE_SUFFIX)
        scale_key = weight_key + fp8_format.SCALE_SUFFIX
        if scale_key not in stored:
            yield key, tensor
            continue
        partner = scale_key if key == weight_key else weight_key
        if partner not in pending:
            pending[key] = tensor
            continue
        scale = tensor if key == scale_key else pending.pop(scale_key)
        weight = tensor if key == weight_key else pending.pop(weight_key)
        yield weight_key, fp8_format.dequantise(weight, scale, block)


def load_checkpoint(model: CausalLM, url: str, layout: Layout | None = None) -> None:
    """Loads the safetensors checkpoint in folder `url` (any fsspec URL) into `model`.

    Shard headers are checked first, so a checkpoint that does not fit leaves the model
    untouched; then tensors are read one shard at a time and copied into the model's
    parameters and buffers (converted to their dtypes; FP8 weights dequantised).

    Args:
        model: the model to fill, built from the checkpoint's config.
        url: folder holding model.safetensors or an index with its shards (and config.json,
            whose quantization_config announces FP8 weights).
        layout: the checkpoint's key layout (default: the one its keys and `model.config`
            select, see `deepseek.architectures.checkpoint_layout`).
    Raises:
        CheckpointNotFoundError: no safetensors in the folder.
        CheckpointError: missing, unexpected or misshapen tensors (all named in one line), a
            truncated shard, or an unsupported quantisation.
    """
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    shards = _shard_names(fs, root, url)
    block = _read_quantisation(fs, root)
    stored: dict[str, _Stored] = {}
    for shard in shards:
        stored.update(_read_header(fs, root, shard))
    layout = layout or checkpoint_layout(model.config, stored.keys())
    _check(model, layout, stored, block, url)
    state = model.state_dict()
    tensors: Iterable[tuple[str, torch.Tensor]] = (
        item for shard in shards for item in _read_shard(fs, root, shard)
    )
    if block is not None:
        tensors = _dequantised(tensors, block, stored)
    for key, tensor in tensors:
        slot = layout.slot(key)
        if slot is not None:
            place(state[slot.key], slot, tensor)


def from_pretrained(
    url: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> CausalLM:
    """Builds the model described by `url`/config.json and loads the safetensors beside it.

    Args:
        url: a folder, local path or any fsspec URL, holding a HF DeepSeek checkpoint.
        dtype: parameter dtype (default float32, FP8 checkpoints dequantised); the routing
            bias stays fp32.
        device: where the model ends up.
    Raises:
        CheckpointNotFoundError: no config.json or safetensors in the folder.
        CheckpointError: weights that do not fit the config.
        ConfigError: an inconsistent config.json.
    """
    fs, root = fsspec.core.url_to_fs(url)
    config_path = f"{root.rstrip('/')}/{CONFIG_FILE}"
    if not fs.exists(config_path):
        raise CheckpointNotFoundError(f"no config.json in {url}")
    # Through this fs: a URL rebuilt from its path would lose an fs3://HOST:PORT address.
    with fs.open(config_path, "r") as f:
        config = config_from_hf(json.load(f))
    model = build_model(config)
    load_checkpoint(model, url)
    model.to(device=device, dtype=dtype)
    _keep_fp32(model)
    return model.eval()


def _keep_fp32(model: CausalLM) -> None:
    """Restores fp32 where a lower dtype would lose what matters, as transformers keeps it:
    routing biases (γ=1e-3 updates vanish in bf16) and the V3.2 indexer's head weights."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        fp32 = name.endswith("e_score_correction_bias") or name.endswith(
            "indexer.weights_proj.weight"
        )
        if fp32 and tensor.is_floating_point():
            tensor.data = tensor.data.float()


def save_pretrained(
    model: CausalLM, url: str, max_shard_bytes: int | None = None, fp8: bool = False
) -> None:
    """Writes config.json and hub-layout safetensors (sharded with an index above the limit).

    The result loads with `from_pretrained` and with transformers' class for its model_type.

    Args:
        model: the model to write.
        url: destination folder, local path or any fsspec URL.
        max_shard_bytes: start a new shard before one would exceed this size (None: one file).
        fp8: store the weights the official releases quantise as blockwise FP8 (V3 format).
    """
    save_checkpoint(model, url, max_shard_bytes=max_shard_bytes, fp8=fp8)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _stored_groups(
    model: CausalLM, layout: Layout, fp8_block: fp8_format.Block | None
) -> Iterator[dict[str, torch.Tensor]]:
    """The tensors to write, one hub tensor (with its FP8 scale) at a time, as CPU copies."""
    for key, tensor in layout.hub_items(model.state_dict()):
        if fp8_block is not None and fp8_format.is_quantised(key, tensor):
            weight, scale = fp8_format.quantise(tensor.to("cpu"), fp8_block)
            yield {key: weight, key + fp8_format.SCALE_SUFFIX: scale}
        else:
            yield {key: tensor.detach().to("cpu", copy=True).contiguous()}


def _write(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Writes `data` to `path` under a temporary name first, so a reader never sees half."""
    with fs.open(path + _PARTIAL, "wb") as f:
        f.write(data)
    fs.mv(path + _PARTIAL, path)


def save_checkpoint(
    model: CausalLM,
    url: str,
    layout: Layout | None = None,
    max_shard_bytes: int | None = None,
    fp8: bool = False,
) -> None:
    """Writes `model` as config.json and safetensors (sharded with an index above the limit).

    Shards are converted and written one at a time. The folder's previous config.json and
    index go first and come back last, so a half-written checkpoint is never loadable.

    Args:
        model: the model to write.
        url: destination folder, local path or any fsspec URL.
        layout: key layout to write (default: the hub names, which transformers' DeepseekV2/V3
            classes load).
        max_shard_bytes: start a new shard before one would exceed this size (None: one file).
        fp8: store the Linear weights the official releases quantise as blockwise FP8.
    Raises:
        CheckpointError: fp8 with a layout other than the V2/V3/V3.2 hub names.
    """
    layout = layout or checkpoint_layout(model.config)
    if fp8 and not isinstance(layout, HubLayout):
        # V4's release mixes FP8 with FP4 experts under other names: not this format.
        raise CheckpointError(
            f"fp8=True writes the V3/V3.2 FP8 format; {type(layout).__name__} has none"
        )
    block = fp8_format.DEFAULT_BLOCK if fp8 else None
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    fs.makedirs(root, exist_ok=True)
    for visible in (CONFIG_FILE, INDEX_FILE):
        if fs.exists(f"{root}/{visible}"):
            fs.rm(f"{root}/{visible}")
    written: list[dict[str, int]] = []  # per shard written: its tensors' sizes in bytes
    shard: dict[str, torch.Tensor] = {}
    shard_bytes = 0

    def flush() -> None:
        # Under a name no reader looks for; renamed once every shard is there.
        with fs.open(f"{root}/shard-{len(written):05d}{_PARTIAL}", "wb") as f:
            f.write(save_bytes(shard, metadata={"format": "pt"}))
        written.append({key: _nbytes(t) for key, t in shard.items()})
        shard.clear()

    for group in _stored_groups(model, layout, block):
        size = sum(_nbytes(t) for t in group.values())
        if max_shard_bytes is not None and shard and shard_bytes + size > max_shard_bytes:
            flush()
            shard_bytes = 0
        shard.update(group)
        shard_bytes += size
    flush()
    config = model.config.to_hf_dict()
    if block is not None:
        config["quantization_config"] = fp8_format.hub_quantization_config(block)
    if len(written) == 1:
        fs.mv(f"{root}/shard-00000{_PARTIAL}", f"{root}/{SINGLE_FILE}")
    else:
        weight_map = {}
        for n, keys in enumerate(written):
            name = f"model-{n + 1:05d}-of-{len(written):05d}.safetensors"
            fs.mv(f"{root}/shard-{n:05d}{_PARTIAL}", f"{root}/{name}")
            weight_map.update(dict.fromkeys(keys, name))
        total = sum(sum(keys.values()) for keys in written)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _write(fs, f"{root}/{INDEX_FILE}", json.dumps(index, indent=2).encode())
    _write(fs, f"{root}/{CONFIG_FILE}", json.dumps(config, indent=2).encode())
