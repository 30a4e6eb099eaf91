"""Autoregressive sampling with a KV cache (MLA caches only its compressed latent)."""

from __future__ import annotations

import torch

from deepseek.errors import SequenceTooLongError


# inference_mode rather than no_grad: it also skips version counting and view tracking,
# which is a visible share of a one-token step on a small model.
@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extends input_ids (batch, seq) by max_new_tokens sampled tokens.

    The prompt is run once to fill the cache, then one token per step. temperature 0
    means greedy decoding; top_k keeps only the k most likely tokens before sampling.

    Returns:
        (batch, seq + max_new_tokens) token ids.
    Raises:
        SequenceTooLongError: prompt plus new tokens exceed max_position_embeddings.
        ValueError: negative temperature or non-positive top_k.
    """
    if temperature < 0:
        raise ValueError(f"temperature={temperature}: must be ≥ 0")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k={top_k}: must be positive")
    total = input_ids.shape[1] + max_new_tokens
    limit = model.config.max_position_embeddings
    if total > limit:
        raise SequenceTooLongError(
            f"prompt + max_new_tokens = {total} exceeds max_position_embeddings={limit}"
        )
    was_training = model.training
    model.eval()
    cache = model.new_cache(total)
    out = [input_ids]
    step_input = input_ids
    for _ in range(max_new_tokens):
        logits = model(step_input, cache=cache, logits_to_keep=1).logits[:, -1].float()
        if temperature == 0:
            step_input = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None:
                kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = logits.softmax(dim=-1)
            step_input = torch.multinomial(probs, 1, generator=generator)
        out.append(step_input)
    model.train(was_training)
    return torch.cat(out, dim=1)
