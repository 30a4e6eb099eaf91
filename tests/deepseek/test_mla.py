"""MLA: the absorbed path equals the naive one; the cache holds only the latent."""

from __future__ import annotations

import pytest
import torch

import deepseek
from deepseek.mla import MLA
from deepseek.rope import Rotary


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("name", ["v3-tiny", "v2-lite-tiny"])
def test_absorbed_equals_naive(name: str, fused: bool) -> None:
    torch.manual_seed(0)
    config = deepseek.preset(name)
    model = deepseek.DeepseekForCausalLM(config)
    attn: MLA = model.model.layers[0].self_attn
    assert attn.fuse_absorbed  # the tiny presets' latent is no wider than a head
    attn.fuse_absorbed = fused
    rotary = Rotary(config.rope, config.rope_dim)
    x = torch.randn(2, 12, config.hidden_size)
    rope = rotary(torch.arange(12))
    with torch.no_grad():
        naive = attn(x, rope, absorb=False)
        absorbed = attn(x, rope, absorb=True)
    assert naive.abs().max() > 1e-3
    assert (naive - absorbed).abs().max().item() <= 1e-5


def test_cache_holds_compressed_latent() -> None:
    config = deepseek.preset("v3-tiny")
    model = deepseek.DeepseekForCausalLM(config).eval()
    cache = model.new_cache(10)
    with torch.no_grad():
        model(torch.randint(0, 256, (1, 10)), cache=cache)
    per_token = (config.kv_lora_rank + config.qk_rope_head_dim) * 4  # fp32 bytes
    assert cache.nbytes() == config.num_hidden_layers * 10 * per_token
    full_kv = 2 * config.num_attention_heads * (config.qk_nope_head_dim + config.v_head_dim)
    assert per_token < full_kv * 4


def test_products_are_used_only_where_they_are_smaller() -> None:
    # V3-small's latent (128) is wider than its heads (64): products would be 43% larger.
    attn = deepseek.DeepseekForCausalLM(deepseek.preset("v3-small")).model.layers[0].self_attn
    assert not attn.fuse_absorbed


def test_weight_products_follow_weight_updates() -> None:
    torch.manual_seed(0)
    model = deepseek.DeepseekForCausalLM(deepseek.preset("v3-tiny", num_hidden_layers=1)).eval()
    attn: MLA = model.model.layers[0].self_attn
    rope = Rotary(model.config.rope, model.config.rope_dim)(torch.arange(6))
    x = torch.randn(1, 6, model.config.hidden_size)
    with torch.no_grad():
        attn(x, rope, absorb=True)  # computes and caches the products
        for weight in (attn.q_b_proj.weight, attn.kv_b_proj.weight, attn.o_proj.weight):
            weight.mul_(1.5)  # an optimiser step: same tensor, new version
            absorbed = attn(x, rope, absorb=True)
            assert (absorbed - attn(x, rope, absorb=False)).abs().max().item() <= 1e-5
        model.load_state_dict(  # new values copied in, as loading a checkpoint does
            {k: v * 0.5 for k, v in model.state_dict().items()}
        )
        assert (attn(x, rope, absorb=True) - attn(x, rope, absorb=False)).abs().max() <= 1e-5


def test_absorbed_with_gradients_trains_the_factors() -> None:
    torch.manual_seed(0)
    model = deepseek.DeepseekForCausalLM(deepseek.preset("v3-tiny", num_hidden_layers=1))
    attn: MLA = model.model.layers[0].self_attn
    rope = Rotary(model.config.rope, model.config.rope_dim)(torch.arange(5))
    attn(torch.randn(1, 5, model.config.hidden_size), rope, absorb=True).sum().backward()
    assert attn.kv_b_proj.weight.grad is not None and attn.kv_b_proj.weight.grad.abs().sum() > 0


def test_rotary_table_equals_direct_computation() -> None:
    config = deepseek.preset("v3-tiny")
    rotary = Rotary(config.rope, config.rope_dim)
    assert torch.equal(rotary.table(3, 20), rotary(torch.arange(3, 20)))
    assert torch.equal(rotary.table(100, 200), rotary(torch.arange(100, 200)))  # grown
