"""The contract between the Lightning module and a model family: a family is a
:class:`Recommender`, so training, validation, checkpoints and serving never ask which one."""

from __future__ import annotations

from math import inf
from typing import Any

import torch
from torch import Tensor, nn

from recsys.modeling.models.config import ModelConfig

#: Score cells masked and reduced at once by :meth:`Recommender.validation_loss`.
LOSS_BLOCK = 2**18


class Recommender(nn.Module):
    """A model that learns from item histories and scores the catalogue for the next item.

    ``loss(item_seq, targets, users)`` is the training loss of a left-padded batch;
    ``score(item_seq, users, exclude)`` gives next-item scores [B, n_catalogue + 1] (column 0
    -inf). ``generative`` families produce a list rather than score every item.
    """

    config: ModelConfig
    generative = False
    #: Scores come from a learned vector per user: a history without a known user has none.
    user_based = False

    @property
    def reads_users(self) -> bool:
        """Whether ``score`` reads the user ids (else it reads the history alone)."""
        return self.user_based or self.config.use_user

    def loss(self, item_seq: Tensor, targets: Tensor, users: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def score(
        self, item_seq: Tensor, users: Tensor | None = None, exclude: Tensor | None = None
    ) -> Tensor:
        raise NotImplementedError

    def set_item_counts(self, counts: Tensor) -> None:
        """Training-target counts per item, set by the trainer before the first step."""
        raise NotImplementedError

    def validation_loss(self, item_seq: Tensor, targets: Tensor, scores: Tensor) -> Tensor:
        """Summed cross-entropy of the next item [B] over the training candidates.

        A few rows at a time, each masked copy reduced to its log-sum-exp while it is in cache:
        a whole-batch log-softmax writes two more score-sized tensors."""
        blocked = ~self.candidate_mask
        picked = scores.gather(1, targets[:, None]).squeeze(1).masked_fill(blocked[targets], -inf)
        rows = max(1, LOSS_BLOCK // scores.shape[1])
        log_norms = [
            torch.logsumexp(part.masked_fill(blocked, -inf), 1) for part in scores.split(rows)
        ]
        return (torch.cat(log_norms) - picked).sum()

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: decay the matrices of linear and recurrent layers only, not norms,
        biases or embeddings."""
        decay, no_decay = [], []
        linear_weights = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
        for module in self.modules():
            if isinstance(module, nn.RNNBase):
                linear_weights |= {id(w) for n, w in module.named_parameters() if "weight" in n}
        for param in self.parameters():
            if param.requires_grad:
                (decay if id(param) in linear_weights else no_decay).append(param)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def n_params(self) -> int:
        """Trainable parameters (the frozen text vectors are a buffer, not counted)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
