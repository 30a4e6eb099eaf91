"""The DeepSeek-V4 causal language model: embedding, hyper-connected blocks, head.

Module names are transformers' in-memory names (`model.embed_tokens`, `model.layers.N...`,
`model.hc_head`, `model.norm`, `lm_head`); `deepseek.v4.layout` maps them to the released
and the saved key names. The token ids travel with the hidden streams because hash-routed
MoE layers pick experts by token id. MTP layers are not built (transformers does not build
them either); their release keys are skipped on load.
"""

from __future__ import annotations

import torch
from torch import nn

from deepseek.layers import RMSNorm
from deepseek.model import CausalLM, CausalLMOutput, cross_entropy
from deepseek.v4.block import V4Block
from deepseek.v4.cache import V4Cache
from deepseek.v4.config import V4Config
from deepseek.v4.hyper import HyperHead
from deepseek.v4.moe import V4Router

# Parameters that start at zero or one rather than Normal(0, initializer_range), as in
# transformers: hyper-connection biases and temperatures, attention sinks, position biases.
_ZERO_INIT = ("base", "hc_base", "sinks", "position_bias", "bias")
_ONE_INIT = ("scale", "hc_scale")


class V4Model(nn.Module):
    """The decoder stack without the head (HF prefix `model.`)."""

    def __init__(self, config: V4Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(V4Block(config, i) for i in range(config.num_hidden_layers))
        self.hc_head = HyperHead(config)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class DeepseekV4ForCausalLM(CausalLM):
    """DeepSeek-V4, interchangeable with `deepseek.model.DeepseekForCausalLM` for training
    and generation (same forward, cache, generate and expert-bias methods)."""

    def __init__(self, config: V4Config) -> None:
        super().__init__()
        self.config = config
        self.model = V4Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """transformers' initialisation: Normal(0, initializer_range) weights, unit norms and
        temperatures, zero biases; plus a random hash table (transformers leaves it zero,
        which would send every token to expert 0)."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, V4Router):
                if module.e_score_correction_bias is not None:
                    module.e_score_correction_bias.zero_()
                if module.tid2eid is not None:
                    experts = module.weight.shape[0]
                    table = torch.rand(module.tid2eid.shape[0], experts).argsort(dim=-1)
                    module.tid2eid.copy_(table[:, : module.top_k])
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, RMSNorm) or name in _ONE_INIT:
                    p.fill_(1.0)
                elif name in _ZERO_INIT:
                    p.zero_()
                else:
                    p.normal_(0.0, std)

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        cache: V4Cache | None = None,
        logits_to_keep: int = 0,
    ) -> CausalLMOutput:
        """Logits for input_ids (batch, seq); losses when labels are given.

        Args:
            input_ids: token ids, the positions after those already in `cache`.
            labels: (batch, seq) next-token targets; IGNORE_INDEX (-100) entries are skipped.
            cache: decoding cache from `new_cache`; extended in place by this call.
            logits_to_keep: n > 0 computes logits for the last n positions only.
        Raises:
            SequenceTooLongError: the sequence would pass max_position_embeddings.
            ValueError: logits_to_keep with labels (the losses need every position).
        """
        s = input_ids.shape[1]
        start = self.first_position(s, labels, cache, logits_to_keep)
        x = self.model.embed_tokens(input_ids)
        streams = x.unsqueeze(2).expand(-1, -1, self.config.hc_mult, -1).contiguous()
        aux: list[torch.Tensor] = []
        # CSA layers' lightning indexers train on their own KL loss (V3.2's sparse stage).
        indexer_losses: list[torch.Tensor] | None = [] if labels is not None else None
        for i, layer in enumerate(self.model.layers):
            layer_cache = cache.layers[i] if cache is not None else None
            streams, layer_aux = layer(streams, input_ids, start, layer_cache, indexer_losses)
            if layer_aux is not None:
                aux.append(layer_aux)
        if cache is not None:
            cache.advance(s)
        last = streams[:, -logits_to_keep:] if logits_to_keep else streams
        logits = self.lm_head(self.model.norm(self.model.hc_head(last)))
        if labels is None:
            return CausalLMOutput(logits=logits)
        ce = cross_entropy(logits, labels)
        return CausalLMOutput.of_losses(logits, ce, None, aux, indexer_losses)

    def new_cache(self, capacity: int) -> V4Cache:
        """An empty decoding cache for sequences of up to `capacity` tokens."""
        return V4Cache(self.config, capacity)
