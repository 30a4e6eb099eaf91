"""Fixtures for the deepseek tests: tiny random transformers reference models on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

# Tiny shape shared by the V2 and V3 references (see shared/reference/models.md §2).
TINY: dict[str, Any] = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    moe_intermediate_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    n_routed_experts=8,
    num_experts_per_tok=2,
    n_group=4,
    topk_group=2,
    first_k_dense_replace=1,
    kv_lora_rank=16,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    max_position_embeddings=256,
    tie_word_embeddings=False,
    initializer_range=0.08,
)


# V3 and V3.2: YaRN with mscale ≠ mscale_all_dim (the softmax scale then differs from 1/√d).
YARN = {
    "rope_type": "yarn",
    "rope_theta": 1e4,
    "factor": 8.0,
    "original_max_position_embeddings": 32,
    "beta_fast": 32,
    "beta_slow": 1,
    "mscale": 1.0,
    "mscale_all_dim": 0.8,
}
# The V3-shaped fields V3 and V3.2 share beyond TINY.
V3_SHAPE: dict[str, Any] = dict(
    n_shared_experts=1, routed_scaling_factor=2.5, norm_topk_prob=True, q_lora_rank=32
)


def _randomise_routing_bias(model: Any) -> None:
    """Non-zero e_score_correction_bias, so that loading it wrongly changes the routing."""
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "e_score_correction_bias"):
                module.e_score_correction_bias.normal_(0.0, 0.2)


def _save(model: Any, path: Path) -> Path:
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def hf_v3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformers DeepseekV3ForCausalLM checkpoint: YaRN with mscale ≠ mscale_all_dim,
    a non-zero correction bias, q_lora."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.DeepseekV3Config(
        **TINY,
        **V3_SHAPE,
        rope_interleave=True,
        num_nextn_predict_layers=0,
        rope_parameters=YARN,
    )
    model = transformers.DeepseekV3ForCausalLM(config).eval()
    _randomise_routing_bias(model)
    return _save(model, tmp_path_factory.mktemp("hf_v3"))


@pytest.fixture(scope="session")
def hf_v2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformers DeepseekV2ForCausalLM checkpoint: group-limited greedy, hub-style YaRN
    (mscale = mscale_all_dim = 0.707), full-rank queries."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    config = transformers.DeepseekV2Config(
        **TINY,
        n_shared_experts=2,
        routed_scaling_factor=1.0,
        q_lora_rank=None,
        topk_method="group_limited_greedy",
        rope_theta=1e4,
        rope_scaling={
            "type": "yarn",
            "factor": 8.0,
            "original_max_position_embeddings": 32,
            "beta_fast": 32,
            "beta_slow": 1,
            "mscale": 0.707,
            "mscale_all_dim": 0.707,
        },
    )
    model = transformers.DeepseekV2ForCausalLM(config).eval()
    return _save(model, tmp_path_factory.mktemp("hf_v2"))


@pytest.fixture(scope="session")
def hf_v32_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A transformers DeepseekV32ForCausalLM checkpoint: V3's shape plus a lightning indexer
    keeping 8 keys per query (so 40-token inputs really drop keys), a non-identity indexer
    key LayerNorm and a non-zero correction bias."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(2)
    config = transformers.DeepseekV32Config(
        **TINY,
        **V3_SHAPE,
        index_n_heads=4,
        index_head_dim=16,
        index_topk=8,
        rope_parameters=YARN,
    )
    model = transformers.DeepseekV32ForCausalLM(config).eval()
    _randomise_routing_bias(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):  # the indexer's key norm
                module.weight.normal_(1.0, 0.2)
                module.bias.normal_(0.0, 0.2)
    return _save(model, tmp_path_factory.mktemp("hf_v32"))
