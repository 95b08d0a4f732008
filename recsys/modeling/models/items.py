"""The item side that every scoring family shares: the item table, the candidate set of the
training loss, and scoring a history against the table.

The table is tied: the same rows embed the input items and score the next one. A row is a
learned id embedding (``id``), a learned projection of frozen text vectors (``text``), their sum
(``hybrid``), or the sum of the item's semantic-ID code embeddings (``codes``). Because a text or
codes row comes from the item's content, those representations can score items never seen in
training; ``hybrid`` gives such an item (no training target) its text part alone, as its id row
was never trained.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from recsys.modeling.models.base import Recommender
from recsys.modeling.models.config import TEXT_REPRS, ModelConfig
from recsys.modeling.models.losses import item_loss


def checked_codes(config: ModelConfig, item_codes: Tensor | None) -> Tensor:
    """The items' semantic IDs [n_catalogue + 1, levels] as int64, checked against the config."""
    if item_codes is None:
        raise ValueError(
            f"item_repr={config.item_repr} needs the items' semantic IDs (item_codes)"
        )
    expected = (config.n_catalogue + 1, len(config.code_vocab))
    if tuple(item_codes.shape) != expected:
        raise ValueError(
            f"item codes have shape {tuple(item_codes.shape)}, expected {expected} "
            "= (n_catalogue + 1, levels)"
        )
    codes = item_codes.long().clone()
    if (codes[1:] < 0).any() or (codes[1:] >= torch.tensor(config.code_vocab)).any():
        raise ValueError(f"item codes fall outside the vocabulary sizes {config.code_vocab}")
    return codes


def level_offsets(vocab: tuple[int, ...]) -> Tensor:
    """Where each level's rows start in a table that stacks the levels' code embeddings."""
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.tensor(vocab).cumsum(0)[:-1]])


def summed_code_rows(table: nn.Embedding, item_codes: Tensor, offsets: Tensor) -> Tensor:
    """Each item as the sum of its codes' rows of ``table`` [n_catalogue + 1, d]; row 0 zero."""
    rows = table((item_codes + offsets).clamp(min=0)).sum(dim=1)
    return rows * (item_codes[:, :1] >= 0)


