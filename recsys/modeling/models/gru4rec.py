"""GRU4Rec (Hidasi et al. 2016) with full cross-entropy at every position (family ``gru4rec``).

A GRU reads the history's item rows in order; a linear layer maps its state into the tied item
table's space. A GRU is causal by construction, so the left-padded batch is shifted to the
right-padded layout for the recurrence: the padding then comes after the items and never
reaches their states. No I/O here.
"""

from __future__ import annotations

from torch import Tensor, nn

from recsys.modeling.models.blocks import Dropout, shift_rows
from recsys.modeling.models.config import ModelConfig
from recsys.modeling.models.items import ItemScorer


class GRU4Rec(ItemScorer):
    """Next-item scores from a GRU over the left-padded history."""

    def __init__(
        self,
        config: ModelConfig,
        item_features: Tensor | None = None,
        item_codes: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self._build_items(config, item_features, item_codes)
        self.emb_dropout = Dropout(config.dropout)
        between = config.dropout if config.n_layers > 1 else 0.0
        self.gru = nn.GRU(d, d, num_layers=config.n_layers, batch_first=True, dropout=between)
        self.out = nn.Linear(d, d)
        self._init_embeddings(std=0.02)

    def encode(
        self,
        item_seq: Tensor,
        users: Tensor | None = None,
        table: Tensor | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Hidden states [B, L, d] (``last_only``: [B, 1, d]); position t read items <= t."""
        table = self.item_table() if table is None else table
        real = item_seq > 0
        padding = (~real).sum(dim=1)
        x = self.emb_dropout(self.embed_items(item_seq, table))
        states, _ = self.gru(shift_rows(x, padding))  # items first, padding after them
        hidden = self.out(shift_rows(states, -padding)) * real[..., None]
        return hidden[:, -1:] if last_only else hidden
