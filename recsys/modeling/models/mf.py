"""Matrix factorisation (family ``mf``): a user vector against the item table, no sequence.

Trained on the (user, item) pairs of the training sequences, with any loss of
:mod:`.losses`: BPR, SimpleX's CCL, sampled softmax with logQ, DirectAU or the full softmax.
A user's scores do not depend on the order of the history. By default a user is scored by
their trained vector, so a history of a user the model never trained on has none and is
refused. With ``fold_in_l2`` above 0 the history is folded in instead: the user vector is the
ridge fit of the history against the item table, as implicit ALS folds in a new user, so the
items a user added since training count, and new users are scored too. No I/O here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from recsys.modeling.models.config import ModelConfig
from recsys.modeling.models.items import ItemScorer

#: Initial spread of the user and item vectors.
INIT_STD = 0.1


class MatrixFactorization(ItemScorer):
    """Scores: a user vector times the item table."""

    @property
    def user_based(self) -> bool:  # type: ignore[override]
        """Scored by a trained vector per user, unless the history is folded in."""
        return self.config.fold_in_l2 == 0

    def __init__(
        self,
        config: ModelConfig,
        item_features: Tensor | None = None,
        item_codes: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self._build_items(config, item_features, item_codes)
        self.user_emb = nn.Embedding(config.n_users + 1, config.d_model, padding_idx=0)
        self._init_embeddings(std=INIT_STD)

    def encode(
        self,
        item_seq: Tensor,
        users: Tensor | None = None,
        table: Tensor | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Each row's user vector at every position [B, L, d] (``last_only``: [B, 1, d])."""
        if users is None or not bool((users > 0).all()):
            raise ValueError(
                "family mf scores the users it was trained on only, and this history has no "
                "known user: set fold_in_l2 above 0 to fold histories in, or use a sequence "
                "family (sasrec, gru4rec, bert4rec) for ad-hoc histories"
            )
        length = 1 if last_only else item_seq.shape[1]
        return self.user_emb(users)[:, None, :].expand(-1, length, -1)

    def training_positions(self, item_seq: Tensor, targets: Tensor) -> Tensor:
        """The (user, target) pairs train. A sequence's first item is never a target, so it is
        left out: adding it validated slightly lower on amazon-beauty and on ml-100k."""
        return targets > 0

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """One group: in MF the embeddings are the model, and weight decay is its L2."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "weight_decay": weight_decay}]

    def query(self, item_seq: Tensor, users: Tensor | None, table: Tensor) -> Tensor:
        """The trained user vector, or with ``fold_in_l2`` the history's :meth:`fold_in`."""
        if self.config.fold_in_l2 == 0:
            return super().query(item_seq, users, table)
        return self.fold_in(item_seq, table, self.config.fold_in_l2)

    def fold_in(self, item_seq: Tensor, table: Tensor, l2: float) -> Tensor:
        """User vectors [B, d] fitted to left-padded histories with the item table fixed.

        Each is the ridge solution of ``score(item) = 1`` for the history's items and 0 for every
        other candidate: ``(V'V + l2 * mean_eigenvalue(V'V) I)^-1`` times the sum of the
        history's rows. One d x d solve serves the whole batch.
        """
        rows = table[self.candidate_mask].float()
        gram = rows.T @ rows
        ridge = l2 * gram.diagonal().mean()
        gram = gram + ridge * torch.eye(len(gram), device=gram.device)
        real = (item_seq > 0)[..., None].to(table.dtype)
        summed = (table[item_seq] * real).sum(dim=1).float()
        return torch.linalg.solve(gram, summed.T).T.to(table.dtype)
