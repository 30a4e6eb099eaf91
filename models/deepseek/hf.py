"""Hugging Face checkpoint adapter: hub key layout ↔ our state dict, safetensors I/O.

Our module names already are the hub's, except for two things this module converts:
- routed experts: stacked `mlp.experts.gate_up_proj` (E, 2I, H) / `down_proj` (E, H, I)
  here, `mlp.experts.{i}.{gate,up,down}_proj.weight` per expert on the hub;
- MTP modules: `mtp.{k}.*` here, `model.layers.{num_hidden_layers + k}.*` on the hub, which
  also stores copies of the shared embedding (`embed_tokens`) and head (`shared_head.head`).

Checkpoints are `model.safetensors` or shards listed by `model.safetensors.index.json`,
read and written through fsspec so that any file system URL works.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

import fsspec
import torch
from fsspec.implementations.local import LocalFileSystem
from safetensors.torch import load as load_bytes
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes

from deepseek.config import ModelConfig, load_config
from deepseek.errors import CheckpointError, CheckpointNotFoundError
from deepseek.model import DeepseekForCausalLM
from deepseek.moe import Router

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_EXPERT = re.compile(r"^(.*\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.*)$")
# How many offending keys an error message lists before summarising the rest.
_LIST_KEYS = 12


def to_hf(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict → hub-layout tensors (per-expert keys, MTP at layer index L+k)."""
    out: dict[str, torch.Tensor] = {}
    L = config.num_hidden_layers
    for key, value in state.items():
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if key.startswith("mtp."):
            k, rest = key[4:].split(".", 1)
            key = f"model.layers.{L + int(k)}.{rest}"
        if key.endswith(".mlp.experts.gate_up_proj"):
            prefix = key[: -len(".gate_up_proj")]
            for i, (gate, up) in enumerate(v.chunk(2, dim=0) for v in value):
                out[f"{prefix}.{i}.gate_proj.weight"] = gate
                out[f"{prefix}.{i}.up_proj.weight"] = up
        elif key.endswith(".mlp.experts.down_proj"):
            prefix = key[: -len(".down_proj")]
            for i, down in enumerate(value):
                out[f"{prefix}.{i}.down_proj.weight"] = down
        else:
            out[key] = value
    for k in range(config.num_nextn_predict_layers):
        out[f"model.layers.{L + k}.embed_tokens.weight"] = state["model.embed_tokens.weight"]
        out[f"model.layers.{L + k}.shared_head.head.weight"] = state["lm_head.weight"]
    return out


