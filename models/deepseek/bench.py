"""`python -m deepseek.bench`: our DeepSeek-V3 against transformers', from one run.

For the tiny and small (~50M parameter) V3 presets, with identical config and weights:
forward+backward tokens/s, cached greedy generation tokens/s, and peak memory of each.
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
import dataclasses
import multiprocessing
import re
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from deepseek.config import ModelConfig, preset
from deepseek.hf import save_pretrained
from deepseek.model import DeepseekForCausalLM


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
    name, batch, seq, new, index, hf = args
    _, workloads = _workloads(name, torch.device("cpu"), batch, seq, new)
    fn = workloads[index][2 if hf else 1]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak RSS := current RSS, forgetting model construction
    base = _status_kib("VmRSS")
    fn()
    queue.put((_status_kib("VmHWM") - base) / 1024)


def _cpu_peak_mib(name: str, batch: int, seq: int, new: int, index: int, hf: bool) -> float:
    """Peak resident-set growth, in MiB, of one run of workload `index` in a new process."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_peak_child, args=((name, batch, seq, new, index, hf), queue))
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


def _pair(config: ModelConfig, device: torch.device):
    """Our model and transformers' DeepseekV3ForCausalLM holding the same weights."""
    from transformers import DeepseekV3ForCausalLM

    ours = DeepseekForCausalLM(config)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(ours, tmp)
        theirs = DeepseekV3ForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    return ours.to(device), theirs.to(device)


def _workloads(name: str, device: torch.device, batch: int, seq: int, new: int):
    """(parameters in millions, [(label, ours, transformers', timed rounds), ...])."""
    torch.manual_seed(0)
    config = dataclasses.replace(preset(name), num_nextn_predict_layers=0, aux_loss_alpha=0.0)
    ours, theirs = _pair(config, device)
    params = sum(p.numel() for p in ours.parameters()) / 1e6
    ids = torch.randint(0, config.vocab_size, (batch, seq + 1), device=device)
    prompt = ids[:1, :16]
    return params, [
        (
            f"fwd+bwd b{batch}×{seq}",
            _train_step(ours.train(), ids, False),
            _train_step(theirs.train(), ids, True),
            5,
        ),
        (
            f"generate 16+{new}",
            _generate(ours.eval(), prompt, new, False),
            _generate(theirs.eval(), prompt, new, True),
            5,
        ),
    ]


def compare(name: str, device: torch.device, batch: int, seq: int, new: int) -> list[str]:
    params, workloads = _workloads(name, device, batch, seq, new)
    rows = []
    for index, (label, fn_ours, fn_theirs, rounds) in enumerate(workloads):
        a_tps, b_tps, speedups = _compare(fn_ours, fn_theirs, device, rounds)
        if device.type == "cpu":
            a_mem = _cpu_peak_mib(name, batch, seq, new, index, hf=False)
            b_mem = _cpu_peak_mib(name, batch, seq, new, index, hf=True)
        else:
            a_mem, b_mem = _cuda_peak_mib(fn_ours, device), _cuda_peak_mib(fn_theirs, device)
        rows.append(
            f"| {name} ({params:.1f}M) | {label} | {a_tps:,.0f} | {b_tps:,.0f} | "
            f"{statistics.median(speedups):.2f}x ({min(speedups):.2f}–{max(speedups):.2f}) | "
            f"{a_mem:,.0f} | {b_mem:,.0f} |"
        )
    return rows


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
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        "| model | workload | ours tok/s | transformers tok/s | speedup (range) | ours MiB | "
        "transformers MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in compare("v3-tiny", device, batch=4, seq=128, new=32):
        print(row, flush=True)
    for row in compare("v3-small", device, batch=2, seq=256, new=32):
        print(row, flush=True)
    if device.type == "cuda":
        print(gpu_mfu(device, args.peak_tflops))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
