"""Model configuration: one dataclass for every DeepSeek generation, read from HF config.json.

Field names follow the Hugging Face `config.json` keys so that a hub config maps onto
`ModelConfig` almost one to one. The architecture a config describes follows from its
fields: `kv_lora_rank` set means Multi-head Latent Attention (V2/V3), unset means MHA/GQA
(DeepSeek LLM, DeepSeekMoE v1); `n_routed_experts` set means MoE layers after the first
`first_k_dense_replace` dense ones (or where `mlp_layer_types` says "sparse"); model_type
"deepseek_v32" adds DeepSeek Sparse Attention's lightning indexer (`index_*`) to MLA.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deepseek.errors import ConfigError

if TYPE_CHECKING:
    from deepseek.v4.config import V4Config

ROPE_TYPES = ("default", "yarn")
SCORING_FUNCS = ("softmax", "sigmoid")
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
MODEL_TYPES = ("llama", "deepseek", "deepseek_v2", "deepseek_v3", "deepseek_v32")
MLP_LAYER_TYPES = ("dense", "sparse")
# Generations routed like V3 (sigmoid scores, noaux_tc) when a config leaves routing unsaid.
_V3_LIKE = ("deepseek_v3", "deepseek_v32")
_INDEXER_FIELDS = ("index_n_heads", "index_head_dim", "index_topk")

# The class name each model_type carries in config.json `architectures`.
_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "deepseek": "DeepseekForCausalLM",
    "deepseek_v2": "DeepseekV2ForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "deepseek_v32": "DeepseekV32ForCausalLM",
}


def _fail(name: str, value: Any, why: str) -> None:
    raise ConfigError(f"{name}={value!r}: {why}")


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature 0.1·mscale·ln(factor) + 1 (1 when not extending)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


@dataclass
class RopeConfig:
    """Rotary embedding settings (HF `rope_parameters` / `rope_scaling`)."""

    theta: float = 10000.0
    """Base wavelength."""
    type: str = "default"
    """"default" (plain RoPE) or "yarn" (context extension with the mscale correction)."""
    factor: float = 1.0
    """YaRN: how many times the pretraining context is extended."""
    original_max_position_embeddings: int = 4096
    """YaRN: the pretraining context length the correction range is computed from."""
    beta_fast: float = 32.0
    """YaRN: rotations above which a dimension is extrapolated (paper default 32)."""
    beta_slow: float = 1.0
    """YaRN: rotations below which a dimension is interpolated (paper default 1)."""
    mscale: float = 0.0
    """YaRN: numerator scale of the cos/sin factor; 0 means absent (HF semantics)."""
    mscale_all_dim: float = 0.0
    """YaRN: scale whose mscale² multiplies the softmax scale; 0 means absent."""
    interleaved: bool = True
    """Rotate (x0,x1),(x2,x3)... pairs (DeepSeek V2/V3) instead of halves (LLaMA layout)."""

    def __post_init__(self) -> None:
        if self.type not in ROPE_TYPES:
            _fail("rope type", self.type, f"unknown rope type; use one of {ROPE_TYPES}")
        if self.theta <= 0:
            _fail("rope_theta", self.theta, "must be positive")
        if self.type == "yarn" and self.factor < 1:
            _fail("rope factor", self.factor, "YaRN factor must be ≥ 1")

    @property
    def attention_factor(self) -> float:
        """Multiplier of cos/sin: mscale(f, mscale)/mscale(f, mscale_all_dim) as in HF/V2 code."""
        if self.type != "yarn":
            return 1.0
        if self.mscale and self.mscale_all_dim:
            return yarn_mscale(self.factor, self.mscale) / yarn_mscale(
                self.factor, self.mscale_all_dim
            )
        return yarn_mscale(self.factor)

    @property
    def softmax_scale_factor(self) -> float:
        """Multiplier of the softmax scale: mscale(f, mscale_all_dim)² (YaRN temperature)."""
        if self.type != "yarn" or not self.mscale_all_dim:
            return 1.0
        return yarn_mscale(self.factor, self.mscale_all_dim) ** 2


@dataclass
class ModelConfig:
    """Architecture of one DeepSeek model; validated on construction."""

    model_type: str = "deepseek_v3"
    """"llama" (DeepSeek LLM), "deepseek" (DeepSeekMoE v1), "deepseek_v2", "deepseek_v3" or
    "deepseek_v32" (V3 + DeepSeek Sparse Attention)."""
    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128
    """Width of the dense SwiGLU MLP."""
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    """MHA/GQA only: key-value heads (None = num_attention_heads)."""
    max_position_embeddings: int = 256
    """Longest sequence the model accepts."""
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    # Multi-head Latent Attention (None kv_lora_rank = plain MHA/GQA)
    q_lora_rank: int | None = None
    """Low-rank query width (None = full-rank q_proj, as in V2-Lite)."""
    kv_lora_rank: int | None = None
    """Width of the compressed key-value latent; None selects MHA/GQA."""
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # DeepSeekMoE (None n_routed_experts = every layer dense)
    n_routed_experts: int | None = None
    n_shared_experts: int = 0
    num_experts_per_tok: int = 1
    moe_intermediate_size: int = 0
    first_k_dense_replace: int = 0
    """The first k layers keep a dense MLP."""
    moe_layer_freq: int = 1
    """Every moe_layer_freq-th layer after the dense ones is MoE."""
    mlp_layer_types: list[str] | None = None
    """V3.2: "dense" or "sparse" (MoE) per main layer; replaces the two rules above when set."""
    scoring_func: str = "sigmoid"
    topk_method: str = "noaux_tc"
    n_group: int = 1
    """Expert groups (nodes) for group-limited routing."""
    topk_group: int = 1
    """Groups a token may route to."""
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    aux_loss_alpha: float = 0.0
    """Balance loss weight α (0 disables); sequence-wise when seq_aux, else expert-level."""
    seq_aux: bool = True
    bias_update_rate: float = 1e-3
    """γ of the auxiliary-loss-free bias update (V3 paper §2.1.2 uses 0.001)."""
    # Multi-token prediction (V3)
    num_nextn_predict_layers: int = 0
    mtp_loss_weight: float = 0.3
    """λ of the MTP loss (V3 paper: 0.3 for the first 10T tokens, then 0.1)."""
    # DeepSeek Sparse Attention's lightning indexer (V3.2 §2.1; model_type deepseek_v32 only)
    index_n_heads: int = 0
    """Indexer heads: each scores a key by relu(q_h·k), weighted per query by weights_proj."""
    index_head_dim: int = 0
    """Width of the indexer's queries and its single shared key; the first qk_rope_head_dim
    dimensions are rotated."""
    index_topk: int = 0
    """Keys each query attends to, those the indexer scores highest among the causal ones."""
    rope: RopeConfig = field(default_factory=RopeConfig)
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            _fail("model_type", self.model_type, f"unsupported; use one of {MODEL_TYPES}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
            if getattr(self, name) <= 0:
                _fail(name, getattr(self, name), "must be positive")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.is_mla:
            for name in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                if getattr(self, name) <= 0:
                    _fail(name, getattr(self, name), "must be positive for latent attention")
            if self.qk_rope_head_dim % 2:
                _fail("qk_rope_head_dim", self.qk_rope_head_dim, "rotary pairs need an even size")
        else:
            if self.hidden_size % self.num_attention_heads:
                _fail(
                    "num_attention_heads",
                    self.num_attention_heads,
                    f"heads × head dim must equal hidden_size={self.hidden_size}",
                )
            if self.head_dim % 2:
                _fail("head_dim", self.head_dim, "rotary pairs need an even head size")
            if self.num_attention_heads % self.num_key_value_heads:
                _fail(
                    "num_key_value_heads",
                    self.num_key_value_heads,
                    f"must divide num_attention_heads={self.num_attention_heads}",
                )
        if self.is_moe:
            self._check_moe()
        if self.max_position_embeddings <= 0:
            _fail("max_position_embeddings", self.max_position_embeddings, "must be positive")
        if self.num_nextn_predict_layers < 0:
            _fail("num_nextn_predict_layers", self.num_nextn_predict_layers, "must be ≥ 0")
        if self.mlp_layer_types is not None:
            self._check_mlp_layer_types()
        if self.has_indexer:
            self._check_indexer()

    def _check_mlp_layer_types(self) -> None:
        types = self.mlp_layer_types
        assert types is not None
        if len(types) != self.num_hidden_layers:
            _fail(
                "mlp_layer_types",
                types,
                f"needs one entry per layer (num_hidden_layers={self.num_hidden_layers})",
            )
        if any(t not in MLP_LAYER_TYPES for t in types):
            _fail("mlp_layer_types", types, f"entries must be one of {MLP_LAYER_TYPES}")
        if "sparse" in types and not self.is_moe:
            _fail("mlp_layer_types", types, '"sparse" (MoE) layers need n_routed_experts')

    def _check_indexer(self) -> None:
        if not self.is_mla or self.q_lora_rank is None:
            _fail(
                "q_lora_rank",
                self.q_lora_rank,
                "deepseek_v32 needs latent attention with low-rank queries (the indexer reads "
                "the query latent); set kv_lora_rank and q_lora_rank",
            )
        if not self.rope.interleaved:
            _fail("rope interleaved", False, "deepseek_v32's latent attention rotates pairs")
        for name in ("index_n_heads", "index_head_dim", "index_topk"):
            if getattr(self, name) <= 0:
                _fail(name, getattr(self, name), "must be positive for deepseek_v32")
        if self.index_head_dim < self.qk_rope_head_dim:
            _fail(
                "index_head_dim",
                self.index_head_dim,
                f"must hold the rotary part (qk_rope_head_dim={self.qk_rope_head_dim})",
            )

    def _check_moe(self) -> None:
        experts = self.n_routed_experts
        assert experts is not None
        if experts <= 0:
            _fail("n_routed_experts", experts, "must be positive (or null for a dense model)")
        if not 0 < self.num_experts_per_tok <= experts:
            _fail(
                "num_experts_per_tok",
                self.num_experts_per_tok,
                f"top-k must be between 1 and n_routed_experts={experts}",
            )
        if self.moe_intermediate_size <= 0:
            _fail("moe_intermediate_size", self.moe_intermediate_size, "must be positive")
        if self.scoring_func not in SCORING_FUNCS:
            _fail("scoring_func", self.scoring_func, f"use one of {SCORING_FUNCS}")
        if self.topk_method not in TOPK_METHODS:
            _fail("topk_method", self.topk_method, f"use one of {TOPK_METHODS}")
        if self.n_group <= 0 or experts % self.n_group:
            _fail("n_group", self.n_group, f"must divide n_routed_experts={experts}")
        if not 0 < self.topk_group <= self.n_group:
            _fail("topk_group", self.topk_group, f"must be between 1 and n_group={self.n_group}")
        per_group = experts // self.n_group
        if self.topk_method == "noaux_tc" and per_group < 2:
            _fail("n_group", self.n_group, "noaux_tc scores a group by its top 2 experts")
        if self.topk_group * per_group < self.num_experts_per_tok:
            _fail(
                "topk_group",
                self.topk_group,
                f"{self.topk_group} groups of {per_group} experts cannot hold "
                f"num_experts_per_tok={self.num_experts_per_tok}",
            )

    # -- derived sizes --------------------------------------------------------------------
    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def is_moe(self) -> bool:
        return bool(self.n_routed_experts)

    @property
    def has_indexer(self) -> bool:
        """Whether attention is DeepSeek Sparse Attention (a lightning indexer per layer)."""
        return self.model_type == "deepseek_v32"

    @property
    def head_dim(self) -> int:
        """MHA/GQA head size (hidden_size / num_attention_heads)."""
        return self.hidden_size // self.num_attention_heads

    @property
    def rope_dim(self) -> int:
        """Dimensions rotated per head: the decoupled rope key for MLA, the whole head for MHA."""
        return self.qk_rope_head_dim if self.is_mla else self.head_dim

    def is_moe_layer(self, layer_idx: int) -> bool:
        """Whether layer `layer_idx` (MTP layers continue the numbering) holds a MoE MLP."""
        types = self.mlp_layer_types
        if types is not None and layer_idx < len(types):
            return types[layer_idx] == "sparse"
        return (
            self.is_moe
            and layer_idx >= self.first_k_dense_replace
            and layer_idx % self.moe_layer_freq == 0
        )

    # -- Hugging Face config.json ---------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> ModelConfig:
        """Builds a config from a parsed HF `config.json`.

        Accepts DeepSeek LLM (`llama`), DeepSeekMoE (`deepseek`), V2, V3 and V3.2, with rope given
        either as transformers-5 `rope_parameters` or as hub `rope_theta` + `rope_scaling`.

        Raises:
            ConfigError: unknown model_type or rope type, or inconsistent sizes.
        """
        model_type = hf.get("model_type", "deepseek_v3")
        if model_type not in MODEL_TYPES:
            _fail("model_type", model_type, f"unsupported; use one of {MODEL_TYPES}")
        v3 = model_type in _V3_LIKE
        names = {f.name for f in dataclasses.fields(cls)} - {"rope", "model_type"}
        kwargs = {k: hf[k] for k in names if k in hf and hf[k] is not None}
        if "num_mtp_layers" in hf and "num_nextn_predict_layers" not in kwargs:
            kwargs["num_nextn_predict_layers"] = hf["num_mtp_layers"] or 0
        # Defaults that differ by generation when a config omits them (as the HF classes do).
        kwargs.setdefault("scoring_func", "sigmoid" if v3 else "softmax")
        kwargs.setdefault("topk_method", "noaux_tc" if v3 else "greedy")
        kwargs.setdefault("norm_topk_prob", v3)
        kwargs.setdefault("seq_aux", v3 or bool(hf.get("seq_aux", False)))
        # V3.2's config has no rope_interleave: its MLA always rotates interleaved pairs.
        interleaved = model_type in ("deepseek_v2", *_V3_LIKE) and hf.get("rope_interleave", True)
        return cls(model_type=model_type, rope=_rope_from_hf(hf, interleaved), **kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF `config.json` for this config (hub form: `rope_theta` + `rope_scaling`)."""
        out: dict[str, Any] = {"architectures": [_ARCHITECTURES[self.model_type]]}
        # Indexer fields only where they mean something: V2/V3 configs stay as the hub has them.
        skipped = {"rope"} | (set() if self.has_indexer else set(_INDEXER_FIELDS))
        for f in dataclasses.fields(self):
            if f.name not in skipped:
                out[f.name] = getattr(self, f.name)
        if self.mlp_layer_types is None:
            del out["mlp_layer_types"]
        out["hidden_act"] = "silu"
        out["rope_theta"] = self.rope.theta
        if self.model_type == "deepseek_v3":
            out["rope_interleave"] = self.rope.interleaved
        if self.rope.type == "yarn":
            out["rope_scaling"] = {
                "type": "yarn",
                "factor": self.rope.factor,
                "original_max_position_embeddings": self.rope.original_max_position_embeddings,
                "beta_fast": self.rope.beta_fast,
                "beta_slow": self.rope.beta_slow,
                **({"mscale": self.rope.mscale} if self.rope.mscale else {}),
                **(
                    {"mscale_all_dim": self.rope.mscale_all_dim} if self.rope.mscale_all_dim else {}
                ),
            }
        else:
            out["rope_scaling"] = None
        if self.model_type in _V3_LIKE and self.topk_method != "noaux_tc":
            raise ConfigError(
                f"topk_method={self.topk_method!r}: {self.model_type} configs use noaux_tc"
            )
        return out