def from_hf(hf: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Hub-layout tensors → our state dict (stacks experts, moves MTP layers).

    Raises:
        CheckpointError: an expert set is incomplete.
    """
    L = config.num_hidden_layers
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[tuple[str, int], torch.Tensor]] = {}
    for key, value in hf.items():
        layer = _LAYER.match(key)
        if layer and int(layer.group(1)) >= L:
            depth, rest = int(layer.group(1)) - L, layer.group(2)
            if rest in ("embed_tokens.weight", "shared_head.head.weight"):
                continue  # hub copies of the shared embedding and head
            key = f"mtp.{depth}.{rest}"
        expert = _EXPERT.match(key)
        if expert:
            prefix, i, kind = expert.group(1), int(expert.group(2)), expert.group(3)
            experts.setdefault(prefix, {})[(kind, i)] = value
        else:
            out[key] = value
    for prefix, parts in experts.items():
        count = 1 + max(i for _, i in parts)
        missing = [
            f"{prefix}.{i}.{kind}_proj.weight"
            for i in range(count)
            for kind in ("gate", "up", "down")
            if (kind, i) not in parts
        ]
        if missing:
            raise CheckpointError(f"incomplete experts: missing {_listing(missing)}")
        out[f"{prefix}.gate_up_proj"] = torch.stack(
            [torch.cat((parts[("gate", i)], parts[("up", i)])) for i in range(count)]
        )
        out[f"{prefix}.down_proj"] = torch.stack([parts[("down", i)] for i in range(count)])
    return out


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_LIST_KEYS])
    return shown + (f" (and {len(keys) - _LIST_KEYS} more)" if len(keys) > _LIST_KEYS else "")


def load_hf_state_dict(model: DeepseekForCausalLM, hf: dict[str, torch.Tensor]) -> None:
    """Loads hub-layout tensors into `model`, converting to the model's dtypes.

    Raises:
        CheckpointError: missing or unexpected keys (all listed in one message), or shapes
            that differ; typically a checkpoint of another architecture.
    """
    state = from_hf(hf, model.config)
    expected = model.state_dict()
    missing = expected.keys() - state.keys()
    if model.config.tie_word_embeddings:
        missing.discard("lm_head.weight")
        state.pop("lm_head.weight", None)
    unexpected = state.keys() - expected.keys()
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not fit a {model.config.model_type} model: "
            f"missing keys [{_listing(missing)}]; unexpected keys [{_listing(unexpected)}]"
        )
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state.items()
        if v.shape != expected[k].shape
    ]
    if wrong:
        raise CheckpointError(f"checkpoint shapes differ from the config: {_listing(wrong)}")
    model.load_state_dict(state, strict=False)


def _read_safetensors(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, torch.Tensor]:
    if isinstance(fs, LocalFileSystem):
        return load_file(path)  # memory-mapped
    with fs.open(path, "rb") as f:
        return load_bytes(f.read())


def read_checkpoint(url: str) -> dict[str, torch.Tensor]:
    """All tensors of the safetensors checkpoint in folder `url` (single file or sharded).

    Raises:
        CheckpointNotFoundError: neither model.safetensors nor its index is there.
    """
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    if fs.exists(f"{root}/{INDEX_FILE}"):
        with fs.open(f"{root}/{INDEX_FILE}", "r") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif fs.exists(f"{root}/{SINGLE_FILE}"):
        files = [SINGLE_FILE]
    else:
        raise CheckpointNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {url}")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(_read_safetensors(fs, f"{root}/{name}"))
    return tensors


def load_checkpoint(model: DeepseekForCausalLM, url: str) -> None:
    """Loads the safetensors checkpoint in folder `url` (any fsspec URL) into `model`.

    Raises:
        CheckpointNotFoundError: no safetensors in the folder.
        CheckpointError: weights that do not fit the model's config.
    """
    load_hf_state_dict(model, read_checkpoint(url))


def from_pretrained(
    url: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> DeepseekForCausalLM:
    """Builds the model described by `url`/config.json and loads the safetensors beside it.

    Args:
        url: a folder, local path or any fsspec URL, holding a HF DeepSeek checkpoint.
        dtype: parameter dtype (default: as stored); the routing bias stays fp32.
        device: where the model ends up.
    Raises:
        CheckpointNotFoundError: no config.json or safetensors in the folder.
        CheckpointError: weights that do not fit the config.
        ConfigError: an inconsistent config.json.
    """
    fs, root = fsspec.core.url_to_fs(url)
    config_path = f"{root.rstrip('/')}/config.json"
    if not fs.exists(config_path):
        raise CheckpointNotFoundError(f"no config.json in {url}")
    config = load_config(fs.unstrip_protocol(config_path))
    model = DeepseekForCausalLM(config)
    load_checkpoint(model, url)
    model.to(device=device, dtype=dtype)
    for module in model.modules():
        if isinstance(module, Router) and module.e_score_correction_bias is not None:
            module.e_score_correction_bias.data = module.e_score_correction_bias.float()
    return model.eval()


def save_pretrained(
    model: DeepseekForCausalLM, url: str, max_shard_bytes: int | None = None
) -> None:
    """Writes config.json and hub-layout safetensors (sharded with an index above the limit).

    The result loads with `from_pretrained` and with transformers' DeepseekV2/V3 classes.
    """
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    fs.makedirs(root, exist_ok=True)
    with fs.open(f"{root}/config.json", "w") as f:
        json.dump(model.config.to_hf_dict(), f, indent=2)
    tensors = to_hf(model.state_dict(), model.config)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").contiguous().clone()
        nbytes = t.numel() * t.element_size()
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        with fs.open(f"{root}/{SINGLE_FILE}", "wb") as f:
            f.write(save_bytes(shards[0], metadata=metadata))
        return
    weight_map = {}
    for n, shard in enumerate(shards, start=1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        with fs.open(f"{root}/{name}", "wb") as f:
            f.write(save_bytes(shard, metadata=metadata))
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with fs.open(f"{root}/{INDEX_FILE}", "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
