"""Matrix factorisation (family ``mf``): a user vector against the item table, no sequence.

Trained on the (user, item) pairs of the training sequences, with any loss of
:mod:`.losses`: BPR, SimpleX's CCL, sampled softmax with logQ, DirectAU or the full softmax.
A user's scores do not depend on the order of the history, only on the user: a history of a
user the model never trained on has no vector and is refused. No I/O here.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from recsys.modeling.models.config import ModelConfig
from recsys.modeling.models.items import ItemScorer

#: Initial spread of the user and item vectors.
INIT_STD = 0.1


class MatrixFactorization(ItemScorer):
    """Scores: a learned user vector times the item table."""

    user_based = True

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
                "known user: use a sequence family (sasrec, gru4rec, bert4rec) for ad-hoc "
                "histories"
            )
        length = 1 if last_only else item_seq.shape[1]
        return self.user_emb(users)[:, None, :].expand(-1, length, -1)

    def training_positions(self, item_seq: Tensor, targets: Tensor) -> Tensor:
        """Every (user, item) pair trains, the sequence's first item included."""
        return targets > 0

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """One group: in MF the embeddings are the model, and weight decay is its L2."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params, "weight_decay": weight_decay}]
