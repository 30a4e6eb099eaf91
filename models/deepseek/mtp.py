"""Multi-token prediction (DeepSeek-V3 §2.2).

MTP module k (1..D) predicts token t_{i+k+1} at position i from the previous depth's hidden
state h^{k-1}_i and the embedding of t_{i+k}:
    h^k_i = Block(eh_proj([enorm(Emb(t_{i+k})); hnorm(h^{k-1}_i)]))
    logits = head(shared_head.norm(h^k_i))
The embedding and output head are the main model's. The concatenation order (embedding
first) is the one the released V3 MTP weights were trained with (vLLM/SGLang
`DeepSeekMultiTokenPredictorLayer`). Parameter names follow the hub layout of
`model.layers.{num_hidden_layers + k - 1}`; the hub's copies of the shared embedding and
head (`embed_tokens`, `shared_head.head`) are handled by `deepseek.hf`.
"""

from __future__ import annotations

import torch
from torch import nn

from deepseek.block import Block
from deepseek.config import ModelConfig
from deepseek.layers import RMSNorm


class MTPLayer(Block):
    """A decoder block preceded by the MTP merge of hidden state and next-token embedding."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        h = config.hidden_size
        self.enorm = RMSNorm(h, config.rms_norm_eps)
        self.hnorm = RMSNorm(h, config.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * h, h, bias=False)
        self.shared_head = nn.ModuleDict({"norm": RMSNorm(h, config.rms_norm_eps)})

    def forward(  # type: ignore[override]
        self,
        hidden: torch.Tensor,
        embedded: torch.Tensor,
        rope: torch.Tensor,
        indexer_losses: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(h^{k-1}, Emb of the tokens k ahead), both (batch, seq, hidden) → (h^k, aux loss);
        a V3.2 layer appends its indexer's loss to `indexer_losses` as `Block` does."""
        x = self.eh_proj(torch.cat((self.enorm(embedded), self.hnorm(hidden)), dim=-1))
        return super().forward(x, rope, indexer_losses=indexer_losses)


def mtp_labels(labels: torch.Tensor, depth: int) -> torch.Tensor:
    """Targets of MTP depth `depth`: for next-token labels y (y_i = t_{i+1}), y[:, depth:].

    Position i of depth k predicts t_{i+k+1} = y_{i+k}; the last k positions have no target.
    """
    return labels[:, depth:]