def _rope_from_hf(hf: dict[str, Any], interleaved: bool) -> RopeConfig:
    if hf.get("rope_parameters"):
        params = dict(hf["rope_parameters"])
        theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    else:
        params = dict(hf.get("rope_scaling") or {})
        theta = hf.get("rope_theta", 10000.0)
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type != "yarn":
        return RopeConfig(theta=theta, type=rope_type, interleaved=interleaved)
    original = params.get("original_max_position_embeddings", 4096)
    factor = params.get("factor") or hf.get("max_position_embeddings", original) / original
    return RopeConfig(
        theta=theta,
        type=rope_type,
        factor=factor,
        original_max_position_embeddings=original,
        beta_fast=params.get("beta_fast") or 32.0,
        beta_slow=params.get("beta_slow") or 1.0,
        mscale=params.get("mscale") or 0.0,
        mscale_all_dim=params.get("mscale_all_dim") or 0.0,
        interleaved=interleaved,
    )


def config_from_hf(hf: dict[str, Any]) -> ModelConfig | V4Config:
    """A parsed HF `config.json`: a `ModelConfig`, or a `deepseek.v4.V4Config` for
    model_type deepseek_v4.

    Raises:
        ConfigError: an unsupported model_type or inconsistent values.
    """
    if hf.get("model_type") == "deepseek_v4":
        from deepseek.v4.config import V4Config  # deepseek.v4 imports this module

        return V4Config.from_hf_dict(hf)
    return ModelConfig.from_hf_dict(hf)


