"""DeepSeek-V3.2 sparse attention: transformers parity, config, decoding, indexer training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import deepseek
from deepseek.indexer import Indexer, select_keys

transformers = pytest.importorskip("transformers")

SEQ = 40  # well past index_topk=8, so most queries attend to a strict subset of their keys


def _ids(batch: int, seq: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _tiny_model(seed: int = 0, **overrides) -> deepseek.DeepseekForCausalLM:
    torch.manual_seed(seed)
    model = deepseek.DeepseekForCausalLM(deepseek.preset("v32-tiny", **overrides))
    with torch.no_grad():
        for layer in model.moe_layers():
            layer.gate.e_score_correction_bias.normal_(0.0, 0.2)
    return model.eval()


def test_logits_match_transformers(hf_v32_dir: Path) -> None:
    ids = _ids(2, SEQ, seed=3)
    ours = deepseek.from_pretrained(str(hf_v32_dir))
    assert ours.config.model_type == "deepseek_v32" and ours.config.index_topk == 8
    reference = transformers.DeepseekV32ForCausalLM.from_pretrained(hf_v32_dir).eval()
    with torch.no_grad():
        expected = reference(ids).logits
        logits = ours(ids).logits
        ours.dsa_stage = "dense"
        dense = ours(ids).logits
    assert logits.shape == (2, SEQ, 256)
    assert (logits - expected).abs().max().item() <= 1e-4
    # The selection matters: attending to every causal key gives other logits, from the
    # first position with more than index_topk keys on (and the same ones before it).
    assert (dense - logits)[:, 8:].abs().max().item() > 1e-2
    assert (dense - logits)[:, :8].abs().max().item() <= 1e-5


def test_selection_keeps_topk_causal_keys() -> None:
    scores = torch.randn(2, 12, 12)
    allowed = select_keys(scores, topk=4)
    assert allowed is not None
    counts = allowed.sum(dim=-1)
    assert counts[:, :4].tolist() == [[1, 2, 3, 4]] * 2  # fewer causal keys than k: all
    assert (counts[:, 4:] == 4).all()
    assert not allowed.triu(1).any()  # never a future key
    best = scores.masked_fill(~allowed, float("-inf")).amax(-1)
    causal_best = scores.masked_fill(torch.ones(12, 12).triu(1).bool(), float("-inf")).amax(-1)
    assert torch.equal(best, causal_best)
    assert select_keys(scores, topk=12) is None  # nothing to drop


def test_export_reloads_in_transformers(tmp_path: Path) -> None:
    ours = _tiny_model()
    deepseek.save_pretrained(ours, str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["DeepseekV32ForCausalLM"]
    hf, info = transformers.DeepseekV32ForCausalLM.from_pretrained(
        tmp_path, output_loading_info=True
    )
    assert not info["missing_keys"]
    # Only our MTP layer (hub index num_hidden_layers) is unknown to transformers.
    assert all(key.startswith("model.layers.3.") for key in info["unexpected_keys"])
    assert hf.config.index_topk == 8 and hf.config.mlp_layer_types == ["dense", "sparse", "sparse"]
    ids = _ids(2, SEQ, seed=5)
    with torch.no_grad():
        expected = ours(ids).logits
        assert (hf.eval()(ids).logits - expected).abs().max().item() <= 1e-4


def test_config_round_trip(hf_v32_dir: Path) -> None:
    config = deepseek.preset("v32-tiny")
    assert deepseek.ModelConfig.from_hf_dict(config.to_hf_dict()) == config
    hub = json.loads((hf_v32_dir / "config.json").read_text())
    loaded = deepseek.ModelConfig.from_hf_dict(hub)
    assert (loaded.index_n_heads, loaded.index_head_dim, loaded.index_topk) == (4, 16, 8)
    assert loaded.rope.interleaved and loaded.topk_method == "noaux_tc"
    assert deepseek.ModelConfig.from_hf_dict(loaded.to_hf_dict()) == loaded
    # V3 configs do not grow indexer keys.
    assert "index_topk" not in deepseek.preset("v3-tiny").to_hf_dict()


def test_mlp_layer_types_place_moe_layers() -> None:
    config = deepseek.preset("v32-tiny", mlp_layer_types=["sparse", "dense", "sparse"])
    layers = deepseek.DeepseekForCausalLM(config).model.layers
    kinds = [type(layer.mlp).__name__ for layer in layers]
    assert kinds == ["MoE", "MLP", "MoE"]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"index_topk": 0}, "index_topk"),
        ({"index_head_dim": 4}, "index_head_dim"),
        ({"q_lora_rank": None}, "q_lora_rank"),
        ({"mlp_layer_types": ["dense", "sparse"]}, "mlp_layer_types"),
        ({"mlp_layer_types": ["dense", "moe", "sparse"]}, "mlp_layer_types"),
    ],
)
def test_bad_config_is_one_line(overrides: dict, field: str) -> None:
    with pytest.raises(deepseek.ConfigError) as err:
        deepseek.preset("v32-tiny", **overrides)
    message = str(err.value)
    assert message.startswith(f"{field}=") and "\n" not in message


def test_dsa_stage_is_checked() -> None:
    model = _tiny_model()
    assert model.dsa_stage == "sparse"
    with pytest.raises(deepseek.ConfigError, match="dsa_stage='warm'"):
        model.dsa_stage = "warm"
    with pytest.raises(deepseek.ConfigError, match="no sparse attention"):
        deepseek.DeepseekForCausalLM(deepseek.preset("v3-tiny")).dsa_stage = "dense"


@pytest.mark.parametrize("fused", [True, False])
def test_cached_decoding_equals_recomputation(fused: bool) -> None:
    model = _tiny_model(seed=1)
    for layer in model.model.layers:
        layer.self_attn.fuse_absorbed = fused
    ids = _ids(2, 24, seed=7)
    cache = model.new_cache(24)
    with torch.no_grad():
        full = model(ids).logits
        # A 12-token prefill already selects (8 of up to 12 keys), then one token a step.
        steps = [model(ids[:, :12], cache=cache).logits]
        steps += [model(ids[:, i : i + 1], cache=cache).logits for i in range(12, 24)]
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= 1e-4
    # Each layer cached its indexer keys beside the latent rows, for all 24 positions.
    assert [b.shape[1:] for b in cache.layers[0].buffers] == [(24, 16 + 8), (24, 16)]
    assert cache.length == 24


def test_greedy_generation_equals_recomputed_argmax() -> None:
    model = _tiny_model(seed=2)
    prompt = _ids(2, 6, seed=8)
    out = model.generate(prompt, max_new_tokens=14, temperature=0.0)
    chain = prompt
    with torch.no_grad():
        for _ in range(14):
            step = model(chain).logits[:, -1].argmax(dim=-1, keepdim=True)
            chain = torch.cat((chain, step), dim=1)
    assert torch.equal(out, chain)


def test_greedy_generation_matches_transformers(hf_v32_dir: Path) -> None:
    # 6 + 20 tokens: the later decoding steps select 8 of up to 25 cached positions.
    prompt = _ids(2, 6, seed=8)
    ours = deepseek.from_pretrained(str(hf_v32_dir)).generate(prompt, 20, temperature=0.0)
    reference = transformers.DeepseekV32ForCausalLM.from_pretrained(hf_v32_dir).eval()
    expected = reference.generate(
        prompt, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    assert torch.equal(ours, expected)


def _indexer_params(model: torch.nn.Module) -> set[str]:
    return {
        f"{name}.{p}"
        for name, module in model.named_modules()
        if isinstance(module, Indexer)
        for p, _ in module.named_parameters()
    }


@pytest.mark.parametrize("stage", ["sparse", "dense"])
def test_indexer_loss_trains_only_the_indexer(stage: str) -> None:
    model = _tiny_model(seed=3).train()
    model.dsa_stage = stage
    ids = _ids(2, 32, seed=9)
    out = model(ids, labels=ids)
    assert out.indexer_loss is not None and out.indexer_loss.item() > 0
    assert out.loss is not None and out.ce_loss is not None
    expected = out.ce_loss + out.mtp_loss + out.aux_loss + out.indexer_loss
    assert torch.allclose(out.loss, expected)
    indexer = _indexer_params(model)
    # The MTP layers' indexers train too (else DDP would find parameters without gradients).
    assert {n.split(".")[0] for n in indexer} == {"model", "mtp"}

    out.indexer_loss.backward(retain_graph=True)
    for name, p in model.named_parameters():
        if name in indexer:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None or not p.grad.any(), name
    model.zero_grad(set_to_none=True)
    (out.loss - out.indexer_loss).backward()  # the language-model losses
    for name, p in model.named_parameters():
        if name in indexer:
            assert p.grad is None or not p.grad.any(), name


@pytest.mark.parametrize("stage", ["sparse", "dense"])
def test_training_steps_lower_both_losses(stage: str, hf_v32_dir: Path) -> None:
    # transformers' init (std 0.08) gives attention peaked enough for a KL worth learning;
    # at our std 0.02 it is nearly uniform and so is the untrained indexer.
    model = deepseek.from_pretrained(str(hf_v32_dir)).train()
    model.dsa_stage = stage
    ids = _ids(2, 32, seed=10)
    indexer = _indexer_params(model)
    params = dict(model.named_parameters())
    main = [p for n, p in params.items() if n not in indexer]
    # The indexer chases a target that moves as the model trains: give it the faster rate.
    groups = [{"params": main}, {"params": [params[n] for n in indexer], "lr": 1e-2}]
    optimizer = torch.optim.AdamW(groups, lr=3e-3)
    losses, indexer_losses = [], []
    for _ in range(6):
        out = model(ids, labels=ids)
        optimizer.zero_grad()
        out.loss.backward()
        assert all(p.grad is None or p.grad.isfinite().all() for p in model.parameters())
        optimizer.step()
        losses.append(out.ce_loss.item())
        indexer_losses.append(out.indexer_loss.item())
    assert losses[-1] < 0.75 * losses[0]
    assert indexer_losses[-1] < 0.75 * indexer_losses[0]
