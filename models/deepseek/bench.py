"""`python -m deepseek.bench`: our DeepSeek models against transformers', from one run.

For each case, with identical config and weights on both sides (ours saved, transformers'
class for its model_type loading it): forward+backward tokens/s, cached greedy generation
tokens/s, and peak memory of each. Cases: V3 tiny and small (~50M parameters), V3.2 and V4
at the small size, and a long-context pair, V3 (dense attention) beside V3.2 (each query
attends to its top 512 of a 4k-token context): the 4,096-token prompt's prefill and the
decoding steps after it, timed apart.
The two sides are timed call by call in alternation, five rounds each; a row gives each
side's median tokens/s and the median speed-up with its range over the rounds, so a load
spike on a shared machine shows as a wide range rather than a skewed figure. Both
generate the same way: prompt logits for the last position only (transformers' generate
passes logits_to_keep=1 too), greedy, a KV cache.
CUDA memory is max allocated. CPU memory is the growth of the peak resident set (VmHWM,
reset through /proc/self/clear_refs, so Linux only) over one run in a fresh spawned
process: in the timing process the allocator keeps pages freed by earlier runs, which
would hide what a run needs.
On a GPU it also reports tokens/s and model FLOPs utilisation of a ~1B V3-shaped model in
bf16 (peak from --peak-tflops, default 989 = H100 SXM dense bf16).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import multiprocessing
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from deepseek.architectures import AnyConfig, build_model
from deepseek.config import RopeConfig, preset
from deepseek.hf import save_pretrained
from deepseek.model import DeepseekForCausalLM
from deepseek.v4.config import CSA, HCA, SLIDING, V4Config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(fn: Callable[[], int], device: torch.device, repeats: int) -> tuple[float, float]:
    """Runs fn (which returns tokens processed) once to warm up, then `repeats` times timed.

    Returns (tokens/s, peak CUDA memory in MiB above the starting point; 0 on CPU, where
    `_cpu_peak_mib` measures it in a fresh process).
    """
    fn()
    _sync(device)
    t0 = time.perf_counter()
    tokens = sum(fn() for _ in range(repeats))
    _sync(device)
    rate = tokens / (time.perf_counter() - t0)
    if device.type != "cuda":
        return rate, 0.0
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    return rate, (torch.cuda.max_memory_allocated(device) - base) / 2**20


def _compare(
    fn_a: Callable[[], int], fn_b: Callable[[], int], device: torch.device, rounds: int
) -> tuple[float, float, list[float]]:
    """Times fn_a and fn_b (each returns tokens processed) once per round, alternating which
    goes first, after one warm-up call each: on a shared machine both sides then see the
    same load. Returns (median tokens/s of a, of b, per-round speed-ups of a over b)."""
    fn_a()
    fn_b()
    _sync(device)
    rates: tuple[list[float], list[float]] = ([], [])
    for r in range(rounds):
        for side in (0, 1) if r % 2 == 0 else (1, 0):
            t0 = time.perf_counter()
            tokens = (fn_a, fn_b)[side]()
            _sync(device)
            rates[side].append(tokens / (time.perf_counter() - t0))
    speedups = [a / b for a, b in zip(*rates, strict=True)]
    return statistics.median(rates[0]), statistics.median(rates[1]), speedups


def _cuda_peak_mib(fn: Callable[[], int], device: torch.device) -> float:
    """Peak CUDA memory of one call of fn above the starting point, in MiB."""
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def _peak_child(args: tuple, queue: multiprocessing.Queue) -> None:
    name, batch, seq, prompt, new, index, hf = args
    _, workloads = _workloads(name, torch.device("cpu"), batch, seq, prompt, new)
    fn = workloads[index][2 if hf else 1]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak RSS := current RSS, forgetting model construction
    base = _status_kib("VmRSS")
    fn()
    queue.put((_status_kib("VmHWM") - base) / 1024)


def _cpu_peak_mib(
    name: str, batch: int, seq: int, prompt: int, new: int, index: int, hf: bool
) -> float:
    """Peak resident-set growth, in MiB, of one run of workload `index` in a new process."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    args = (name, batch, seq, prompt, new, index, hf)
    child = ctx.Process(target=_peak_child, args=(args, queue))
    child.start()
    peak = queue.get()
    child.join()
    return peak


