"""DeepSeek-V4 model against transformers' DeepseekV4ForCausalLM: logits, both key layouts,
cached generation, training, config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import deepseek
from deepseek.errors import CheckpointError, ConfigError
from deepseek.hf import load_checkpoint, save_checkpoint
from deepseek.v4.config import CSA, HCA, SLIDING, V4Config
from deepseek.v4.layout import ReleaseLayout, TransformersLayout
from deepseek.v4.model import DeepseekV4ForCausalLM

transformers = pytest.importorskip("transformers")

# Long enough for several compressed entries per layer (rates 4 and 8), more CSA entries
# than index_topk=3, and more tokens than the sliding window of 8.
SEQ = 40
TOL = 1e-4


def _config() -> V4Config:
    return V4Config.tiny(initializer_range=0.2)


def _hf_config(config: V4Config) -> object:
    hf = config.to_hf_dict()
    for key in ("architectures", "model_type"):
        hf.pop(key)
    return transformers.DeepseekV4Config(**hf)


def _hub_keys(folder: Path) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return set(f.keys())


@pytest.fixture(scope="module")
def hf_v4_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformers V4 checkpoint whose zero-initialised tensors (hyper-connection biases,
    sinks, position biases, routing bias) are random too, and with a real hash table."""
    torch.manual_seed(0)
    config = _config()
    model = transformers.DeepseekV4ForCausalLM(_hf_config(config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] in ("base", "hc_base", "sinks", "position_bias"):
                p.normal_(0.0, 0.3)
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.normal_(0.0, 0.3)
            elif name.endswith("tid2eid"):
                experts = config.n_routed_experts
                table = torch.rand(config.vocab_size, experts).argsort(dim=-1)
                buffer.copy_(table[:, : config.num_experts_per_tok])
    path = tmp_path_factory.mktemp("hf_v4")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ours(hf_v4_dir: Path) -> DeepseekV4ForCausalLM:
    config = _config()
    model = DeepseekV4ForCausalLM(config).eval()
    load_checkpoint(model, str(hf_v4_dir), TransformersLayout(config))
    return model


def _ids(batch: int = 2, seq: int = SEQ, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 128, (batch, seq), generator=generator)


def _reference_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    model, info = transformers.DeepseekV4ForCausalLM.from_pretrained(
        folder, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        return model.eval()(ids).logits


def test_logits_match_transformers(hf_v4_dir: Path, ours: DeepseekV4ForCausalLM) -> None:
    ids = _ids()
    with torch.no_grad():
        logits = ours(ids).logits
    expected = _reference_logits(hf_v4_dir, ids)
    assert (logits - expected).abs().max().item() < TOL
    with torch.no_grad():
        last = ours(ids, logits_to_keep=3).logits
    torch.testing.assert_close(last, logits[:, -3:], rtol=0, atol=1e-6)


def test_transformers_layout_round_trip(
    hf_v4_dir: Path, ours: DeepseekV4ForCausalLM, tmp_path: Path
) -> None:
    save_checkpoint(ours, str(tmp_path), TransformersLayout(ours.config))
    assert _hub_keys(tmp_path) == _hub_keys(hf_v4_dir)
    ids = _ids(seed=2)
    with torch.no_grad():
        logits = ours(ids).logits
    assert (_reference_logits(tmp_path, ids) - logits).abs().max().item() < TOL


def test_release_layout_names_and_round_trip(ours: DeepseekV4ForCausalLM, tmp_path: Path) -> None:
    config = ours.config
    save_checkpoint(ours, str(tmp_path), ReleaseLayout(config))
    keys = _hub_keys(tmp_path)
    expected_names = {
        "embed.weight",
        "head.weight",
        "norm.weight",
        "hc_head_fn",
        "layers.0.attn.wq_a.weight",
        "layers.0.attn.attn_sink",
        "layers.0.hc_attn_fn",
        "layers.0.hc_ffn_scale",
        "layers.0.ffn.gate.tid2eid",
        "layers.1.ffn.gate.bias",
        "layers.1.attn.compressor.ape",
        "layers.1.attn.indexer.compressor.wkv.weight",
        "layers.1.attn.indexer.weights_proj.weight",
        "layers.3.ffn.experts.3.w1.weight",
        "layers.3.ffn.experts.3.w2.weight",
        "layers.3.ffn.shared_experts.w3.weight",
    }
    assert expected_names <= keys
    assert not any(k.startswith("model.") or ".self_attn." in k or ".mlp." in k for k in keys)
    fresh = DeepseekV4ForCausalLM(config).eval()
    load_checkpoint(fresh, str(tmp_path), ReleaseLayout(config))
    ids = _ids(seed=3)
    with torch.no_grad():
        logits = ours(ids).logits
        torch.testing.assert_close(fresh(ids).logits, logits, rtol=0, atol=0)
    # transformers' conversion mapping reads the release names from disk too.
    assert (_reference_logits(tmp_path, ids) - logits).abs().max().item() < TOL


def test_from_pretrained_reads_either_layout_and_save_pretrained_writes_transformers(
    hf_v4_dir: Path, ours: DeepseekV4ForCausalLM, tmp_path: Path
) -> None:
    """`deepseek.from_pretrained` picks V4 by model_type and the layout by the keys."""
    release, saved = tmp_path / "release", tmp_path / "saved"
    save_checkpoint(ours, str(release), ReleaseLayout(ours.config))
    ids = _ids(seed=4)
    with torch.no_grad():
        expected = ours(ids).logits
        for folder in (hf_v4_dir, release):
            model = deepseek.from_pretrained(str(folder))
            assert isinstance(model, DeepseekV4ForCausalLM)
            torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=0)
    deepseek.save_pretrained(model, str(saved))
    assert _hub_keys(saved) == _hub_keys(hf_v4_dir)
    with pytest.raises(CheckpointError, match="fp8=True"):
        deepseek.save_pretrained(model, str(tmp_path / "fp8"), fp8=True)


def test_release_layout_skips_mtp_layers() -> None:
    layout = ReleaseLayout(_config())
    assert layout.slot("mtp.0.attn.wq_a.weight") is None
    assert layout.slot("layers.2.ffn.experts.1.w3.weight") is not None


def _stepwise_logits(forward, ids: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits of ids from a prefill of `prefill` tokens, then one token per call."""
    chunks = [ids[:, :prefill]] + list(ids[:, prefill:].split(1, dim=1))
    with torch.no_grad():
        return torch.cat([forward(chunk) for chunk in chunks], dim=1)


def test_cached_generation_equals_full_recomputation() -> None:
    # index_topk above the number of compressed entries: see the next test for why.
    torch.manual_seed(0)
    model = DeepseekV4ForCausalLM(V4Config.tiny(initializer_range=0.2, index_topk=64)).eval()
    prompt = _ids(batch=2, seq=13, seed=4)
    out = model.generate(prompt, max_new_tokens=SEQ - 13, temperature=0)
    with torch.no_grad():
        full = model(out).logits
    # Greedy: each generated token is the argmax of the full forward at the step before.
    assert torch.equal(full[:, 12:-1].argmax(dim=-1), out[:, 13:])
    cache = model.new_cache(SEQ)
    steps = _stepwise_logits(lambda x: model(x, cache=cache).logits, out, 13)
    assert cache.length == SEQ
    assert (steps - full).abs().max().item() < TOL


def test_cached_steps_match_transformers_cached_steps(
    hf_v4_dir: Path, ours: DeepseekV4ForCausalLM
) -> None:
    """With fewer top-k slots than compressed entries, transformers' own cached decoding
    differs from its full forward (its prefill indexer picks differently); ours follows it
    on both paths."""
    ids = _ids(seed=4)
    reference = transformers.DeepseekV4ForCausalLM.from_pretrained(hf_v4_dir).eval()
    ref_cache = transformers.DynamicCache(config=reference.config)
    expected = _stepwise_logits(
        lambda x: reference(x, cache=ref_cache, use_cache=True).logits, ids, 5
    )
    cache = ours.new_cache(SEQ)
    steps = _stepwise_logits(lambda x: ours(x, cache=cache).logits, ids, 5)
    assert (steps - expected).abs().max().item() < TOL


def test_training_steps_lower_the_loss() -> None:
    torch.manual_seed(0)
    model = DeepseekV4ForCausalLM(V4Config.tiny(aux_loss_alpha=1e-3)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = _ids(batch=2, seq=24, seed=5)
    labels = torch.cat((ids[:, 1:], torch.full_like(ids[:, :1], -100)), dim=1)
    bias = model.model.layers[1].mlp.gate.e_score_correction_bias.clone()
    losses = []
    for _ in range(6):
        out = model(ids, labels=labels)
        assert out.aux_loss is not None and out.loss is not None
        optimizer.zero_grad()
        out.loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        optimizer.step()
        loads = model.update_expert_bias()
        assert loads is not None and loads.shape == (4, 4)
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]
    assert not torch.equal(model.model.layers[1].mlp.gate.e_score_correction_bias, bias)
    assert model.model.layers[0].mlp.gate.e_score_correction_bias is None  # hash layer


def test_config_round_trip_with_transformers() -> None:
    config = V4Config.tiny(
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    )
    assert V4Config.from_hf_dict(config.to_hf_dict()) == config
    hf = _hf_config(config)
    again = V4Config.from_hf_dict({**hf.to_dict(), "bias_update_rate": config.bias_update_rate})
    assert again == config


def test_config_folds_legacy_keys() -> None:
    config = V4Config.from_hf_dict(
        {
            "num_hidden_layers": 3,
            "compress_ratios": [0, 4, 128],
            "compress_rate_hca": 64,
            "num_hash_layers": 1,
            "qk_rope_head_dim": 64,
            "head_dim": 256,
        }
    )
    assert config.layer_types == [SLIDING, CSA, HCA]
    assert config.compress_rates == {CSA: 4, HCA: 64}
    assert config.mlp_layer_types == ["hash_moe", "moe", "moe"]
    assert config.qk_rope_head_dim == 64


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"scoring_func": "relu"}, "scoring_func"),
        ({"layer_types": [SLIDING] * 3}, "layer_types"),
        ({"mlp_layer_types": ["moe", "dense", "moe", "moe"]}, "mlp_layer_types"),
        ({"num_experts_per_tok": 9}, "num_experts_per_tok"),
        ({"o_groups": 3}, "o_groups"),
    ],
)
def test_bad_config_is_one_line(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        V4Config.tiny(**overrides)
    message = str(err.value)
    assert message.startswith(field) and "\n" not in message


def test_stray_release_keys_are_named_not_a_traceback(
    ours: DeepseekV4ForCausalLM, tmp_path: Path
) -> None:
    save_checkpoint(ours, str(tmp_path), ReleaseLayout(ours.config))
    tensors = load_file(tmp_path / "model.safetensors")
    tensors.update({"layers.5": torch.zeros(1), "layers.x.attn.wq_a.weight": torch.zeros(1)})
    save_file(tensors, tmp_path / "model.safetensors")
    fresh = DeepseekV4ForCausalLM(ours.config)
    with pytest.raises(CheckpointError, match=r"unexpected keys \[layers.5, layers.x.attn"):
        load_checkpoint(fresh, str(tmp_path), ReleaseLayout(ours.config))