def load_config(path: str) -> ModelConfig | V4Config:
    """Reads a HF `config.json` (local path or fsspec URL); see `config_from_hf`."""
    import fsspec

    with fsspec.open(path, "r") as f:
        return config_from_hf(json.load(f))


# -- presets: tiny for tests, small (~50M) for the benchmark and demo ----------------------
def _v3(**overrides: Any) -> ModelConfig:
    base: dict[str, Any] = dict(
        model_type="deepseek_v3",
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        n_shared_experts=1,
        n_routed_experts=8,
        num_experts_per_tok=2,
        n_group=4,
        topk_group=2,
        routed_scaling_factor=2.5,
        first_k_dense_replace=1,
        q_lora_rank=32,
        kv_lora_rank=16,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        max_position_embeddings=256,
        aux_loss_alpha=1e-4,
        num_nextn_predict_layers=1,
        rope=RopeConfig(
            type="yarn",
            factor=4.0,
            original_max_position_embeddings=64,
            mscale=1.0,
            mscale_all_dim=1.0,
        ),
    )
    base.update(overrides)
    return ModelConfig(**base)


def _v32(**overrides: Any) -> ModelConfig:
    # index_topk 8 sits below the tests' sequence lengths, so selection really drops keys.
    indexer: dict[str, Any] = dict(
        model_type="deepseek_v32", index_n_heads=4, index_head_dim=16, index_topk=8
    )
    return _v3(**{**indexer, **overrides})


