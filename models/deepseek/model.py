"""The causal language model: embedding, decoder blocks, final norm, head, MTP modules.

Module names follow the Hugging Face checkpoint layout (`model.embed_tokens`,
`model.layers.N...`, `model.norm`, `lm_head`), so conversion in `deepseek.hf` only has to
split stacked experts and move MTP layers. MTP modules (`mtp.k`) run only when labels are
given: inference never touches them. V3.2 models also train their lightning indexers when
labels are given (`CausalLMOutput.indexer_loss`), in the stage `dsa_stage` names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepseek.block import Block
from deepseek.cache import KVCache
from deepseek.config import ModelConfig
from deepseek.errors import ConfigError, SequenceTooLongError
from deepseek.generate import generate
from deepseek.indexer import DSA_STAGES, Indexer
from deepseek.layers import RMSNorm
from deepseek.moe import MoE, Router
from deepseek.mtp import MTPLayer, mtp_labels
from deepseek.rope import Rotary

# Initial weight std, transformers' `initializer_range` default for DeepSeek configs.
INIT_STD = 0.02
IGNORE_INDEX = -100


@dataclass
class CausalLMOutput:
    """What `DeepseekForCausalLM.forward` returns; losses only when labels were given."""

    logits: torch.Tensor
    """(batch, seq, vocab)."""
    loss: torch.Tensor | None = None
    """ce_loss + mtp_loss + aux_loss + indexer_loss: what training minimises."""
    ce_loss: torch.Tensor | None = None
    mtp_loss: torch.Tensor | None = None
    """λ/D·Σ_k CE_k over the MTP depths."""
    aux_loss: torch.Tensor | None = None
    """Sum of the MoE layers' α-weighted balance losses."""
    indexer_loss: torch.Tensor | None = None
    """V3.2: the lightning indexers' KL losses, averaged over layers. It trains the indexers
    only (their inputs and targets are detached), so adding it leaves the model's gradients
    as the other losses make them."""

    @classmethod
    def of_losses(
        cls,
        logits: torch.Tensor,
        ce_loss: torch.Tensor,
        mtp_loss: torch.Tensor | None = None,
        aux: list[torch.Tensor] | None = None,
        indexer: list[torch.Tensor] | None = None,
    ) -> CausalLMOutput:
        """The output of a training forward: the MoE layers' `aux` losses summed, the
        `indexer` losses averaged, and `loss` the sum of all that are there."""
        aux_loss = torch.stack(aux).sum() if aux else None
        indexer_loss = torch.stack(indexer).mean() if indexer else None
        loss = ce_loss
        for part in (mtp_loss, aux_loss, indexer_loss):
            if part is not None:
                loss = loss + part
        return cls(logits, loss, ce_loss, mtp_loss, aux_loss, indexer_loss)


class DeepseekModel(nn.Module):
    """The decoder stack without the head (HF prefix `model.`)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss of logits (batch, seq, vocab) in fp32, skipping IGNORE_INDEX."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX
    )


class CausalLM(nn.Module):
    """What every DeepSeek generation's model shares with the training loop and generation:
    the call check, MoE bias updates and sampling. A subclass sets `config` (with
    `max_position_embeddings`) and implements `forward` and `new_cache`."""

    config: Any

    def first_position(
        self, tokens: int, labels: torch.Tensor | None, cache: Any, logits_to_keep: int
    ) -> int:
        """The position of a forward call's first token (the cache's length, 0 without one),
        once the call is checked.

        Raises:
            SequenceTooLongError: the sequence would pass max_position_embeddings.
            ValueError: logits_to_keep with labels (the losses need every position).
        """
        if logits_to_keep and labels is not None:
            raise ValueError("logits_to_keep must be 0 when labels are given")
        start = cache.length if cache is not None else 0
        limit = self.config.max_position_embeddings
        if start + tokens > limit:
            raise SequenceTooLongError(
                f"sequence of {start + tokens} tokens exceeds max_position_embeddings={limit}; "
                "shorten it or use a config with a longer context"
            )
        return start

    def moe_layers(self) -> list[MoE]:
        """Every MoE layer, main stack first, then MTP."""
        return [m for m in self.modules() if isinstance(m, MoE)]

    def update_expert_bias(
        self, total: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> torch.Tensor | None:
        """Runs `MoE.update_bias` on every MoE layer after an optimiser step; ``total`` sums a
        layer's loads over the job's replicas (see `MoE.update_bias`).

        Returns:
            (moe_layers, experts) tokens routed per expert since the previous call (totalled),
            or None for a dense model.
        """
        loads = [layer.update_bias(total) for layer in self.moe_layers()]
        return torch.stack(loads) if loads else None

    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Samples continuations with a decoding cache; see `deepseek.generate.generate`."""
        return generate(self, input_ids, max_new_tokens, temperature, top_k, generator)


