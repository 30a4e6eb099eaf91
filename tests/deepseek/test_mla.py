"""MLA: the absorbed path equals the naive one; the cache holds only the latent."""

from __future__ import annotations

import pytest
import torch

import deepseek
from deepseek.mla import MLA
from deepseek.rope import Rotary


@pytest.mark.parametrize("name", ["v3-tiny", "v2-lite-tiny"])
def test_absorbed_equals_naive(name: str) -> None:
    torch.manual_seed(0)
    config = deepseek.preset(name)
    model = deepseek.DeepseekForCausalLM(config)
    attn: MLA = model.model.layers[0].self_attn
    rotary = Rotary(config.rope, config.rope_dim)
    x = torch.randn(2, 12, config.hidden_size)
    cos, sin = rotary(torch.arange(12))
    with torch.no_grad():
        naive = attn(x, cos, sin, absorb=False)
        absorbed = attn(x, cos, sin, absorb=True)
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
