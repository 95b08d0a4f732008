"""The causal decoder over item histories: SASRec and its GPT-style variants (family ``sasrec``).

The model reads a LEFT-padded item sequence and, at every position, predicts the next item as
the dot product of its last hidden state with the tied item table (:mod:`.items`).

Positions count real items only (from the first one, or back from the most recent one), and
padded keys are masked out of attention, so the same history scores the same however much left
padding it has, and no position's output depends on the items after it. Counted from the
start, a training position's output is exactly what ``score`` gives for that prefix.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from recsys.modeling.models.blocks import Decoder, item_positions
from recsys.modeling.models.config import ModelConfig
from recsys.modeling.models.items import ItemScorer


class SeqRecModel(ItemScorer, Decoder):
    """Next-item scores over the whole catalogue from a left-padded item history."""

    def __init__(
        self,
        config: ModelConfig,
        item_features: Tensor | None = None,
        item_codes: Tensor | None = None,
    ) -> None:
        super().__init__(config, config.max_len)
        self._build_items(config, item_features, item_codes)
        if config.use_user:
            d = config.d_model
            self.user_emb = nn.Embedding(config.n_users + 1, d, padding_idx=0)
            self.user_mlp = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, d))
        self._init_weights()

    def positions(self, real: Tensor) -> Tensor:
        """Each real item's position, counted from the first item or back from the last."""
        if self.config.position_origin == "start":
            return item_positions(real)
        return item_positions(real.flip(1)).flip(1)

    def encode(
        self,
        item_seq: Tensor,
        users: Tensor | None = None,
        table: Tensor | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Hidden states [B, L, d] for a left-padded batch; position t sees items <= t only.

        ``last_only``: the state after the last item alone, [B, 1, d] (what next-item scores
        read); the final block then computes one position instead of L.
        """
        batch, length = item_seq.shape
        if length > self.config.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len {self.config.max_len}")
        table = self.item_table() if table is None else table
        real = item_seq > 0
        x = self.embed_items(item_seq, table) + self.position_vectors(self.positions(real))
        x = self.transform(x, real, last_only)
        if self.config.use_user:
            if users is None:
                users = torch.zeros(batch, dtype=torch.long, device=item_seq.device)
            user = self.user_emb(users)[:, None, :].expand(-1, x.shape[1], -1)
            x = x + self.user_mlp(torch.cat([x, user], dim=-1))
        return x