def _train_step(model: torch.nn.Module, ids: torch.Tensor, hf: bool) -> Callable[[], int]:
    def step() -> int:
        if hf:
            loss = model(ids, labels=ids).loss
        else:
            loss = model(ids[:, :-1], labels=ids[:, 1:]).ce_loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return ids.numel()

    return step


def _generate(model: torch.nn.Module, prompt: torch.Tensor, new: int, hf: bool):
    def gen() -> int:
        with torch.no_grad():
            if hf:
                model.generate(
                    prompt,
                    max_new_tokens=new,
                    min_new_tokens=new,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=0,
                )
            else:
                model.generate(prompt, new, temperature=0)
        return prompt.shape[0] * new

    return gen


def _prefill(model: torch.nn.Module, prompt: torch.Tensor, hf: bool) -> tuple[Any, torch.Tensor]:
    """(a filled decoding cache, the greedy next token) after `prompt`."""
    with torch.no_grad():
        if hf:
            out = model(prompt, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
        else:
            cache = model.new_cache(model.config.max_position_embeddings)
            out = model(prompt, cache=cache, logits_to_keep=1)
    return cache, out.logits[:, -1].argmax(-1, keepdim=True)


def _prefill_only(model: torch.nn.Module, prompt: torch.Tensor, hf: bool):
    def prefill() -> int:
        _prefill(model, prompt, hf)
        return prompt.numel()

    return prefill


def _decode(model: torch.nn.Module, prompt: torch.Tensor, new: int, hf: bool):
    """Greedy steps after `prompt`, timed without its prefill: each call decodes from a copy
    of one prefilled cache (both libraries' caches are plain tensors, so deepcopy works)."""
    filled, first = _prefill(model, prompt, hf)

    def decode() -> int:
        cache, token = copy.deepcopy(filled), first
        with torch.no_grad():
            for _ in range(new):
                if hf:
                    logits = model(token, cache=cache, use_cache=True).logits
                else:
                    logits = model(token, cache=cache).logits
                token = logits[:, -1].argmax(-1, keepdim=True)
        return new

    return decode


# transformers' class for each model_type: the reference our logits match.
_REFERENCE = {
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "deepseek_v32": "DeepseekV32ForCausalLM",
    "deepseek_v4": "DeepseekV4ForCausalLM",
}
# Long-context cases: MLA as wide per key relative to its indexer as V3.2's (16 heads ×
# (256 + 32) latent dimensions against 8 index heads × 64: 9 to 1, as 128 × 576 against
# 64 × 128 is), small elsewhere, so that attention over the context is what a step costs.
LONG_PROMPT = 4096
_LONG = dict(
    hidden_size=256,
    num_attention_heads=16,
    num_key_value_heads=16,
    q_lora_rank=96,
    kv_lora_rank=256,
    qk_nope_head_dim=32,
    qk_rope_head_dim=32,
    v_head_dim=32,
    max_position_embeddings=LONG_PROMPT + 128,
    rope=RopeConfig(),
)
_INDEXER = dict(model_type="deepseek_v32", index_n_heads=8, index_head_dim=64)


def _v4_small() -> V4Config:
    """V4 at the V3-small width: every layer type (sliding, CSA, HCA), hash and learned
    MoE, 4 hyper-connection streams."""
    return V4Config.tiny(
        vocab_size=8192,
        hidden_size=512,
        moe_intermediate_size=256,
        num_hidden_layers=6,
        num_attention_heads=8,
        head_dim=96,
        partial_rotary_factor=1 / 3,
        q_lora_rank=192,
        n_routed_experts=16,
        num_experts_per_tok=4,
        mlp_layer_types=["hash_moe"] * 2 + ["moe"] * 4,
        layer_types=[SLIDING, CSA, HCA, CSA, HCA, CSA],
        compress_rates={CSA: 4, HCA: 32},
        sliding_window=64,
        o_groups=4,
        o_lora_rank=128,
        index_n_heads=8,
        index_head_dim=64,
        index_topk=32,
        hc_mult=4,
        hc_sinkhorn_iters=20,
        max_position_embeddings=1024,
    )


CASES: dict[str, Callable[[], AnyConfig]] = {
    "v3-tiny": lambda: preset("v3-tiny"),
    "v3-small": lambda: preset("v3-small"),
    "v32-small": lambda: preset(
        "v3-small", **{**_INDEXER, "index_head_dim": 64, "index_topk": 128}
    ),
    "v4-small": _v4_small,
    "v3-4k": lambda: preset("v3-tiny", **_LONG),
    "v32-4k": lambda: preset("v3-tiny", **_LONG, **_INDEXER, index_topk=512),
}


# Per case: forward+backward batch and length (batch 0: none), prompt and new tokens.
_SHAPES = {
    "v3-tiny": (4, 128, 16, 32),
    "v3-small": (2, 256, 16, 32),
    "v32-small": (2, 256, 16, 32),
    "v4-small": (2, 256, 16, 32),
    "v3-4k": (0, 0, LONG_PROMPT, 64),
    "v32-4k": (0, 0, LONG_PROMPT, 64),
}


def _bench_config(name: str) -> AnyConfig:
    """Case `name` without the MTP modules and balance loss transformers does not have."""
    config = CASES[name]()
    if isinstance(config, V4Config):
        return config
    return dataclasses.replace(config, num_nextn_predict_layers=0, aux_loss_alpha=0.0)


def _pair(config: AnyConfig, device: torch.device):
    """Our model and transformers' model of the same model_type holding the same weights."""
    import transformers

    ours = build_model(config)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(ours, tmp)
        reference = getattr(transformers, _REFERENCE[config.model_type])
        theirs = reference.from_pretrained(tmp, dtype=torch.float32)
    return ours.to(device), theirs.to(device)


def _workloads(name: str, device: torch.device, batch: int, seq: int, prompt: int, new: int):
    """(parameters in millions, [(label, ours, transformers', timed rounds), ...]): forward+
    backward and generation; batch 0 (the long-context cases): the prompt's prefill and the
    decoding steps after it, timed apart, as the selection changes each differently."""
    torch.manual_seed(0)
    config = _bench_config(name)
    ours, theirs = _pair(config, device)
    ours.eval(), theirs.eval()
    params = sum(p.numel() for p in ours.parameters()) / 1e6
    ids = torch.randint(0, config.vocab_size, (max(batch, 1), max(seq, prompt) + 1), device=device)
    first = ids[:1, :prompt]
    if not batch:
        return params, [
            (
                f"prefill {prompt}",
                _prefill_only(ours, first, False),
                _prefill_only(theirs, first, True),
                3,
            ),
            (
                f"decode {new} after {prompt}",
                _decode(ours, first, new, False),
                _decode(theirs, first, new, True),
                5,
            ),
        ]
    return params, [
        (
            f"fwd+bwd b{batch}×{seq}",
            _train_step(ours.train(), ids[:, : seq + 1], False),
            _train_step(theirs.train(), ids[:, : seq + 1], True),
            5,
        ),
        (
            f"generate {prompt}+{new}",
            _generate(ours.eval(), first, new, False),
            _generate(theirs.eval(), first, new, True),
            5,
        ),
    ]


def compare(
    name: str, device: torch.device, batch: int, seq: int, prompt: int, new: int
) -> list[str]:
    """Runs case `name`'s workloads on both sides (see `_workloads`): table rows."""
    params, workloads = _workloads(name, device, batch, seq, prompt, new)
    rows = []
    for index, (label, fn_ours, fn_theirs, rounds) in enumerate(workloads):
        a_tps, b_tps, speedups = _compare(fn_ours, fn_theirs, device, rounds)
        if device.type == "cpu":
            a_mem = _cpu_peak_mib(name, batch, seq, prompt, new, index, hf=False)
            b_mem = _cpu_peak_mib(name, batch, seq, prompt, new, index, hf=True)
        else:
            a_mem, b_mem = _cuda_peak_mib(fn_ours, device), _cuda_peak_mib(fn_theirs, device)
        rows.append(
            f"| {name} ({params:.1f}M) | {label} | {a_tps:,.0f} | {b_tps:,.0f} | "
            f"{statistics.median(speedups):.2f}x ({min(speedups):.2f}–{max(speedups):.2f}) | "
            f"{max(a_mem, 0):,.0f} | {max(b_mem, 0):,.0f} |"
        )
    return rows


def sparse_against_dense(device: torch.device, prompt: int, new: int) -> list[str]:
    """V3.2 against V3 at the long context, each library against itself, timed in
    alternation like `_compare` (rows of cases timed minutes apart would compare loads)."""
    _, dense = _workloads("v3-4k", device, 0, 0, prompt, new)
    _, sparse = _workloads("v32-4k", device, 0, 0, prompt, new)
    lines = []
    for (label, *dense_fns, rounds), (_, *sparse_fns, _) in zip(dense, sparse, strict=True):
        for side, dense_fn, sparse_fn in zip(
            ("ours", "transformers"), dense_fns, sparse_fns, strict=True
        ):
            ratios = _compare(sparse_fn, dense_fn, device, rounds)[2]
            lines.append(
                f"| {label} | {side} | "
                f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}–{max(ratios):.2f}) |"
            )
    return lines


