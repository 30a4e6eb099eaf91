"""Configs from HF config.json in every generation and rope form; bad configs rejected."""

from __future__ import annotations

import dataclasses
import math

import pytest

import deepseek
from deepseek.config import PRESETS, ModelConfig, RopeConfig

V3_HUB = {
    "model_type": "deepseek_v3",
    "vocab_size": 129280,
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 61,
    "num_nextn_predict_layers": 1,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "n_shared_experts": 1,
    "n_routed_experts": 256,
    "routed_scaling_factor": 2.5,
    "kv_lora_rank": 512,
    "q_lora_rank": 1536,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "qk_nope_head_dim": 128,
    "topk_method": "noaux_tc",
    "n_group": 8,
    "topk_group": 4,
    "num_experts_per_tok": 8,
    "moe_layer_freq": 1,
    "first_k_dense_replace": 3,
    "norm_topk_prob": True,
    "scoring_func": "sigmoid",
    "max_position_embeddings": 163840,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000,
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 40,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
}


def test_v3_hub_config() -> None:
    config = ModelConfig.from_hf_dict(V3_HUB)
    assert config.is_mla and config.is_moe and config.num_nextn_predict_layers == 1
    assert config.rope.type == "yarn" and config.rope.factor == 40 and config.rope.interleaved
    assert not config.is_moe_layer(2) and config.is_moe_layer(3)
    # softmax scale × (0.1·1.0·ln 40 + 1)², cos/sin unscaled when mscale = mscale_all_dim
    assert config.rope.softmax_scale_factor == pytest.approx((0.1 * math.log(40) + 1) ** 2)
    assert config.rope.attention_factor == pytest.approx(1.0)


def test_both_rope_forms_agree() -> None:
    hub = ModelConfig.from_hf_dict(V3_HUB)
    scaling = dict(V3_HUB["rope_scaling"])
    scaling["rope_type"] = scaling.pop("type")
    tf5 = {k: v for k, v in V3_HUB.items() if k not in ("rope_theta", "rope_scaling")}
    tf5["rope_parameters"] = {**scaling, "rope_theta": 10000}
    assert ModelConfig.from_hf_dict(tf5) == hub


def test_v2_lite_v1_and_llm_configs() -> None:
    lite = ModelConfig.from_hf_dict(
        {
            **V3_HUB,
            "model_type": "deepseek_v2",
            "q_lora_rank": None,
            "topk_method": "greedy",
            "scoring_func": "softmax",
            "n_group": 1,
            "topk_group": 1,
            "norm_topk_prob": False,
        }
    )
    assert lite.q_lora_rank is None and lite.scoring_func == "softmax"
    v1 = ModelConfig.from_hf_dict(
        {
            "model_type": "deepseek",
            "vocab_size": 102400,
            "hidden_size": 2048,
            "intermediate_size": 10944,
            "moe_intermediate_size": 1408,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
            "n_routed_experts": 64,
            "n_shared_experts": 2,
            "num_experts_per_tok": 6,
            "first_k_dense_replace": 1,
            "scoring_func": "softmax",
            "norm_topk_prob": False,
            "rope_theta": 10000,
            "rope_scaling": None,
            "max_position_embeddings": 4096,
        }
    )
    assert not v1.is_mla and v1.is_moe and v1.head_dim == 128 and not v1.rope.interleaved
    assert v1.topk_method == "greedy"
    llm = ModelConfig.from_hf_dict(
        {
            "model_type": "llama",
            "vocab_size": 102400,
            "hidden_size": 4096,
            "intermediate_size": 11008,
            "num_hidden_layers": 30,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "max_position_embeddings": 4096,
        }
    )
    assert not llm.is_moe and not llm.is_mla and llm.rope.type == "default"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_roundtrip_through_hf_json(name: str) -> None:
    config = deepseek.preset(name)  # a V4Config for v4-tiny
    assert type(config).from_hf_dict(config.to_hf_dict()) == config


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (dict(num_attention_heads=5, kv_lora_rank=None), "num_attention_heads=5"),
        (dict(num_experts_per_tok=9), "num_experts_per_tok=9"),
        (dict(n_group=3), "n_group=3"),
        (dict(topk_group=5), "topk_group=5"),
        (dict(scoring_func="relu"), "scoring_func='relu'"),
        (dict(qk_rope_head_dim=7), "qk_rope_head_dim=7"),
    ],
)
def test_inconsistent_config_names_the_field(change: dict, field: str) -> None:
    base = dataclasses.asdict(deepseek.preset("v3-tiny"))
    base["rope"] = RopeConfig(**base["rope"])
    with pytest.raises(deepseek.ConfigError, match=field) as err:
        ModelConfig(**{**base, **change})
    assert "\n" not in str(err.value)


def test_unknown_rope_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="rope type='dynamic'"):
        ModelConfig.from_hf_dict({**V3_HUB, "rope_scaling": {"type": "dynamic", "factor": 2}})


def test_unknown_preset() -> None:
    with pytest.raises(deepseek.ConfigError, match="preset='v9'"):
        deepseek.preset("v9")
