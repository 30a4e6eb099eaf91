"""The causal LM: cached decoding, MTP, losses, limits, generation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import deepseek
from deepseek.config import PRESETS
from deepseek.mtp import mtp_labels


@pytest.mark.parametrize("name", sorted(set(PRESETS) - {"v3-small"}))
def test_cached_decode_equals_full_forward(name: str) -> None:
    torch.manual_seed(0)
    model = deepseek.build_model(deepseek.preset(name)).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 14))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(14)
        parts = [model(ids[:, :6], cache=cache).logits]  # prefill
        parts += [model(ids[:, i : i + 1], cache=cache).logits for i in range(6, 14)]
    assert cache.length == 14
    assert (torch.cat(parts, dim=1) - full).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["v3-tiny", "llm-tiny"])
def test_forward_with_and_without_autograd_agree(name: str) -> None:
    # Without autograd, decoding builds rotated rows in place; with it, out of place.
    torch.manual_seed(0)
    model = deepseek.DeepseekForCausalLM(deepseek.preset(name)).eval()
    ids = torch.randint(0, 256, (2, 10))
    with_grad = model(ids).logits
    with torch.no_grad():
        without = model(ids).logits
    with torch.inference_mode():
        inference = model(ids).logits
    assert (with_grad - without).abs().max().item() <= 1e-6
    assert torch.equal(without, inference)


def test_logits_to_keep_computes_only_the_last_positions() -> None:
    torch.manual_seed(0)
    model = deepseek.DeepseekForCausalLM(deepseek.preset("v3-tiny")).eval()
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        full = model(ids).logits
        last = model(ids, logits_to_keep=2).logits
    assert last.shape == (2, 2, 256)
    assert (last - full[:, -2:]).abs().max().item() <= 1e-6
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(ids, labels=ids, logits_to_keep=1)


def test_mtp_labels_are_shifted_by_depth() -> None:
    tokens = torch.arange(10)[None]  # t_0 .. t_9
    labels = tokens[:, 1:]  # y_i = t_{i+1}
    # depth k at position i predicts t_{i+k+1}
    assert mtp_labels(labels, 2).tolist() == [[3, 4, 5, 6, 7, 8, 9]]


def test_mtp_loss_uses_shared_head_and_shifted_targets() -> None:
    torch.manual_seed(0)
    config = deepseek.preset("v3-tiny", num_nextn_predict_layers=2, aux_loss_alpha=0.0)
    model = deepseek.DeepseekForCausalLM(config).eval()
    seq = torch.randint(0, 256, (2, 13))
    ids, labels = seq[:, :-1], seq[:, 1:]
    out = model(ids, labels=labels)
    # By hand: run the main stack, then each depth on tokens shifted by k.
    rope = model.rotary(torch.arange(12))
    x = model.model.embed_tokens(ids)
    for layer in model.model.layers:
        x, _ = layer(x, rope)
    assert torch.allclose(F.cross_entropy(out.logits.flatten(0, 1), labels.flatten()), out.ce_loss)
    losses, hidden = [], x
    for k, layer in enumerate(model.mtp, start=1):
        emb = model.model.embed_tokens(seq[:, k:12])
        hidden, _ = layer(hidden[:, :-1], emb, rope[: 12 - k])
        logits = model.lm_head(layer.shared_head["norm"](hidden))
        target = seq[:, k + 1 :]  # t_{i+k+1}
        losses.append(F.cross_entropy(logits.flatten(0, 1), target.flatten()))
    expected = config.mtp_loss_weight / 2 * sum(losses)
    assert torch.allclose(out.mtp_loss, expected, atol=1e-6)
    assert torch.allclose(out.loss, out.ce_loss + out.mtp_loss)


def test_mtp_is_unused_at_inference() -> None:
    torch.manual_seed(0)
    model = deepseek.DeepseekForCausalLM(deepseek.preset("v3-tiny")).eval()
    ids = torch.randint(0, 256, (1, 8))
    before = model(ids).logits
    with torch.no_grad():
        for p in model.mtp.parameters():
            p.add_(1.0)
    assert torch.equal(model(ids).logits, before)


def test_sequence_longer_than_max_position_is_refused() -> None:
    model = deepseek.DeepseekForCausalLM(deepseek.preset("llm-tiny", max_position_embeddings=16))
    with pytest.raises(deepseek.SequenceTooLongError, match="max_position_embeddings=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(deepseek.SequenceTooLongError):
        model.generate(torch.zeros(1, 10, dtype=torch.long), max_new_tokens=7)


def test_generate_greedy_matches_argmax_of_full_forward() -> None:
    torch.manual_seed(0)
    model = deepseek.DeepseekForCausalLM(deepseek.preset("v3-tiny")).eval()
    prompt = torch.randint(0, 256, (2, 5))
    out = model.generate(prompt, max_new_tokens=6, temperature=0)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], prompt)
    with torch.no_grad():
        logits = model(out[:, :-1]).logits
    assert torch.equal(logits[:, 4:].argmax(-1), out[:, 5:])


def test_generate_top_k_samples_only_top_tokens() -> None:
    torch.manual_seed(0)
    model = deepseek.DeepseekForCausalLM(deepseek.preset("llm-tiny")).eval()
    prompt = torch.randint(0, 256, (4, 3))
    out = model.generate(prompt, 1, temperature=1.0, top_k=2, generator=torch.Generator())
    with torch.no_grad():
        top2 = model(prompt).logits[:, -1].topk(2).indices
    assert all(out[b, -1] in top2[b] for b in range(4))


def test_loss_falls_on_tiny_corpus() -> None:
    torch.manual_seed(0)
    model = deepseek.DeepseekForCausalLM(deepseek.preset("v3-tiny")).train()
    text = torch.tensor(list(b"the quick brown fox jumps over the lazy dog. " * 4))
    ids, labels = text[None, :-1], text[None, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        out = model(ids, labels=labels)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.update_expert_bias()
        losses.append(out.ce_loss.item())
    assert losses[-1] < 0.5 * losses[0]
    bias = model.moe_layers()[0].gate.e_score_correction_bias
    assert bias.abs().sum() > 0