def _v3_small() -> ModelConfig:
    return _v3(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1408,
        moe_intermediate_size=256,
        num_hidden_layers=6,
        num_attention_heads=8,
        n_routed_experts=16,
        num_experts_per_tok=4,
        q_lora_rank=192,
        kv_lora_rank=128,
        qk_nope_head_dim=64,
        qk_rope_head_dim=32,
        v_head_dim=64,
        max_position_embeddings=1024,
        rope=RopeConfig(
            type="yarn",
            factor=4.0,
            original_max_position_embeddings=256,
            mscale=1.0,
            mscale_all_dim=1.0,
        ),
    )


def _v2(**overrides: Any) -> ModelConfig:
    v2: dict[str, Any] = dict(
        model_type="deepseek_v2",
        scoring_func="softmax",
        topk_method="group_limited_greedy",
        norm_topk_prob=False,
        routed_scaling_factor=1.0,
        n_shared_experts=2,
        num_nextn_predict_layers=0,
        aux_loss_alpha=1e-3,
        seq_aux=False,
    )
    return _v3(**{**v2, **overrides})


def _moe_v1() -> ModelConfig:
    return ModelConfig(
        model_type="deepseek",
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        n_routed_experts=8,
        n_shared_experts=2,
        num_experts_per_tok=2,
        first_k_dense_replace=1,
        scoring_func="softmax",
        topk_method="greedy",
        norm_topk_prob=False,
        aux_loss_alpha=1e-3,
        rope=RopeConfig(interleaved=False),
    )


def _llm() -> ModelConfig:
    return ModelConfig(
        model_type="llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope=RopeConfig(interleaved=False),
    )


def _v4_tiny() -> V4Config:
    from deepseek.v4.config import V4Config  # deepseek.v4 imports this module

    return V4Config.tiny()


PRESETS: dict[str, Callable[[], ModelConfig | V4Config]] = {
    "v3-tiny": _v3,
    "v3-small": _v3_small,
    "v32-tiny": _v32,
    "v2-tiny": _v2,
    "v2-lite-tiny": lambda: _v2(q_lora_rank=None, topk_method="greedy", n_group=1, topk_group=1),
    "moe-v1-tiny": _moe_v1,
    "llm-tiny": _llm,
    "v4-tiny": _v4_tiny,
}


def preset(name: str, **overrides: Any) -> ModelConfig | V4Config:
    """A named preset config, with fields replaced by `overrides`.

    Raises:
        ConfigError: unknown preset name.
    """
    if name not in PRESETS:
        raise ConfigError(f"preset={name!r}: unknown; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name](), **overrides)
