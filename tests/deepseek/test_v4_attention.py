"""V4Attention against transformers' DeepseekV4Attention with the same weights, for each
layer type (sliding, CSA, HCA), and cached decoding against a whole-sequence forward."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from deepseek.v4.attention import V4Attention
from deepseek.v4.cache import V4Cache
from deepseek.v4.config import CSA, HCA, SLIDING, V4Config

transformers = pytest.importorskip("transformers")
modeling = pytest.importorskip("transformers.models.deepseek_v4.modeling_deepseek_v4")
masking = pytest.importorskip("transformers.masking_utils")

LAYER_TYPES = [SLIDING, CSA, HCA]
# 29 tokens: 7 CSA entries (index_topk 3 picks among them) and 3 HCA entries, with a
# partial trailing window for both rates, and more tokens than the sliding window.
SEQ = 29
HF_CONFIG: dict[str, Any] = dict(
    vocab_size=64,
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    head_dim=32,
    q_lora_rank=32,
    partial_rotary_factor=0.25,
    sliding_window=6,
    o_groups=2,
    o_lora_rank=16,
    # 8 index heads: a query-entry score is exactly 0 (a top-k tie) only if all 8 ReLUs are.
    index_n_heads=8,
    index_head_dim=16,
    index_topk=3,
    layer_types=LAYER_TYPES,
    compress_rates={CSA: 4, HCA: 8},
    max_position_embeddings=64,
    rope_parameters={
        "rope_type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 16,
        "beta_fast": 32,
        "beta_slow": 1,
    },
    mlp_layer_types=["moe"] * 3,
    n_routed_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=16,
)


@pytest.fixture(scope="module")
def hf_config() -> Any:
    config = transformers.DeepseekV4Config(**HF_CONFIG)
    config._attn_implementation = "eager"
    return config


@pytest.fixture(scope="module")
def config(hf_config: Any) -> V4Config:
    return V4Config.from_hf_dict(hf_config.to_dict())


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(2, SEQ, HF_CONFIG["hidden_size"], generator=torch.Generator().manual_seed(7))


def reference_attention(hf_config: Any, layer_idx: int) -> Any:
    """transformers' attention layer with random weights everywhere (sinks, position biases
    and norm weights too, which its own init leaves empty or at 0/1)."""
    torch.manual_seed(layer_idx)
    ref = modeling.DeepseekV4Attention(hf_config, layer_idx).eval()
    with torch.no_grad():
        for name, param in ref.named_parameters():
            if "sinks" in name or "position_bias" in name:
                param.normal_(0.0, 1.0)
            elif "norm" in name:
                param.normal_(1.0, 0.2)
    return ref


def reference_output(ref: Any, hf_config: Any, x: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(x.shape[1])[None]
    rotary = modeling.DeepseekV4RotaryEmbedding(hf_config)
    position_embeddings = {
        kind: rotary(x, positions, layer_type=kind) for kind in ("main", "compress")
    }
    mask = masking.create_sliding_window_causal_mask(
        config=hf_config, inputs_embeds=x, attention_mask=None, cache=None, position_ids=positions
    )
    with torch.no_grad():
        return ref(x, position_embeddings, positions, mask)[0]


def ours_like(ref: Any, config: V4Config, layer_idx: int) -> V4Attention:
    ours = V4Attention(config, layer_idx).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # transformers' names, one to one
    return ours


@pytest.mark.parametrize("layer_idx", range(3), ids=LAYER_TYPES)
def test_matches_transformers(
    hf_config: Any, config: V4Config, x: torch.Tensor, layer_idx: int
) -> None:
    ref = reference_attention(hf_config, layer_idx)
    ours = ours_like(ref, config, layer_idx)
    want = reference_output(ref, hf_config, x)
    with torch.no_grad():
        got = ours(x, 0, None)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("layer_idx", range(3), ids=LAYER_TYPES)
def test_cached_decoding_equals_full_forward(
    hf_config: Any, config: V4Config, x: torch.Tensor, layer_idx: int
) -> None:
    ours = ours_like(reference_attention(hf_config, layer_idx), config, layer_idx)
    cache = V4Cache(config, capacity=SEQ)
    # A prefill ending mid-window, a chunk closing windows, then single tokens.
    steps = [11, 5] + [1] * (SEQ - 16)
    pieces = []
    with torch.no_grad():
        full = ours(x, 0, None)
        for n in steps:
            pieces.append(
                ours(x[:, cache.length : cache.length + n], cache.length, cache.layers[layer_idx])
            )
            cache.advance(n)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=0)
    # The raw keys kept are only those a later query's window can still reach.
    assert cache.layers[layer_idx].window.shape[1] == config.sliding_window - 1


@pytest.mark.parametrize("layer_idx", range(3), ids=LAYER_TYPES)
def test_gradients_reach_attention_and_compressor(
    config: V4Config, x: torch.Tensor, layer_idx: int
) -> None:
    ours = V4Attention(config, layer_idx)
    ours(x, 0, None).square().mean().backward()
    for name in ("q_a_proj.weight", "kv_proj.weight", "o_a_proj.weight", "sinks"):
        assert ours.get_parameter(name).grad.abs().sum() > 0, name
    if ours.compressor is not None:
        for name in ("kv_proj.weight", "gate_proj.weight"):
            assert ours.compressor.get_parameter(name).grad.abs().sum() > 0, name


def test_cache_refuses_positions_beyond_capacity(config: V4Config, x: torch.Tensor) -> None:
    ours = V4Attention(config, 1)
    cache = V4Cache(config, capacity=8)
    with pytest.raises(ValueError, match="capacity 8"):
        ours(x[:, :9], 0, cache.layers[1])
    with pytest.raises(ValueError, match="capacity 8"):
        cache.advance(9)


def test_start_must_follow_the_cache(config: V4Config, x: torch.Tensor) -> None:
    ours = V4Attention(config, 0)
    with pytest.raises(ValueError, match="needs a cache"):
        ours(x, 3, None)
    layer_cache = V4Cache(config, capacity=SEQ).layers[0]
    ours(x[:, :4], 0, layer_cache)
    with pytest.raises(ValueError, match="holds 4 positions"):
        ours(x[:, 4:5], 5, layer_cache)


@pytest.mark.parametrize("layer_idx", range(3), ids=LAYER_TYPES)
def test_indexer_loss_trains_only_the_indexer(
    config: V4Config, x: torch.Tensor, layer_idx: int
) -> None:
    ours = V4Attention(config, layer_idx)
    losses: list[torch.Tensor] = []
    ours(x, 0, None, indexer_losses=losses)
    if ours.layer_type != CSA:
        assert losses == []
        return
    (loss,) = losses
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    indexer = ours.compressor.indexer
    for name in (
        "q_b_proj.weight",
        "kv_proj.weight",
        "gate_proj.weight",
        "scorer.weights_proj.weight",
    ):
        assert indexer.get_parameter(name).grad.abs().sum() > 0, name
    others = [p for n, p in ours.named_parameters() if ".indexer." not in n]
    assert all(p.grad is None for p in others)
    # Before the first complete window no query reads an entry: nothing to imitate.
    ours(x[:, :3], 0, None, indexer_losses=losses)
    assert len(losses) == 1
