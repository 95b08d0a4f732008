"""A generative (TIGER) run behind the run API: the same calls as a scoring run, answered by beam
search over the items' semantic IDs.

The decoder spells each recommended item code by code along a trie of the items' IDs, so an
answer's score is the log-probability of the item's ID given the history, best first (a run
trained with ``cold_share`` interleaves its untrained items at their share of the list). The
history, ``exclude_items`` and category filters are pruned from the trie before decoding, so a
filtered request still gets ``k`` items while ``k`` remain; ``k`` is at most the run's beam
size, as the beams are the whole answer. A new item gets its codes from the quantiser stored
with the run (:mod:`recsys.semantic_ids`) and joins the trie at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from recsys.api.index import ItemIndex
from recsys.api.run import Run, Unsupported, as_sequences, item_vectors
from recsys.cli import fail
from recsys.processed import ProcessedData, left_pad
from recsys.semantic_ids import RUN_QUANTISER, load_run_quantiser


class GenerativeRun(Run):
    """A loaded TIGER run: :class:`~recsys.api.run.Run`'s calls, by beam search."""

    def __init__(
        self,
        model: Any,
        config: dict[str, Any],
        data: ProcessedData,
        run_dir: Path,
        checkpoint: Path,
        **options: Any,
    ) -> None:
        # Before the base class replays the items added earlier, which need it.
        self.quantiser = load_run_quantiser(
            Path(run_dir), model.config.code_vocab, model.item_codes.cpu().numpy()
        )
        self.beam_size = int(model.config.beam_size)
        super().__init__(model, config, data, run_dir, checkpoint, **options)

    # ----------------------------------------------------------------------------- facts
    @property
    def accepts_new_items(self) -> bool:
        return self.quantiser is not None

    @property
    def _new_items_refusal(self) -> str:
        return (
            f"run {self.name} was trained before runs kept their quantiser ({RUN_QUANTISER}), "
            "so a new item cannot get semantic IDs; retrain it to add items"
        )

    @property
    def ranking(self) -> str:
        return f"beam search over semantic IDs (beam {self.beam_size})"

    @property
    def max_k(self) -> int:
        return min(self.beam_size, super().max_k)

    def check_k(self, k: int, name: str = "k") -> None:
        """``k`` is at most the beam size: the beams are every item an answer can hold."""
        if k > self.beam_size:
            raise fail(
                f"{name} {k} is more than the beam size {self.beam_size} of generative run "
                f"{self.name}: it recommends only the items its beams find; ask for at most "
                f"{self.beam_size}"
            )
        super().check_k(k, name)

    def _open_index(self, checkpoint: Path) -> ItemIndex | None:
        return None  # beam search ranks; ``similar`` builds its own index of the table

    # --------------------------------------------------------------------------- ranking
    @torch.inference_mode()
    def _rank(
        self,
        histories: Sequence[np.ndarray],
        users: np.ndarray,
        k: int,
        exclude: Sequence[np.ndarray] | None,
        allowed: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The first ``k`` of each history's beams, pruned of its ``exclude`` and of the items
        not ``allowed`` while decoding; their scores are log-probabilities."""
        histories = as_sequences(histories)
        ids = np.zeros((len(histories), k), dtype=np.int64)
        scores = np.full((len(histories), k), -np.inf, dtype=np.float32)
        mask = torch.from_numpy(allowed).to(self.device)
        for rows, item_seq in self._batches(histories):
            pruned = None
            if exclude is not None:
                banned = [np.asarray(exclude[row], dtype=np.int64) for row in rows]
                width = max(1, max(len(b) for b in banned))
                pruned = torch.from_numpy(left_pad(banned, width)).to(self.device)
            items, log_probs = self.model.generate(item_seq, self.beam_size, pruned, mask)
            items = items[:, :k].cpu().numpy()
            ids[rows] = np.maximum(items, 0)  # -1: a spare beam, no item left
            scores[rows] = np.where(items > 0, log_probs[:, :k].float().cpu().numpy(), -np.inf)
        return ids, scores

    # ------------------------------------------------------------------------- new items
    @property
    def text_dim(self) -> int:
        assert self.quantiser is not None
        return self.quantiser.quantiser.dim

    def _load_text_encoder(self) -> Callable[[list[str]], np.ndarray]:
        """The encoder, with the settings, of the vectors the run's quantiser read."""
        assert self.quantiser is not None
        return self.quantiser.text_encoder(str(self.device))

    def _new_rows(self, new: pd.DataFrame, vectors: np.ndarray) -> torch.Tensor:
        """Give ``new`` items semantic IDs through the run's quantiser and put them in the trie;
        their table rows (for ``similar``) are the sums of their code embeddings."""
        assert self.quantiser is not None
        ids = self.quantiser.new_ids(vectors, self.model.item_codes.cpu().numpy())
        spelled = self.model.config.code_vocab[-1]
        full = np.flatnonzero(ids[:, -1] >= spelled)
        if len(full):
            row = int(full[0])
            raise Unsupported(
                f"new item {new['item_id'].iloc[row]!r} quantises to the codes "
                f"{tuple(ids[row, :-1].tolist())}, which {spelled} items already have: as many "
                f"as run {self.name} tells apart, so it could be generated only after retraining"
            )
        self.model.add_items(torch.from_numpy(ids))
        return item_vectors(self.model)[-len(new) :]
