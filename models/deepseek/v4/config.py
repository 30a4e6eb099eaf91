"""DeepSeek-V4 configuration, read from and written to HF `config.json`.

Field names are transformers' `DeepseekV4Config` attribute names, so a hub config maps onto
`V4Config` one to one. Older V4 configs carry V3-style keys (`compress_ratios`,
`compress_rate_csa` / `compress_rate_hca`, `num_hash_layers`, `qk_rope_head_dim`);
`from_hf_dict` folds them into the per-layer fields as transformers does.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from deepseek.errors import ConfigError

SLIDING = "sliding_attention"
CSA = "compressed_sparse_attention"
HCA = "heavily_compressed_attention"
LAYER_TYPES = (SLIDING, CSA, HCA)
MLP_LAYER_TYPES = ("hash_moe", "moe")
SCORING_FUNCS = ("sqrtsoftplus", "softmax", "sigmoid")
# Legacy per-layer `compress_ratios` values → layer type.
_RATIO_TO_TYPE = {0: SLIDING, 4: CSA, 128: HCA}
_DEFAULT_NUM_HASH_LAYERS = 3
_DEFAULT_ROPE_HEAD_DIM = 64
# Our training fields, absent from transformers' config (and from the config.json we write).
_OURS = ("compress_ratios", "bias_update_rate", "aux_loss_alpha")


def _fail(name: str, value: Any, why: str) -> None:
    raise ConfigError(f"{name}={value!r}: {why}")


@dataclass
class V4Config:
    """Architecture of one DeepSeek-V4 model; validated (and defaults filled) on construction."""

    vocab_size: int = 129280
    hidden_size: int = 4096
    moe_intermediate_size: int = 2048
    num_hidden_layers: int = 43
    num_attention_heads: int = 64
    num_key_value_heads: int = 1
    head_dim: int = 512
    q_lora_rank: int = 1024
    # MoE
    num_experts_per_tok: int = 6
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    scoring_func: str = "sqrtsoftplus"
    """How router logits become affinities: sqrtsoftplus (V4), softmax or sigmoid."""
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.5
    swiglu_limit: float = 10.0
    """Routed experts clamp gate (above) and up (both sides) pre-activations to this."""
    mlp_layer_types: list[str] | None = None
    """Per layer "hash_moe" (frozen token → experts table) or "moe" (learned top-k).
    None: the first 3 layers hash_moe, the rest moe."""
    router_aux_loss_coef: float = 0.001
    bias_update_rate: float = 1e-3
    """Ours, not transformers': γ of the auxiliary-loss-free routing-bias update."""
    aux_loss_alpha: float = 0.0
    """Ours, not transformers': weight α of the sequence-wise balance loss (0 disables)."""
    # Positions
    max_position_embeddings: int = 1048576
    rope_theta: float = 10000.0
    compress_rope_theta: float = 160000.0
    rope_parameters: dict[str, Any] | None = None
    """{"main": {...}, "compress": {...}}; a flat dict (e.g. YaRN) applies to "compress"."""
    partial_rotary_factor: float | None = None
    """Share of head_dim that is rotated; None: 64 / head_dim."""
    # Attention
    layer_types: list[str] | None = None
    """Per layer one of LAYER_TYPES. None: 2 HCA layers, then CSA and HCA alternating."""
    compress_rates: dict[str, int] | None = None
    """Tokens per compressed entry, by layer type (CSA 4, HCA 128 by default)."""
    sliding_window: int = 128
    o_groups: int = 8
    o_lora_rank: int = 1024
    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 512
    attention_bias: bool = False
    attention_dropout: float = 0.0
    # Manifold-constrained hyper-connections
    hc_mult: int = 4
    """Residual streams per position."""
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    # Other
    num_nextn_predict_layers: int = 1
    """MTP layers of the release checkpoint (not built: transformers does not build them)."""
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    pad_token_id: int | None = None
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    compress_ratios: list[int] | None = field(default=None, repr=False)
    """Legacy: per-layer 0/4/128, folded into layer_types; always None afterwards."""

    def __post_init__(self) -> None:
        n = self.num_hidden_layers
        if self.compress_rates is None:
            self.compress_rates = {CSA: 4, HCA: 128}
        if self.layer_types is None and self.compress_ratios is not None:
            bad = [r for r in self.compress_ratios if r not in _RATIO_TO_TYPE]
            if bad:
                _fail("compress_ratios", bad, f"entries must be in {sorted(_RATIO_TO_TYPE)}")
            self.layer_types = [_RATIO_TO_TYPE[r] for r in self.compress_ratios]
        self.compress_ratios = None
        if self.layer_types is None:
            self.layer_types = [HCA] * min(n, 2) + [
                CSA if i % 2 else HCA for i in range(max(n - 2, 0))
            ]
        if self.mlp_layer_types is None:
            hashed = min(n, _DEFAULT_NUM_HASH_LAYERS)
            self.mlp_layer_types = ["hash_moe"] * hashed + ["moe"] * (n - hashed)
        # transformers keeps only the first num_hidden_layers entries.
        self.layer_types = list(self.layer_types[:n])
        self.mlp_layer_types = list(self.mlp_layer_types[:n])
        if self.partial_rotary_factor is None:
            self.partial_rotary_factor = _DEFAULT_ROPE_HEAD_DIM / self.head_dim
        self.rope_parameters = self._nested_rope(self.rope_parameters or {})
        self._validate()

    def _nested_rope(self, rope: dict[str, Any]) -> dict[str, Any]:
        """Main (sliding) and compress rope settings; YaRN applies only to compress layers."""
        if isinstance(rope.get("main"), dict) and isinstance(rope.get("compress"), dict):
            return {"main": dict(rope["main"]), "compress": dict(rope["compress"])}
        flat = {k: v for k, v in rope.items() if k not in ("main", "compress")}
        if "type" in flat:
            flat.setdefault("rope_type", flat.pop("type"))
        main = {
            "rope_type": "default",
            "rope_theta": self.rope_theta,
            "partial_rotary_factor": self.partial_rotary_factor,
        }
        compress = {
            **flat,
            "rope_theta": self.compress_rope_theta,
            "partial_rotary_factor": self.partial_rotary_factor,
        }
        compress.setdefault("rope_type", "default")
        if compress["rope_type"] == "yarn":
            # The V4 reference does not scale cos/sin by YaRN's mscale.
            compress.setdefault("attention_factor", 1.0)
        return {"main": main, "compress": compress}

    def _validate(self) -> None:
        positive = (
            "vocab_size",
            "hidden_size",
            "moe_intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "q_lora_rank",
            "n_routed_experts",
            "max_position_embeddings",
            "sliding_window",
            "o_groups",
            "o_lora_rank",
            "index_n_heads",
            "index_head_dim",
            "index_topk",
            "hc_mult",
            "hc_sinkhorn_iters",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                _fail(name, getattr(self, name), "must be positive")
        for name, types, allowed in (
            ("layer_types", self.layer_types, LAYER_TYPES),
            ("mlp_layer_types", self.mlp_layer_types, MLP_LAYER_TYPES),
        ):
            assert types is not None
            if len(types) != self.num_hidden_layers:
                _fail(name, types, f"needs num_hidden_layers={self.num_hidden_layers} entries")
            bad = [t for t in types if t not in allowed]
            if bad:
                _fail(name, bad, f"entries must be in {allowed}")
        assert self.compress_rates is not None
        for kind in (CSA, HCA):
            rate = self.compress_rates.get(kind)
            if not isinstance(rate, int) or rate <= 0:
                _fail(f"compress_rates[{kind!r}]", rate, "must be a positive integer")
        if not 0 < self.num_experts_per_tok <= self.n_routed_experts:
            _fail(
                "num_experts_per_tok",
                self.num_experts_per_tok,
                f"top-k must be between 1 and n_routed_experts={self.n_routed_experts}",
            )
        if self.aux_loss_alpha < 0:
            _fail("aux_loss_alpha", self.aux_loss_alpha, "must be ≥ 0")
        if self.n_shared_experts < 0:
            _fail("n_shared_experts", self.n_shared_experts, "must be ≥ 0")
        if self.scoring_func not in SCORING_FUNCS:
            _fail("scoring_func", self.scoring_func, f"use one of {SCORING_FUNCS}")
        if self.num_attention_heads % self.o_groups:
            _fail(
                "o_groups",
                self.o_groups,
                f"must divide num_attention_heads={self.num_attention_heads}",
            )
        rope_dim = self.qk_rope_head_dim
        if rope_dim % 2 or not 0 < rope_dim <= self.head_dim:
            _fail(
                "partial_rotary_factor",
                self.partial_rotary_factor,
                f"gives {rope_dim} rotary dims of head_dim={self.head_dim}; need an even count ≥ 2",
            )
        if self.hidden_act != "silu":
            _fail("hidden_act", self.hidden_act, "DeepSeek-V4 uses silu")

    # -- derived sizes --------------------------------------------------------------------
    @property
    def model_type(self) -> str:
        """The HF model_type (error messages name the architecture by it)."""
        return "deepseek_v4"

    @property
    def qk_rope_head_dim(self) -> int:
        """Rotated dimensions per head (head_dim · partial_rotary_factor)."""
        assert self.partial_rotary_factor is not None
        return int(self.head_dim * self.partial_rotary_factor)

    # -- Hugging Face config.json ---------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> V4Config:
        """Builds a config from a parsed HF `config.json` (current or legacy V4 keys).

        Raises:
            ConfigError: another model_type, or inconsistent fields.
        """
        model_type = hf.get("model_type", "deepseek_v4")
        if model_type != "deepseek_v4":
            _fail("model_type", model_type, "V4Config reads deepseek_v4 configs only")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: hf[k] for k in names if k in hf and hf[k] is not None}
        rates = dict(kwargs.get("compress_rates") or {CSA: 4, HCA: 128})
        for legacy, kind in (("compress_rate_csa", CSA), ("compress_rate_hca", HCA)):
            if hf.get(legacy) is not None:
                rates[kind] = hf[legacy]
        kwargs["compress_rates"] = rates
        n = kwargs.get("num_hidden_layers", cls.num_hidden_layers)
        if "mlp_layer_types" not in kwargs and hf.get("num_hash_layers") is not None:
            hashed = min(n, hf["num_hash_layers"])
            kwargs["mlp_layer_types"] = ["hash_moe"] * hashed + ["moe"] * (n - hashed)
        if "partial_rotary_factor" not in kwargs and hf.get("qk_rope_head_dim") is not None:
            head_dim = kwargs.get("head_dim", cls.head_dim)
            kwargs["partial_rotary_factor"] = hf["qk_rope_head_dim"] / head_dim
        if "rope_parameters" not in kwargs and hf.get("rope_scaling"):
            kwargs["rope_parameters"] = dict(hf["rope_scaling"])
        return cls(**kwargs)

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF `config.json` for this config (transformers' current key names)."""
        out: dict[str, Any] = {
            "architectures": ["DeepseekV4ForCausalLM"],
            "model_type": "deepseek_v4",
        }
        for f in dataclasses.fields(self):
            if f.name not in _OURS:
                out[f.name] = getattr(self, f.name)
        return out

    @classmethod
    def tiny(cls, **overrides: Any) -> V4Config:
        """A few-thousand-parameter V4 for tests: every layer type, hash and learned MoE,
        compression rates small enough that 20-odd tokens exercise compression and top-k."""
        base: dict[str, Any] = dict(
            vocab_size=128,
            hidden_size=32,
            moe_intermediate_size=16,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            q_lora_rank=16,
            num_experts_per_tok=2,
            n_routed_experts=4,
            n_shared_experts=1,
            routed_scaling_factor=1.5,
            swiglu_limit=10.0,
            mlp_layer_types=["hash_moe", "moe", "moe", "moe"],
            max_position_embeddings=256,
            partial_rotary_factor=0.5,
            layer_types=[SLIDING, CSA, HCA, CSA],
            compress_rates={CSA: 4, HCA: 8},
            sliding_window=8,
            o_groups=2,
            o_lora_rank=8,
            index_n_heads=8,
            index_head_dim=8,
            index_topk=3,
            hc_mult=2,
            hc_sinkhorn_iters=5,
            num_nextn_predict_layers=0,
        )
        base.update(overrides)
        return cls(**base)


def load_v4_config(path: str) -> V4Config:
    """Reads a HF `config.json` (local path or fsspec URL) into a `V4Config`."""
    import fsspec

    with fsspec.open(path, "r") as f:
        return V4Config.from_hf_dict(json.load(f))