class DeepseekForCausalLM(CausalLM):
    """Any DeepSeek generation up to V3.2, chosen by its `ModelConfig`."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DeepseekModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        L = config.num_hidden_layers
        self.mtp = nn.ModuleList(
            MTPLayer(config, L + k) for k in range(config.num_nextn_predict_layers)
        )
        self.rotary = Rotary(config.rope, config.rope_dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, 0.02) weights, zero biases, unit norms, zero routing bias."""
        for module in self.modules():
            norm = isinstance(module, (RMSNorm, nn.LayerNorm))
            if norm:
                module.weight.fill_(1.0)
            elif isinstance(module, Router) and module.e_score_correction_bias is not None:
                module.e_score_correction_bias.zero_()
            for name, p in module.named_parameters(recurse=False):
                if norm and name == "weight":
                    continue
                if name == "bias":
                    p.zero_()
                else:
                    p.normal_(0.0, INIT_STD)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_to_keep: int = 0,
    ) -> CausalLMOutput:
        """Logits for input_ids (batch, seq); losses when labels are given.

        Args:
            input_ids: token ids, the positions after those already in `cache`.
            labels: (batch, seq) next-token targets (labels[:, i] follows input_ids[:, i]);
                IGNORE_INDEX (-100) entries are skipped.
            cache: decoding cache; extended in place by this call.
            logits_to_keep: n > 0 computes logits for the last n positions only, (batch, n,
                vocab) (generation needs just the last: a prompt's other positions would
                cost seq·hidden·vocab multiply-adds for nothing); 0 keeps every position.
        Raises:
            SequenceTooLongError: the sequence would pass max_position_embeddings.
            ValueError: logits_to_keep with labels (the losses need every position).
        """
        s = input_ids.shape[1]
        start = self.first_position(s, labels, cache, logits_to_keep)
        rope = self.rotary.table(start, start + s)
        x = self.model.embed_tokens(input_ids)
        aux: list[torch.Tensor] = []
        train_indexers = labels is not None and self.config.has_indexer
        indexer_losses: list[torch.Tensor] | None = [] if train_indexers else None
        for i, layer in enumerate(self.model.layers):
            layer_cache = cache.layers[i] if cache is not None else None
            x, layer_aux = layer(x, rope, layer_cache, indexer_losses=indexer_losses)
            if layer_aux is not None:
                aux.append(layer_aux)
        last = x[:, -logits_to_keep:] if logits_to_keep else x
        logits = self.lm_head(self.model.norm(last))
        if labels is None:
            return CausalLMOutput(logits=logits)

        ce = cross_entropy(logits, labels)
        mtp_loss = None
        depths = len(self.mtp)
        if depths and s > depths:
            losses = []
            hidden = x
            for k, layer in enumerate(self.mtp, start=1):
                embedded = self.model.embed_tokens(input_ids[:, k:])
                hidden, layer_aux = layer(
                    hidden[:, :-1], embedded, rope[: s - k], indexer_losses=indexer_losses
                )
                if layer_aux is not None:
                    aux.append(layer_aux)
                mtp_logits = self.lm_head(layer.shared_head["norm"](hidden))
                losses.append(cross_entropy(mtp_logits, mtp_labels(labels, k)))
            mtp_loss = self.config.mtp_loss_weight / depths * torch.stack(losses).sum()
        return CausalLMOutput.of_losses(logits, ce, mtp_loss, aux, indexer_losses)

    @property
    def dsa_stage(self) -> str | None:
        """V3.2 training stage of every lightning indexer: "dense" (warm-up: attention over
        every causal key, indexer loss over them all) or "sparse" (attention and loss over
        the selected keys; the default, and how the released models run); None without
        indexers."""
        stages = {m.stage for m in self.modules() if isinstance(m, Indexer)}
        assert len(stages) <= 1, "indexers disagree on the stage"
        return stages.pop() if stages else None

    @dsa_stage.setter
    def dsa_stage(self, stage: str) -> None:
        if stage not in DSA_STAGES:
            raise ConfigError(f"dsa_stage={stage!r}: use one of {DSA_STAGES}")
        if not self.config.has_indexer:
            raise ConfigError(
                f"dsa_stage={stage!r}: model_type {self.config.model_type} has no sparse "
                "attention (only deepseek_v32 has)"
            )
        for module in self.modules():
            if isinstance(module, Indexer):
                module.stage = stage

    def new_cache(self, capacity: int) -> KVCache:
        """An empty decoding cache for sequences of up to `capacity` tokens."""
        return KVCache(len(self.model.layers), capacity)