def gpu_mfu(device: torch.device, peak_tflops: float) -> str:
    """Tokens/s and MFU of a ~1B-parameter V3-shaped model, bf16 autocast, fwd+bwd."""
    config = dataclasses.replace(
        preset("v3-small"),
        vocab_size=32000,
        hidden_size=1536,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=4096,
        moe_intermediate_size=512,
        n_routed_experts=32,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        q_lora_rank=512,
        kv_lora_rank=256,
        qk_nope_head_dim=64,
        qk_rope_head_dim=32,
        v_head_dim=64,
        max_position_embeddings=2048,
        num_nextn_predict_layers=0,
    )
    model = DeepseekForCausalLM(config).to(device).train()
    total = sum(p.numel() for p in model.parameters())
    # Activated parameters: everything except the routed experts not chosen per token.
    expert = 3 * config.hidden_size * config.moe_intermediate_size
    moe_layers = len(model.moe_layers())
    assert config.n_routed_experts is not None
    active = total - moe_layers * expert * (config.n_routed_experts - config.num_experts_per_tok)
    batch, seq = 8, 2048
    ids = torch.randint(0, config.vocab_size, (batch, seq + 1), device=device)

    def step() -> int:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids[:, :-1], labels=ids[:, 1:]).ce_loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        return batch * seq

    tps, mem = _measure(step, device, 5)
    # 6·N_active per token for the matmuls plus attention's 12·layers·heads·d_qk·seq (PaLM).
    d_qk = config.qk_nope_head_dim + config.qk_rope_head_dim
    flops_per_token = (
        6 * active + 12 * config.num_hidden_layers * config.num_attention_heads * d_qk * seq
    )
    mfu = tps * flops_per_token / (peak_tflops * 1e12)
    return (
        f"GPU V3-shaped {total / 1e9:.2f}B total / {active / 1e9:.2f}B active, bf16, "
        f"b{batch}×{seq}: {tps:,.0f} tokens/s, MFU {mfu:.1%}, peak {mem:,.0f} MiB"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deepseek.bench", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument(
        "--cases", nargs="+", choices=sorted(CASES), default=list(CASES), help="(default: all)"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        "| model | workload | ours tok/s | transformers tok/s | speedup (range) | ours MiB | "
        "transformers MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.cases:
        for row in compare(name, device, *_SHAPES[name]):
            print(row, flush=True)
    if {"v3-4k", "v32-4k"} <= set(args.cases):
        print("\n| workload | side | V3.2 sparse / V3 dense tok/s (range) |\n|---|---|---|")
        for line in sparse_against_dense(device, *_SHAPES["v3-4k"][2:]):
            print(line, flush=True)
    if device.type == "cuda":
        print(gpu_mfu(device, args.peak_tflops))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
