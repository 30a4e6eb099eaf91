"""DeepSeek's blockwise FP8 weight format (the V3, R1 and V3.2 releases).

A quantised Linear weight W (out, in) is stored as `X.weight` in float8_e4m3fn next to
`X.weight_scale_inv`, float32 of shape (ceil(out/bo), ceil(in/bo')) for blocks of bo × bo'
(128 × 128 in every release; edge blocks are smaller when a size is not a multiple). Each
block's scale is amax(block) / 448, 448 being the largest finite e4m3 value, so
W ≈ fp8.float() * scale_inv blockwise. config.json announces the format:
    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3",
                            "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from deepseek.errors import CheckpointError

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448
SCALE_SUFFIX = "_scale_inv"
DEFAULT_BLOCK = (128, 128)
# The releases quantise the Linear weights of attention (V3.2 also its indexer's wq_b and
# wk), dense MLPs and experts; embeddings, lm_head, norms, the router gate, MTP's eh_proj and
# the indexer's weights_proj stay bf16/fp32 (transformers' DeepseekV32 keeps
# indexer.weights_proj in fp32; vLLM's MTP loads eh_proj as a plain bf16 Linear).
_QUANTISED = re.compile(
    r"\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj|wq_b|wk"
    r"|gate_proj|up_proj|down_proj)\.weight$"
)

Block = tuple[int, int]


def is_quantised(hub_key: str, tensor: torch.Tensor) -> bool:
    """Whether the official FP8 checkpoints store the hub tensor `hub_key` in FP8."""
    return tensor.dim() == 2 and _QUANTISED.search(hub_key) is not None


def scale_shape(shape: tuple[int, ...] | torch.Size, block: Block) -> tuple[int, int]:
    """Shape of the `weight_scale_inv` of a weight of `shape` (ragged edge blocks count)."""
    return math.ceil(shape[0] / block[0]), math.ceil(shape[1] / block[1])


def _per_element(scale_inv: torch.Tensor, shape: torch.Size, block: Block) -> torch.Tensor:
    """Each block's scale repeated over its elements, cropped to `shape`."""
    full = scale_inv.repeat_interleave(block[0], dim=0).repeat_interleave(block[1], dim=1)
    return full[: shape[0], : shape[1]]


def dequantise(weight: torch.Tensor, scale_inv: torch.Tensor, block: Block) -> torch.Tensor:
    """FP8 weight and its block scales → float32 weight.

    Raises:
        CheckpointError: `scale_inv` does not have one entry per block of `weight`.
    """
    if tuple(scale_inv.shape) != scale_shape(weight.shape, block):
        raise CheckpointError(
            f"weight_scale_inv {tuple(scale_inv.shape)} does not fit a {tuple(weight.shape)} "
            f"weight in {block[0]}×{block[1]} blocks (expected {scale_shape(weight.shape, block)})"
        )
    return weight.float() * _per_element(scale_inv.float(), weight.shape, block)


def quantise(
    weight: torch.Tensor, block: Block = DEFAULT_BLOCK
) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2-D weight → (float8_e4m3fn weight, float32 scale_inv per block)."""
    w = weight.detach().float()
    rows, cols = scale_shape(w.shape, block)
    padded = torch.nn.functional.pad(
        w, (0, cols * block[1] - w.shape[1], 0, rows * block[0] - w.shape[0])
    )
    amax = padded.abs().reshape(rows, block[0], cols, block[1]).amax(dim=(1, 3))
    # An all-zero block keeps a tiny scale so that the division below stays finite.
    scale_inv = (amax / FP8_MAX).clamp(min=torch.finfo(torch.float32).tiny)
    scaled = w / _per_element(scale_inv, w.shape, block)
    return scaled.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale_inv


def hub_quantization_config(block: Block = DEFAULT_BLOCK) -> dict[str, Any]:
    """The `quantization_config` entry of config.json for checkpoints we write in FP8."""
    return {
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "quant_method": "fp8",
        "weight_block_size": list(block),
    }


def block_size(quantization_config: dict[str, Any] | None) -> Block | None:
    """The weight block of a config.json `quantization_config` (None: not quantised).

    Raises:
        CheckpointError: a quantisation method or format other than DeepSeek's blockwise FP8.
    """
    if not quantization_config:
        return None
    method = quantization_config.get("quant_method")
    fmt = quantization_config.get("fmt", "e4m3")
    if method != "fp8" or fmt != "e4m3":
        raise CheckpointError(
            f"quantization_config quant_method={method!r} fmt={fmt!r}: only DeepSeek's blockwise "
            "fp8/e4m3 weights load; dequantise the checkpoint first"
        )
    rows, cols = quantization_config.get("weight_block_size") or DEFAULT_BLOCK
    return int(rows), int(cols)
