"""Hugging Face compatibility: same logits as transformers, hub key layout, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import deepseek
from deepseek.hf import INDEX_FILE, load_checkpoint
from deepseek.layout import HubLayout, place

transformers = pytest.importorskip("transformers")
AUTO = {"deepseek_v3": "DeepseekV3ForCausalLM", "deepseek_v2": "DeepseekV2ForCausalLM"}


def _hf_logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    model_type = json.loads((path / "config.json").read_text())["model_type"]
    model = getattr(transformers, AUTO[model_type]).from_pretrained(path).eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("fixture", ["hf_v3_dir", "hf_v2_dir"])
def test_logits_match_transformers(fixture: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(fixture)
    ids = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(3))
    ours = deepseek.from_pretrained(str(path))
    assert ours.config.rope.type == "yarn"
    with torch.no_grad():
        logits = ours(ids).logits
    reference = _hf_logits(path, ids)
    assert logits.shape == (2, 48, 256)
    assert (logits - reference).abs().max().item() <= 1e-4


def test_v3_checkpoint_has_nonzero_bias(hf_v3_dir: Path) -> None:
    model = deepseek.from_pretrained(str(hf_v3_dir))
    bias = model.model.layers[1].mlp.gate.e_score_correction_bias
    assert bias.dtype == torch.float32 and bias.abs().sum() > 0


@pytest.mark.parametrize("fixture", ["hf_v3_dir", "hf_v2_dir"])
def test_export_reloads_in_transformers(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    ours = deepseek.from_pretrained(str(request.getfixturevalue(fixture)))
    deepseek.save_pretrained(ours, str(tmp_path))
    keys = load_file(tmp_path / "model.safetensors").keys()
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in keys
    ids = torch.randint(0, 256, (1, 20))
    with torch.no_grad():
        expected = ours(ids).logits
    assert (_hf_logits(tmp_path, ids) - expected).abs().max().item() <= 1e-4


def test_export_with_mtp_layers_reloads_in_transformers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = deepseek.preset("v3-tiny", num_nextn_predict_layers=2)
    ours = deepseek.DeepseekForCausalLM(config).eval()
    with torch.no_grad():
        for layer in ours.moe_layers():
            layer.gate.e_score_correction_bias.normal_(0.0, 0.2)
    deepseek.save_pretrained(ours, str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["num_nextn_predict_layers"] == 2
    hf, info = transformers.DeepseekV3ForCausalLM.from_pretrained(
        tmp_path, output_loading_info=True
    )
    # transformers has no MTP module: it loads every main-model weight and skips the MTP
    # layers (hub indices num_hidden_layers and up), as it skips V3's model.layers.61.
    assert not info["missing_keys"]
    mtp_prefixes = ("model.layers.3.", "model.layers.4.")
    assert info["unexpected_keys"]
    assert all(key.startswith(mtp_prefixes) for key in info["unexpected_keys"])
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = ours(ids).logits
        assert (hf.eval()(ids).logits - expected).abs().max().item() <= 1e-4
    # And the export keeps the MTP weights for us.
    loaded = deepseek.from_pretrained(str(tmp_path))
    for key, value in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_sharded_roundtrip_with_mtp(tmp_path: Path) -> None:
    model = deepseek.DeepseekForCausalLM(deepseek.preset("v3-tiny"))
    deepseek.save_pretrained(model, str(tmp_path), max_shard_bytes=100_000)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert len(set(index["weight_map"].values())) > 1
    # MTP module 0 sits at hub index num_hidden_layers with copies of embedding and head.
    mtp = "model.layers.3"
    for name in (
        "eh_proj.weight",
        "enorm.weight",
        "shared_head.head.weight",
        "embed_tokens.weight",
    ):
        assert f"{mtp}.{name}" in index["weight_map"]
    loaded = deepseek.from_pretrained(str(tmp_path))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_fsspec_url_roundtrip() -> None:
    model = deepseek.DeepseekForCausalLM(deepseek.preset("llm-tiny"))
    deepseek.save_pretrained(model, "memory://ckpt/llm")
    loaded = deepseek.from_pretrained("memory://ckpt/llm", dtype=torch.bfloat16)
    assert loaded.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight.to(torch.bfloat16))


def test_hub_layout_places_every_tensor_back() -> None:
    config = deepseek.preset("v3-tiny", num_nextn_predict_layers=1)
    state = deepseek.DeepseekForCausalLM(config).state_dict()
    layout = HubLayout(config)
    items = dict(layout.hub_items(state))
    assert items["model.layers.1.mlp.experts.7.up_proj.weight"].shape == (32, 64)
    # The MTP layer's copies of embedding and head are written but skipped on load.
    assert torch.equal(
        items["model.layers.3.embed_tokens.weight"], state["model.embed_tokens.weight"]
    )
    assert layout.slot("model.layers.3.shared_head.head.weight") is None
    rebuilt = {key: torch.zeros_like(value) for key, value in state.items()}
    for hub_key, value in items.items():
        slot = layout.slot(hub_key)
        if slot is not None:
            place(rebuilt[slot.key], slot, value)
    assert all(torch.equal(rebuilt[k], state[k]) for k in state)


def test_other_architecture_is_refused_with_keys(hf_v2_dir: Path) -> None:
    model = deepseek.DeepseekForCausalLM(deepseek.preset("v3-tiny", num_nextn_predict_layers=0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(deepseek.CheckpointError) as err:
        load_checkpoint(model, str(hf_v2_dir))
    message = str(err.value)
    assert "\n" not in message
    assert "missing keys" in message and "q_a_proj" in message
    assert "unexpected keys" in message and "self_attn.q_proj.weight" in message
    # Checked before anything is copied: the model is untouched.
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_missing_checkpoint_is_reported(tmp_path: Path) -> None:
    with pytest.raises(deepseek.CheckpointNotFoundError, match="config.json"):
        deepseek.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(deepseek.preset("llm-tiny").to_hf_dict()))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        deepseek.from_pretrained(str(tmp_path))


# Loads the checkpoint at argv[1] into a model built from its config and prints how far the
# process's peak resident memory rose above what it used before building the model.
_PEAK_GROWTH = """
import sys
import torch
import deepseek
from deepseek.hf import load_checkpoint

def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

torch.set_num_threads(1)
config = deepseek.load_config(sys.argv[1] + "/config.json")
before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM, the peak, to the current size
model = deepseek.DeepseekForCausalLM(config)
load_checkpoint(model, sys.argv[1])
print(status("VmHWM:") - before)
"""


def test_loading_holds_one_shard_at_a_time(tmp_path: Path) -> None:
    config = deepseek.preset(
        "v3-tiny",
        vocab_size=4096,
        hidden_size=512,
        intermediate_size=2048,
        moe_intermediate_size=512,
        n_routed_experts=16,
        num_hidden_layers=4,
        num_nextn_predict_layers=0,
    )
    model = deepseek.DeepseekForCausalLM(config)
    model_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    deepseek.save_pretrained(model, str(tmp_path), max_shard_bytes=model_bytes // 6)
    del model
    shard_bytes = sorted(p.stat().st_size for p in tmp_path.glob("model-*.safetensors"))
    assert len(shard_bytes) >= 6
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_GROWTH, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr
    growth = int(run.stdout.split()[-1])
    # The model itself, plus the shard being read (and one in flight): reading the whole
    # checkpoint first would add another model_bytes.
    assert model_bytes * 0.9 < growth < model_bytes + 2 * shard_bytes[-1]
