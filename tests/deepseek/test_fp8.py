"""DeepSeek's blockwise FP8 checkpoints: our quantisation, transformers' loader, loading
checkpoints quantised independently, split across shards, errors and fsspec URLs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import fsspec
import pytest
import torch
from safetensors.torch import load_file, save_file

import deepseek
from deepseek import fp8
from deepseek.hf import INDEX_FILE, load_checkpoint
from deepseek.layout import HubLayout

transformers = pytest.importorskip("transformers")

# Tiny V3 whose FP8 weights transformers can load: every quantised dimension is at most one
# 128 block or a multiple of 128. transformers' CPU dequantisation (Fp8Dequantize) derives
# the block from the weight and scale shapes, which is right only for such sizes.
ALIGNED = dict(
    hidden_size=128,
    intermediate_size=256,
    moe_intermediate_size=64,
    q_lora_rank=96,
    kv_lora_rank=64,
    qk_nope_head_dim=32,
    qk_rope_head_dim=16,
    v_head_dim=32,
    num_attention_heads=2,
    num_nextn_predict_layers=0,
)
# Tiny V3 with ragged edge blocks: 192 = 128 + 64 columns, 320 = 2·128 + 64 rows, as in the
# released V3's kv_a_proj_with_mqa (576 = 4·128 + 64 rows).
RAGGED = dict(
    vocab_size=256,
    hidden_size=192,
    intermediate_size=320,
    moe_intermediate_size=160,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=2,
    n_routed_experts=4,
    num_experts_per_tok=2,
    n_group=2,
    topk_group=1,
    first_k_dense_replace=1,
    n_shared_experts=1,
    q_lora_rank=160,
    kv_lora_rank=144,
    qk_nope_head_dim=32,
    qk_rope_head_dim=16,
    v_head_dim=32,
    max_position_embeddings=256,
    tie_word_embeddings=False,
    num_nextn_predict_layers=0,
)


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids).logits


def _ids() -> torch.Tensor:
    return torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(7))


def _reference_quantise(
    weight: torch.Tensor, block: int = 128
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek's recipe written block by block (independent of deepseek.fp8)."""
    rows, cols = weight.shape
    q = torch.empty(weight.shape, dtype=torch.float8_e4m3fn)
    scale = torch.empty(math.ceil(rows / block), math.ceil(cols / block))
    for i in range(0, rows, block):
        for j in range(0, cols, block):
            tile = weight[i : i + block, j : j + block].float()
            s = tile.abs().max() / 448.0
            scale[i // block, j // block] = s
            q[i : i + block, j : j + block] = (tile / s).to(torch.float8_e4m3fn)
    return q, scale


def _reference_dequantise(q: torch.Tensor, scale: torch.Tensor, block: int = 128) -> torch.Tensor:
    out = q.float()
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            out[i * block : (i + 1) * block, j * block : (j + 1) * block] *= scale[i, j]
    return out


def _officially_quantised(key: str) -> bool:
    return key.endswith("proj.weight") and "eh_proj" not in key


@pytest.fixture(scope="module")
def hf_ragged_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformers DeepseekV3ForCausalLM checkpoint (fp32) with ragged FP8 blocks."""
    torch.manual_seed(11)
    config = transformers.DeepseekV3Config(
        **RAGGED,
        initializer_range=0.08,
        routed_scaling_factor=2.5,
        rope_interleave=True,
        rope_theta=1e4,
    )
    model = transformers.DeepseekV3ForCausalLM(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "e_score_correction_bias"):
                module.e_score_correction_bias.normal_(0.0, 0.2)
    path = tmp_path_factory.mktemp("hf_ragged")
    model.save_pretrained(path)
    return path


def _write_split_fp8(source: Path, dest: Path, shards: int = 3) -> dict[str, torch.Tensor]:
    """Quantises `source` with the reference recipe into `shards` shards where every scale
    sits in the last shard, away from its weight, and experts spread over all shards.
    Returns the reference-dequantised tensors."""
    tensors = load_file(source / "model.safetensors")
    dequantised: dict[str, torch.Tensor] = {}
    parts: list[dict[str, torch.Tensor]] = [{} for _ in range(shards)]
    for n, (key, value) in enumerate(sorted(tensors.items())):
        if _officially_quantised(key):
            q, scale = _reference_quantise(value)
            parts[n % (shards - 1)][key] = q
            parts[-1][key + "_scale_inv"] = scale
            dequantised[key] = _reference_dequantise(q, scale)
        else:
            parts[n % (shards - 1)][key] = value
            dequantised[key] = value
    dest.mkdir()
    weight_map = {}
    for n, part in enumerate(parts):
        name = f"model-{n + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, dest / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    (dest / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = fp8.hub_quantization_config()
    (dest / "config.json").write_text(json.dumps(config))
    return dequantised


@pytest.mark.parametrize(
    ("preset", "overrides", "reference_class"),
    [
        ("v3-tiny", ALIGNED, "DeepseekV3ForCausalLM"),
        # Every size of v32-tiny is within one block; its indexer's wq_b and wk are quantised.
        ("v32-tiny", {"num_nextn_predict_layers": 0}, "DeepseekV32ForCausalLM"),
    ],
)
def test_our_fp8_export_loads_in_transformers(
    preset: str, overrides: dict, reference_class: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = deepseek.DeepseekForCausalLM(deepseek.preset(preset, **overrides))
    with torch.no_grad():
        for layer in model.moe_layers():
            layer.gate.e_score_correction_bias.normal_(0.0, 0.2)
    deepseek.save_pretrained(model, str(tmp_path), fp8=True)
    stored = load_file(tmp_path / "model.safetensors")
    assert stored["model.layers.1.mlp.experts.3.up_proj.weight"].dtype == torch.float8_e4m3fn
    assert stored["model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"].shape == (1, 1)
    if preset == "v3-tiny":
        assert stored["model.layers.0.mlp.down_proj.weight_scale_inv"].shape == (1, 2)
    assert stored["model.layers.1.mlp.gate.weight"].dtype == torch.float32  # the router stays
    assert stored["lm_head.weight"].dtype == torch.float32

    pytest.importorskip("accelerate", reason="transformers loads FP8 checkpoints through it")
    config = transformers.FineGrainedFP8Config(dequantize=True)
    reference = getattr(transformers, reference_class).from_pretrained(
        tmp_path, quantization_config=config, dtype=torch.float32
    )
    ours = deepseek.from_pretrained(str(tmp_path))
    theirs = reference.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs[key]), key
    # Both dequantised the same FP8 bytes into the same fp32 weights, so the logits agree
    # to fp32 rounding, as for unquantised checkpoints.
    ids = _ids()
    logits = _logits(ours, ids)
    assert (logits - _logits(reference, ids)).abs().max().item() <= 1e-4
    # And stay close to the unquantised model: e4m3 keeps 3 mantissa bits (each weight off
    # by at most 1/16 of itself), whose errors mostly cancel over a dot product.
    exact = _logits(model, ids)
    assert 0 < (logits - exact).norm() / exact.norm() < 0.1


def test_ragged_blocks_dequantise_as_transformers_does(tmp_path: Path) -> None:
    """transformers' loader cannot dequantise ragged edge blocks on CPU (Fp8Dequantize takes
    the block to be weight size / scale grid, and fails or misplaces the edge blocks), so this
    compares with the function its FP8 layers use for the same weights."""
    from transformers.integrations.finegrained_fp8 import _dequantize_fp8_weight

    torch.manual_seed(0)
    model = deepseek.DeepseekForCausalLM(deepseek.preset("v3-tiny", **RAGGED))
    deepseek.save_pretrained(model, str(tmp_path), fp8=True)
    stored = load_file(tmp_path / "model.safetensors")
    ours = deepseek.from_pretrained(str(tmp_path))
    loaded = dict(HubLayout(ours.config).hub_items(ours.state_dict()))
    scales = [key for key in stored if key.endswith("_scale_inv")]
    assert "model.layers.0.mlp.down_proj.weight_scale_inv" in scales  # (192, 320): 2 × 3 blocks
    for scale_key in scales:
        key = scale_key.removesuffix("_scale_inv")
        expected = _dequantize_fp8_weight(stored[key], stored[scale_key], [128, 128], torch.float32)
        assert torch.equal(loaded[key], expected), key


def test_independently_quantised_split_checkpoint_loads(
    hf_ragged_dir: Path, tmp_path: Path
) -> None:
    """An FP8 checkpoint quantised by the test's own block loop, not by transformers: its
    FineGrainedFP8 quantiser refuses to run without a GPU ("A GPU or XPU is needed for FP8
    quantization"), so that direction waits for a machine with one."""
    dequantised = _write_split_fp8(hf_ragged_dir, tmp_path / "fp8")
    ours = deepseek.from_pretrained(str(tmp_path / "fp8"))
    loaded = dict(HubLayout(ours.config).hub_items(ours.state_dict()))
    assert loaded.keys() == dequantised.keys()
    for key, value in dequantised.items():
        assert torch.equal(loaded[key], value), key
    # transformers on the reference-dequantised weights gives our logits.
    plain = tmp_path / "plain"
    plain.mkdir()
    save_file(dequantised, plain / "model.safetensors", metadata={"format": "pt"})
    (plain / "config.json").write_text((hf_ragged_dir / "config.json").read_text())
    reference = transformers.DeepseekV3ForCausalLM.from_pretrained(plain, dtype=torch.float32)
    ids = _ids()
    assert (_logits(ours, ids) - _logits(reference, ids)).abs().max().item() <= 1e-4


def test_quantisation_error_is_bounded_per_block() -> None:
    torch.manual_seed(0)
    weight = torch.randn(300, 200)
    weight[256:, 128:] *= 1e-3  # a ragged corner block of tiny values keeps its own scale
    weight[:128, :128] *= 100.0
    q, scale = fp8.quantise(weight)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (3, 2)
    error = (fp8.dequantise(q, scale, fp8.DEFAULT_BLOCK) - weight).abs()
    for i in range(3):
        for j in range(2):
            tile = (slice(i * 128, (i + 1) * 128), slice(j * 128, (j + 1) * 128))
            amax = weight[tile].abs().max()
            assert scale[i, j].item() == pytest.approx(amax.item() / 448, rel=1e-6)
            # Rounding to 3 mantissa bits: half a step, 1/16 of the value; below the normal
            # range (2^-6 · scale) the step is 2^-9 · scale.
            bound = weight[tile].abs() / 16 + scale[i, j] * 2.0**-10
            assert (error[tile] <= bound * (1 + 1e-6)).all(), (i, j)
    assert error[256:, 128:].max() < 1e-3 * error[:128, :128].max()


def test_quantised_names_follow_the_releases() -> None:
    w = torch.zeros(4, 4)
    for key in (
        "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
        "model.layers.3.mlp.experts.17.down_proj.weight",
        "model.layers.3.mlp.shared_experts.gate_proj.weight",
        "model.layers.3.self_attn.indexer.wq_b.weight",
        "model.layers.3.self_attn.indexer.wk.weight",
    ):
        assert fp8.is_quantised(key, w), key
    for key in (
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.layers.3.mlp.gate.weight",
        "model.layers.3.self_attn.indexer.weights_proj.weight",
        "model.layers.61.eh_proj.weight",
        "model.layers.61.shared_head.head.weight",
    ):
        assert not fp8.is_quantised(key, w), key
    assert not fp8.is_quantised("model.layers.0.self_attn.q_a_proj.weight", torch.zeros(4))


def _fp8_checkpoint(path: Path) -> deepseek.DeepseekForCausalLM:
    torch.manual_seed(2)
    model = deepseek.DeepseekForCausalLM(deepseek.preset("v3-tiny", **ALIGNED))
    deepseek.save_pretrained(model, str(path), fp8=True, max_shard_bytes=60_000)
    return model


def _assert_refused(path: Path, *expected: str) -> None:
    model = deepseek.DeepseekForCausalLM(deepseek.preset("v3-tiny", **ALIGNED))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(deepseek.CheckpointError) as err:
        load_checkpoint(model, str(path))
    message = str(err.value)
    assert "\n" not in message
    for text in expected:
        assert text in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _rewrite(path: Path, key: str, value: torch.Tensor | None) -> None:
    index = json.loads((path / INDEX_FILE).read_text())
    shard = path / index["weight_map"][key]
    tensors = load_file(shard)
    if value is None:
        del tensors[key]
        del index["weight_map"][key]
        (path / INDEX_FILE).write_text(json.dumps(index))
    else:
        tensors[key] = value
    save_file(tensors, shard, metadata={"format": "pt"})


def test_truncated_shard_is_refused(tmp_path: Path) -> None:
    _fp8_checkpoint(tmp_path)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    _assert_refused(tmp_path, shard.name, "truncated")


@pytest.mark.parametrize(
    "header",
    [
        {"w": {"dtype": "F32", "shape": [2]}},  # no data_offsets
        {"w": {"dtype": "F32", "shape": "two", "data_offsets": [0, 8]}},
        {"w": ["not", "a", "tensor"]},
    ],
)
def test_hostile_shard_header_is_one_clear_line(tmp_path: Path, header: dict) -> None:
    _fp8_checkpoint(tmp_path)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    raw = json.dumps(header).encode()
    shard.write_bytes(len(raw).to_bytes(8, "little") + raw + bytes(8))
    _assert_refused(tmp_path, shard.name, "malformed safetensors header")


def test_an_oversized_header_claim_is_refused_unread(tmp_path: Path) -> None:
    _fp8_checkpoint(tmp_path)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[0]
    with shard.open("r+b") as f:  # the file stays as long as the header it claims
        f.write((200_000_000).to_bytes(8, "little"))
        f.truncate(200_000_100)
    _assert_refused(tmp_path, shard.name, "header is over safetensors' 100000000")


def test_missing_scale_is_refused(tmp_path: Path) -> None:
    _fp8_checkpoint(tmp_path)
    key = "model.layers.1.mlp.experts.2.gate_proj.weight_scale_inv"
    _rewrite(tmp_path, key, None)
    _assert_refused(tmp_path, "missing keys", key)


def test_wrong_shapes_are_refused(tmp_path: Path) -> None:
    _fp8_checkpoint(tmp_path)
    _rewrite(tmp_path, "model.layers.0.mlp.up_proj.weight_scale_inv", torch.ones(3, 3))
    _rewrite(
        tmp_path,
        "model.layers.0.mlp.down_proj.weight",
        torch.zeros(128, 64).to(torch.float8_e4m3fn),
    )
    _assert_refused(
        tmp_path,
        "wrong shapes",
        "model.layers.0.mlp.up_proj.weight_scale_inv (3, 3) vs (2, 1)",
        "model.layers.0.mlp.down_proj.weight (128, 64)",
    )


def test_fp8_tensors_without_quantization_config_are_refused(tmp_path: Path) -> None:
    _fp8_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["quantization_config"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    _assert_refused(tmp_path, "no quantization_config", "model.layers.0.mlp.up_proj.weight")


def test_unsupported_quantisation_is_refused(tmp_path: Path) -> None:
    _fp8_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    _assert_refused(tmp_path, "quant_method='gptq'")


def test_fp8_checkpoint_on_an_fsspec_url(tmp_path: Path) -> None:
    model = _fp8_checkpoint(tmp_path)
    deepseek.save_pretrained(model, "memory://fp8/ckpt", fp8=True, max_shard_bytes=60_000)
    remote = deepseek.from_pretrained("memory://fp8/ckpt")
    local = deepseek.from_pretrained(str(tmp_path))
    for key, value in local.state_dict().items():
        assert torch.equal(remote.state_dict()[key], value), key
    assert not any(".partial" in name for name in fsspec.filesystem("memory").ls("/fp8/ckpt"))


def test_saving_over_a_sharded_checkpoint_replaces_it(tmp_path: Path) -> None:
    _fp8_checkpoint(tmp_path)
    model = deepseek.DeepseekForCausalLM(deepseek.preset("v3-tiny", **ALIGNED))
    deepseek.save_pretrained(model, str(tmp_path))
    assert not (tmp_path / INDEX_FILE).exists()
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    loaded = deepseek.from_pretrained(str(tmp_path))
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert not list(tmp_path.glob("*.partial"))
