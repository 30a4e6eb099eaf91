"""DeepSeekMoE: grouped expert compute, routing, bias balancing, balance losses."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import deepseek
from deepseek.moe import MoE, Router, balance_loss


def _moe(name: str = "v3-tiny", **overrides) -> MoE:
    torch.manual_seed(0)
    model = deepseek.DeepseekForCausalLM(deepseek.preset(name, **overrides))
    return model.moe_layers()[0]


def _loop_reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """One token and one chosen expert at a time: the obviously right computation."""
    routing = moe.gate(x)
    experts = moe.experts
    out = torch.zeros_like(x)
    rows = []
    for t in range(x.shape[0]):
        row = torch.zeros_like(x[t])
        for k in range(routing.indices.shape[1]):
            e = routing.indices[t, k]
            gate, up = (experts.gate_up_proj[e] @ x[t]).chunk(2)
            row = row + routing.weights[t, k] * (experts.down_proj[e] @ (F.silu(gate) * up))
        rows.append(row)
    return out + torch.stack(rows)


def test_grouped_experts_match_loop_outputs_and_gradients() -> None:
    moe = _moe()
    x = torch.randn(30, 64, requires_grad=True)
    routing = moe.gate(x)
    grouped = moe.experts(x, routing.indices, routing.weights)
    reference = _loop_reference(moe, x)
    assert (grouped - reference).abs().max().item() <= 1e-5
    upstream = torch.randn_like(grouped)
    params = [x, moe.experts.gate_up_proj, moe.experts.down_proj, moe.gate.weight]
    g1 = torch.autograd.grad((grouped * upstream).sum(), params)
    g2 = torch.autograd.grad((reference * upstream).sum(), params)
    for a, b in zip(g1, g2, strict=True):
        assert a.abs().max() > 0
        assert (a - b).abs().max().item() <= 1e-5


def test_single_token_experts_match_loop() -> None:
    moe = _moe()
    x = torch.randn(1, 64)
    routing = moe.gate(x)
    single = moe.experts(x, routing.indices, routing.weights)
    reference = _loop_reference(moe, x)
    assert (single - reference).abs().max().item() <= 1e-5
    single.sum().backward()  # the routing weights stay differentiable on this path
    assert moe.gate.weight.grad is not None and moe.gate.weight.grad.abs().sum() > 0
    with torch.no_grad():  # decoding: weights as numbers, accumulated in place
        decoded = moe.experts(x, routing.indices, routing.weights)
    assert (decoded - reference).abs().max().item() <= 1e-5


def test_group_limited_routing_stays_in_top_groups() -> None:
    moe = _moe()
    router: Router = moe.gate
    x = torch.randn(50, 64)
    indices = router(x).indices
    groups = indices // (router.experts // router.n_group)
    distinct = torch.tensor([len(set(row.tolist())) for row in groups])
    assert (distinct <= router.topk_group).all()


def test_bias_only_selects_and_gets_no_gradient() -> None:
    moe = _moe()
    bias = moe.gate.e_score_correction_bias
    assert not bias.requires_grad and "gate.e_score_correction_bias" in dict(moe.named_buffers())
    x = torch.randn(40, 64)
    before = moe.gate(x)
    bias[3] = 10.0  # expert 3 is now always chosen, but weighted by its unbiased score
    after = moe.gate(x)
    assert (after.indices == 3).any(dim=1).all()
    assert not torch.equal(before.indices, after.indices)
    chosen = after.scores.gather(1, after.indices)
    expected = chosen / chosen.sum(-1, keepdim=True) * moe.gate.scaling
    assert torch.allclose(after.weights, expected)


def test_bias_moves_over_and_under_loaded_experts() -> None:
    moe = _moe().train()
    moe.gate.e_score_correction_bias[0] = 5.0  # force expert 0 to be overloaded
    moe(torch.randn(2, 16, 64))
    load = moe.load.clone()
    assert load.sum() == 2 * 16 * moe.gate.top_k
    reported = moe.update_bias()
    assert torch.equal(reported, load)
    bias = moe.gate.e_score_correction_bias
    rate = moe.bias_update_rate
    assert bias[0].item() == pytest.approx(5.0 - rate)  # overloaded: pushed down
    under = load < load.mean()
    assert torch.allclose(bias[under], torch.full_like(bias[under], rate))  # pushed up
    assert moe.load.sum() == 0


def test_the_bias_moves_by_the_job_wide_load_it_is_given() -> None:
    """The training loop sums loads over ranks (`Parallelized.update_expert_bias`); the
    layer applies whatever total it is handed and never communicates itself."""
    moe = _moe().train()
    moe.gate.e_score_correction_bias[0] = 5.0
    moe(torch.randn(2, 16, 64))
    load = moe.load.clone()
    others = torch.zeros_like(load)
    others[0] = 10 * load.sum()  # another rank sent everything to expert 0 as well
    reported = moe.update_bias(lambda mine: mine + others)
    assert torch.equal(reported, load + others)
    assert moe.gate.e_score_correction_bias[0].item() == pytest.approx(5.0 - moe.bias_update_rate)


# The model's modules hold no parallel code: the training loop and haiscale lay it out.
PARALLEL_MODULES = {"parallel.py", "train.py", "train_config.py", "train_state.py"}


def test_the_model_modules_never_import_torch_distributed() -> None:
    package = Path(deepseek.__file__).parent
    for path in sorted(package.glob("*.py")):
        if path.name in PARALLEL_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            assert not any(n.startswith("torch.distributed") for n in names), path.name


def test_sequence_wise_loss_matches_hand_computation() -> None:
    torch.manual_seed(0)
    experts, top_k, seqs, tokens = 4, 2, 2, 3
    scores = torch.rand(seqs * tokens, experts)
    indices = torch.stack([torch.randperm(experts)[:top_k] for _ in range(seqs * tokens)])
    expected = 0.0
    for s in range(seqs):
        rows = range(s * tokens, (s + 1) * tokens)
        for i in range(experts):
            count = sum(int(i in indices[t].tolist()) for t in rows)
            f = experts / (top_k * tokens) * count
            p = sum((scores[t, i] / scores[t].sum()).item() for t in rows) / tokens
            expected += f * p
    expected /= seqs
    got = balance_loss(scores, indices, seqs, top_k)
    assert abs(got.item() - expected) < 1e-6
    # one slice over the batch (V2's expert-level loss) is a different number
    assert abs(balance_loss(scores, indices, 1, top_k).item() - got.item()) > 1e-6


def test_aux_loss_only_in_training_and_has_gradient() -> None:
    moe = _moe()
    x = torch.randn(2, 8, 64)
    moe.eval()
    assert moe(x)[1] is None
    moe.train()
    _, aux = moe(x)
    assert aux is not None and aux.item() > 0
    aux.backward()
    assert moe.gate.weight.grad is not None and moe.gate.weight.grad.abs().sum() > 0
    assert moe.gate.e_score_correction_bias.grad is None
