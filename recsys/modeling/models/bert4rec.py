"""BERT4Rec (Sun et al. 2019): bidirectional blocks trained by masked-item prediction
(family ``bert4rec``).

Training hides ``mask_ratio`` of a window's items behind a learned mask vector (each window
hides at least one) and predicts them from both sides, against the tied item table; a
``mask_last_share`` of the windows hide their most recent item alone, the inference task. The next
item is scored by appending a mask after the history and reading its state. Positions count
back from the most recent item, so the appended mask is always position 0. No I/O here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from recsys.modeling.models.blocks import Decoder, item_positions
from recsys.modeling.models.config import ModelConfig
from recsys.modeling.models.items import ItemScorer
from recsys.modeling.models.losses import item_loss


class BERT4Rec(ItemScorer, Decoder):
    """Next-item scores from bidirectional blocks over the history and a trailing mask."""

    def __init__(
        self,
        config: ModelConfig,
        item_features: Tensor | None = None,
        item_codes: Tensor | None = None,
    ) -> None:
        super().__init__(config, config.max_len + 1)  # a window: max_len items and a mask
        self._build_items(config, item_features, item_codes)
        self.mask_emb = nn.Parameter(torch.zeros(config.d_model))
        self._init_weights()
        nn.init.normal_(self.mask_emb, std=0.02)

    def attention_mask(self, real: Tensor) -> Tensor:
        """[B, 1, T, T]: every real position sees every other; padding keeps itself only."""
        diagonal = torch.eye(real.shape[1], dtype=torch.bool, device=real.device)
        return real[:, None, None, :] | diagonal

    def _hidden(self, tokens: Tensor, masked: Tensor, table: Tensor, last_only: bool) -> Tensor:
        """States of ``tokens`` [B, T] (0: padding) with ``masked`` [B, T] positions hidden."""
        real = (tokens > 0) | masked
        x = self.embed_items(tokens.masked_fill(masked, 0), table)
        scale = math.sqrt(self.config.d_model) if self.config.scale_embeddings else 1.0
        x = torch.where(masked[..., None], self.mask_emb * scale, x)
        positions = item_positions(real.flip(1)).flip(1)
        return self.transform(x + self.position_vectors(positions), real, last_only)

    def encode(
        self,
        item_seq: Tensor,
        users: Tensor | None = None,
        table: Tensor | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """The states [B, L, d] of the history with a mask appended, the mask's state last
        (``last_only``: that state alone, [B, 1, d])."""
        if item_seq.shape[1] > self.config.max_len:
            item_seq = item_seq[:, -self.config.max_len :]
        table = self.item_table() if table is None else table
        tokens = torch.cat([item_seq, torch.zeros_like(item_seq[:, :1])], dim=1)
        masked = torch.zeros_like(tokens, dtype=torch.bool)
        masked[:, -1] = True
        return self._hidden(tokens, masked, table, last_only)[:, -item_seq.shape[1] :]

    def cloze(self, window: Tensor) -> Tensor:
        """[B, T] bool: the items of ``window`` to hide, ``mask_ratio`` of them at random and at
        least the most recent one of a row that would hide none; or, in ``mask_last_share`` of
        the rows, the most recent one alone."""
        real = window > 0
        masked = (torch.rand(window.shape, device=window.device) < self.config.mask_ratio) & real
        masked[:, -1] |= ~masked.any(dim=1) & real[:, -1]
        last_only = torch.rand(len(window), device=window.device) < self.config.mask_last_share
        masked[last_only] = False
        masked[last_only, -1] = real[last_only, -1]
        return masked

    def loss(self, item_seq: Tensor, targets: Tensor, users: Tensor | None = None) -> Tensor:
        """Mean loss of predicting the hidden items of each window (its inputs and its last
        target), from what the window shows. A left-padded window's first item is an input with
        no target, so the window is the inputs plus the last target, not the targets alone."""
        window = torch.cat([item_seq, targets[:, -1:]], dim=1)
        masked = self.cloze(window)
        table = self.item_table()
        hidden = self._hidden(window, masked, table, last_only=False)
        return item_loss(
            self.config,
            hidden[masked],
            window[masked],
            table,
            self.candidate_mask,
            self.item_counts,
        )