class ItemScorer(Recommender):
    """A family that turns a history into hidden states and scores them against the item table.

    A subclass builds its own encoder, calls :meth:`_build_items` and implements
    :meth:`encode`; the loss, the scores and the table come from here.
    """

    def _build_items(
        self, config: ModelConfig, item_features: Tensor | None, item_codes: Tensor | None
    ) -> None:
        d = config.d_model
        n_rows = config.n_catalogue + 1
        if config.item_repr == "codes":  # a compact table: a few hundred code rows
            self.register_buffer("item_codes", checked_codes(config, item_codes))
            offsets = level_offsets(config.code_vocab)
            self.register_buffer("level_offsets", offsets, persistent=False)
            self.code_emb = nn.Embedding(sum(config.code_vocab), d)
        if config.item_repr in ("id", "hybrid"):
            self.item_emb = nn.Embedding(n_rows, d, padding_idx=0)
        if config.item_repr in TEXT_REPRS:
            if item_features is None:
                item_features = torch.zeros(n_rows, config.feature_dim)
            if tuple(item_features.shape) != (n_rows, config.feature_dim):
                raise ValueError(
                    f"item features have shape {tuple(item_features.shape)}, expected "
                    f"({n_rows}, {config.feature_dim}) = (n_catalogue + 1, feature_dim)"
                )
            # Frozen and saved with the weights, so a checkpoint needs no feature file.
            self.register_buffer("item_features", item_features.detach().float().clone())
            self.text_proj = nn.Linear(config.feature_dim, d)
        # Items the training loss may use as candidates (cold-start runs switch some off).
        candidates = torch.zeros(n_rows, dtype=torch.bool)
        candidates[1 : config.n_items + 1] = True
        self.register_buffer("candidate_mask", candidates)
        # Training-target counts for popularity negatives and logQ; set by the trainer.
        self.register_buffer("item_counts", candidates.float(), persistent=False)
        # Items trained on (count > 0): a hybrid model describes every other item by its text
        # alone, since its id row never moved from the random init. Saved with the weights.
        self.register_buffer("id_trained", candidates.clone())

    @torch.no_grad()
    def _init_embeddings(self, std: float) -> None:
        """Every embedding table from N(0, std), its padding row zero."""
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
                if module.padding_idx is not None:
                    module.weight[module.padding_idx].zero_()

    def set_item_counts(self, counts: Tensor) -> None:
        """Training-target counts per item: popularity for sampling, and which ids are trained."""
        self.item_counts.copy_(counts.float())
        self.id_trained.copy_(counts > 0)

    def item_table(self) -> Tensor:
        """Item representations [n_catalogue + 1, d_model]: the input and output table.

        In inference mode a text or codes table is built once per state of the weights: it is a
        pass over the whole catalogue, which scoring would otherwise repeat for every batch of
        users. A training step, a loaded checkpoint, swapped-in averaged weights or an edited
        buffer changes the state, and so rebuilds it."""
        if self.config.item_repr == "id" or not torch.is_inference_mode_enabled():
            return self._build_item_table()
        key = self._table_key()
        cached = self.__dict__.get("_inference_table")
        if cached is None or cached[0] != key:
            cached = (key, self._build_item_table())
            self.__dict__["_inference_table"] = cached
        return cached[1]

    def _table_key(self) -> tuple:
        """The state the table depends on: the autocast setting, each buffer's identity and
        version, and each parameter's sum. Weight averaging swaps parameters in through
        ``.data``, which no version counter sees; the sums do."""
        autocast = tuple(
            (torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in ("cpu", "cuda")
        )
        buffers = tuple((id(b), b._version) for b in self.buffers())
        sums = torch.stack([p.detach().float().sum() for p in self.parameters()])
        return autocast, buffers, tuple(sums.tolist())

    def _build_item_table(self) -> Tensor:
        if self.config.item_repr == "codes":
            return summed_code_rows(self.code_emb, self.item_codes, self.level_offsets)
        table = None
        if self.config.item_repr in ("id", "hybrid"):
            table = self.item_emb.weight
        if self.config.item_repr in TEXT_REPRS:
            text = self.text_proj(self.item_features)
            if table is None:
                table = text
            else:  # an untrained id row would only add noise: such items are their text
                table = table * self.id_trained[:, None].to(table.dtype) + text
        return table

    def embed_items(self, item_seq: Tensor, table: Tensor) -> Tensor:
        """The table's rows for a batch of item ids, scaled by sqrt(d_model) as in SASRec."""
        x = torch.nn.functional.embedding(item_seq, table)
        if self.config.scale_embeddings:
            x = x * math.sqrt(self.config.d_model)
        return x

    def encode(
        self,
        item_seq: Tensor,
        users: Tensor | None = None,
        table: Tensor | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Hidden states [B, L, d] of a left-padded batch (``last_only``: [B, 1, d], the state
        that scores the next item)."""
        raise NotImplementedError

    def query(self, item_seq: Tensor, users: Tensor | None, table: Tensor) -> Tensor:
        """The vector [B, d] whose inner product with an item's ``table`` row is that item's
        next-item score: the state after each sequence's last item."""
        return self.encode(item_seq, users, table, last_only=True)[:, -1, :]

    def training_positions(self, item_seq: Tensor, targets: Tensor) -> Tensor:
        """[B, L]: the positions that train, where both the input and the target are items."""
        return (targets > 0) & (item_seq > 0)

    @torch.no_grad()
    def score(
        self, item_seq: Tensor, users: Tensor | None = None, exclude: Tensor | None = None
    ) -> Tensor:
        """Next-item scores [B, n_catalogue + 1] after each sequence's last item (col 0: -inf).
        ``exclude`` is for generative families; ranking masks the history afterwards."""
        table = self.item_table()
        scores = self.query(item_seq, users, table) @ table.T
        scores[:, 0] = float("-inf")
        return scores

    def forward(self, item_seq: Tensor, users: Tensor | None = None) -> Tensor:
        """Scores at every position [B, L, n_catalogue + 1], for inspection (training: loss)."""
        table = self.item_table()
        return self.encode(item_seq, users, table) @ table.T

    def loss(self, item_seq: Tensor, targets: Tensor, users: Tensor | None = None) -> Tensor:
        """Mean loss (``config.loss``) over the :meth:`training_positions` of a batch."""
        table = self.item_table()
        hidden = self.encode(item_seq, users, table)
        keep = self.training_positions(item_seq, targets)
        return item_loss(
            self.config, hidden[keep], targets[keep], table, self.candidate_mask, self.item_counts
        )
