"""What every generative family shares (TIGER's decoder-only model, its T5 encoder-decoder):
the items' semantic IDs as a prefix trie, items added after training, the beam search through
the trie with ``cold_share``, the dense head's ranking, and the list as scores. No I/O here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.modeling.models.base import Recommender


class ItemTrie(nn.Module):
    """The items' semantic IDs as a prefix tree, so that decoding can only spell real items.

    Depth d has one dense table [nodes at depth d, vocabulary of level d] of child node ids, -1
    where no item continues the prefix; at the last depth the children are the item ids. Tables
    are rebuilt from the codes, so they are buffers that a checkpoint does not store.
    """

    def __init__(self, item_codes: Tensor, items: Tensor, code_vocab: tuple[int, ...]) -> None:
        super().__init__()
        codes = item_codes[items].cpu().numpy()
        n_rows = len(item_codes)
        parents = np.zeros(len(items), dtype=np.int64)
        self.depths = len(code_vocab)
        for depth, vocab in enumerate(code_vocab):
            last = depth == self.depths - 1
            if last:
                nodes = items.cpu().numpy()
            else:
                _, nodes = np.unique(codes[:, : depth + 1], axis=0, return_inverse=True)
                nodes = nodes.reshape(-1)
            table = np.full((int(parents.max()) + 1, vocab), -1, dtype=np.int64)
            table[parents, codes[:, depth]] = nodes
            ancestor = np.full(n_rows, -1, dtype=np.int64)
            ancestor[items.cpu().numpy()] = nodes
            size = np.bincount(nodes, minlength=n_rows if last else 0)
            self.register_buffer(f"children_{depth}", torch.from_numpy(table), persistent=False)
            self.register_buffer(f"ancestor_{depth}", torch.from_numpy(ancestor), persistent=False)
            self.register_buffer(f"size_{depth}", torch.from_numpy(size), persistent=False)
            parents = nodes

    def child_table(self, depth: int) -> Tensor:
        return getattr(self, f"children_{depth}")

    def available(
        self, depth: int, exclude: Tensor | None, batch: int, allowed: Tensor | None = None
    ) -> Tensor:
        """[B or 1, nodes at depth + 1]: whether a child node has an item that is ``allowed``
        (bool [n_rows] or [B, n_rows]; None: every item) and outside the row's ``exclude``
        (left-padded item ids, 0 = none). Pruning here, not after decoding, keeps every beam
        on an item the request may get."""
        size, ancestor = getattr(self, f"size_{depth}"), getattr(self, f"ancestor_{depth}")
        if allowed is None:
            size = size[None, :]
        else:  # count the allowed items under each node instead of all of them
            allowed = allowed.reshape(-1, len(ancestor)) & (ancestor >= 0)
            counts = torch.zeros(len(allowed), len(size), dtype=size.dtype, device=size.device)
            size = counts.scatter_add_(1, ancestor.clamp(min=0).expand_as(allowed), allowed.long())
        if exclude is None:
            return size > 0
        items = exclude.sort(dim=1).values  # count each excluded item once
        first = torch.ones_like(items, dtype=torch.bool)
        first[:, 1:] = items[:, 1:] != items[:, :-1]
        nodes = ancestor[items]
        counted = first & (items > 0) & (nodes >= 0)
        if allowed is not None:  # an item that is not allowed was never counted
            counted &= allowed.expand(batch, -1).gather(1, items)
        excluded = torch.zeros(batch, size.shape[1], dtype=size.dtype, device=size.device)
        excluded.scatter_add_(1, nodes.clamp(min=0), counted.to(size.dtype))
        return size - excluded > 0


class TrieGenerator(Recommender):
    """What every generative family shares: the items' semantic IDs and their trie, items added
    after training, the beam search through the trie, ``cold_share``, and the list as scores.

    A subclass encodes a history once (:meth:`_start`) and gives the log-probabilities of each
    beam's next code (:meth:`_step`); it calls :meth:`_build_trie` in its constructor.
    """

    generative = True

    def _build_trie(self, codes: Tensor) -> None:
        self.register_buffer("item_codes", codes)
        self.trie = ItemTrie(codes, self.trie_items(), self.config.code_vocab)
        # Items with training targets (set by the trainer; saved): see ``cold_share``.
        trained = torch.zeros(self.config.n_catalogue + 1, dtype=torch.bool)
        trained[1 : self.config.n_items + 1] = True
        self.register_buffer("item_trained", trained)
        self._split_tries: tuple[ItemTrie, ItemTrie] | None = None

    @property
    def levels(self) -> int:
        return len(self.config.code_vocab)

    def item_log_probs(self, item_seq: Tensor, items: Tensor) -> Tensor:
        """log p(item's codes | history) [B], one item per row."""
        raise NotImplementedError

    def _start(self, item_seq: Tensor) -> dict[str, Any]:
        """What every beam search after the history ``item_seq`` reads (its encoding)."""
        raise NotImplementedError

    def _step(
        self, state: dict[str, Any], level: int, parents: Tensor | None, chosen: Tensor | None
    ) -> Tensor:
        """Log-probabilities [B, K, vocab of ``level``] of each beam's next code; ``parents``
        [B, K] are the beams these extend and ``chosen`` their codes at the level before (both
        None at level 0, with one beam)."""
        raise NotImplementedError

    def set_item_counts(self, counts: Tensor) -> None:
        """Training-target counts per item: which items the model has learned to spell."""
        self.item_trained.copy_(counts > 0)
        self._split_tries = None

    def trie_items(self) -> Tensor:
        """The items beam search spells: those with interactions (1..n_items) and those added
        after training (:meth:`add_items`); catalogue items without interactions stay out, as
        in training and evaluation."""
        device = self.item_codes.device
        added = torch.arange(self.config.n_catalogue + 1, len(self.item_codes), device=device)
        return torch.cat([torch.arange(1, self.config.n_items + 1, device=device), added])

    def add_items(self, codes: Tensor) -> Tensor:
        """Append items by their semantic IDs [m, levels], after every row so far, and put them
        in the trie at once (as untrained items, for ``cold_share``); returns their ids. An ID
        must lie in the vocabulary and be new: the trie names one item per ID."""
        codes = codes.to(self.item_codes)
        vocab = torch.tensor(self.config.code_vocab, device=codes.device)
        if codes.ndim != 2 or codes.shape[1] != self.levels or (codes < 0).any():
            raise ValueError(f"new items' codes must be [m, {self.levels}] and >= 0")
        if (codes >= vocab).any():
            raise ValueError(f"new items' codes fall outside the vocabulary {vocab.tolist()}")
        rows = torch.cat([self.item_codes, codes])
        if len(rows.unique(dim=0)) != len(rows):
            raise ValueError("new items' semantic IDs must differ from each other and all")
        first = len(self.item_codes)
        self.item_codes = rows
        untrained = torch.zeros(len(codes), dtype=torch.bool, device=rows.device)
        self.item_trained = torch.cat([self.item_trained, untrained])
        self.trie = ItemTrie(rows, self.trie_items(), self.config.code_vocab).to(rows.device)
        self._split_tries = None
        return torch.arange(first, len(rows), device=rows.device)

    def _tries(self) -> tuple[ItemTrie, ItemTrie]:
        """Tries of the trained items and of the others (``cold_share``), built on first use."""
        if self._split_tries is None:
            items = self.trie_items()
            trained = self.item_trained[items]
            self._split_tries = tuple(
                ItemTrie(self.item_codes, part, self.config.code_vocab).to(items.device)
                for part in (items[trained], items[~trained])
            )
        return self._split_tries

    def _query(self, state: dict[str, Any]) -> Tensor:
        """The state [B, d] that the dense head scores the items with (``dense_weight`` > 0)."""
        raise NotImplementedError

    @torch.no_grad()
    def generate(
        self,
        item_seq: Tensor,
        beam_size: int,
        exclude: Tensor | None = None,
        allowed: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The ``beam_size`` next items [B, K] in recommendation order, with their scores: the
        log-probabilities of a beam search in the trie (see :meth:`_beam_search`), or with
        ``ranking`` rescored or dense, the dense head's (:meth:`_rank_with_dense`). Items in
        ``exclude`` (left-padded ids) and items outside ``allowed`` (bool over the item rows,
        [n_rows] or [B, n_rows]) are pruned; a row with fewer items left than beams gets item -1
        at -inf in the spare places.

        With ``cold_share`` > 0, that share of the beams (at least one) is searched among the
        items never trained on, as TIGER recommends new items, and they take every
        1 / cold_share-th place of the list (:func:`cold_places`): a model never taught to
        spell an item would otherwise rank it below every item it was.
        """
        state = self._start(item_seq)
        places = self._cold_places(beam_size)
        items, log_probs = self._search(state, beam_size, places, exclude, allowed)
        if self.config.ranking == "beam":
            return items, log_probs
        return self._rank_with_dense(state, items, log_probs, places, exclude, allowed)

    def _search(
        self,
        state: dict[str, Any],
        beam_size: int,
        places: Tensor | None,
        exclude: Tensor | None,
        allowed: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """The beam search of :meth:`generate`, split by the cold ``places`` where there are
        any (:meth:`_cold_places`)."""
        if places is None:
            return self._beam_search(self.trie, state, beam_size, exclude, allowed)
        device = self.item_codes.device
        n_cold = int(places.sum())
        warm_trie, cold_trie = self._tries()
        warm = self._beam_search(warm_trie, state, beam_size - n_cold, exclude, allowed)
        cold = self._beam_search(cold_trie, state, n_cold, exclude, allowed)
        merged = []
        for ours, theirs in zip(warm, cold):
            out = torch.empty(len(ours), beam_size, dtype=ours.dtype, device=device)
            out[:, ~places], out[:, places] = ours, theirs
            merged.append(out)
        return merged[0], merged[1]

    def _cold_places(self, beam_size: int) -> Tensor | None:
        """The places of a list of ``beam_size`` that untrained items take (:func:`cold_places`),
        or None where they take none."""
        untrained = (~self.item_trained[self.trie_items()]).sum()
        if self.config.cold_share == 0 or beam_size < 2 or untrained == 0:
            return None
        return cold_places(beam_size, self.config.cold_share).to(self.item_codes.device)

    def dense_log_probs(
        self, state: dict[str, Any], exclude: Tensor | None, allowed: Tensor | None
    ) -> Tensor:
        """[B, item rows]: the dense head's log-softmax over the items open to each row (in the
        trie, allowed, not excluded): the query state against the items' code-embedding rows,
        which every item has, trained or not."""
        query = self._query(state)
        logits = query.float() @ self.item_table().float().T
        open_ = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        open_[self.trie_items()] = True
        open_ = open_[None, :] if allowed is None else open_ & allowed.reshape(-1, len(open_))
        open_ = open_.expand_as(logits).clone()
        if exclude is not None:
            open_.scatter_(1, exclude, False)
        open_[:, 0] = False
        return logits.masked_fill(~open_, float("-inf")).log_softmax(dim=-1)

    def _rank_with_dense(
        self,
        state: dict[str, Any],
        items: Tensor,
        log_probs: Tensor,
        places: Tensor | None,
        exclude: Tensor | None,
        allowed: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """The list by the dense head (``ranking: dense``), or by the dense log-probability plus
        the beam's (``rescored``, after LIGER): an item the beam missed counts the beam's lowest
        log-probability, a bound on what it left out, so the dense side can bring back items the
        beam never spells, cold ones among them. With cold ``places``, the cold beam's items keep
        them and the dense side ranks the trained items into the others: re-sorting the whole
        list pushed every untrained item out of it."""
        dense = combined = self.dense_log_probs(state, exclude, allowed)
        if self.config.ranking == "rescored":
            found = items >= 0
            floor = log_probs.masked_fill(~found, float("inf")).min(dim=1, keepdim=True).values
            combined = dense + torch.where(torch.isfinite(floor), floor, 0.0)
            rows = torch.arange(len(items), device=items.device)[:, None].expand_as(items)
            picked = rows[found], items[found]
            combined[picked] = dense[picked] + log_probs[found]
        if places is None:
            return _top_items(combined, items.shape[1])
        warm_items, warm_scores = _top_items(
            combined.masked_fill(~self.item_trained[None, :], float("-inf")), int((~places).sum())
        )
        items, log_probs = items.clone(), log_probs.clone()
        items[:, ~places], log_probs[:, ~places] = warm_items, warm_scores
        return items, log_probs

    def _beam_search(
        self,
        trie: ItemTrie,
        state: dict[str, Any],
        beam_size: int,
        exclude: Tensor | None,
        allowed: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """The ``beam_size`` most likely items of ``trie`` [B, K], best first, and their
        log-probabilities: level by level, every open child of every beam, the best kept."""
        state = dict(state)  # the steps replace their own entries; the encoding is shared
        batch, device = state["batch"], self.item_codes.device
        nodes = torch.zeros(batch, 1, dtype=torch.long, device=device)
        scores = torch.zeros(batch, 1, device=device)
        parents = chosen = None
        for level, vocab in enumerate(self.config.code_vocab):
            log_probs = self._step(state, level, parents, chosen)  # [B, K, V]
            children = trie.child_table(level)[nodes.clamp(min=0)]
            children = children.masked_fill((nodes < 0)[..., None], -1).flatten(1)
            open_ = trie.available(level, exclude, batch, allowed)
            open_ = open_.expand(batch, -1).gather(1, children.clamp(min=0)) & (children >= 0)
            total = (scores[..., None] + log_probs).flatten(1).masked_fill(~open_, float("-inf"))
            scores, picked = total.topk(min(beam_size, total.shape[1]), dim=1)
            nodes = children.gather(1, picked).masked_fill(scores == float("-inf"), -1)
            parents, chosen = picked // vocab, picked % vocab
        if nodes.shape[1] < beam_size:  # a trie with fewer items than beams
            spare = beam_size - nodes.shape[1]
            nodes = F.pad(nodes, (0, spare), value=-1)
            scores = F.pad(scores, (0, spare), value=float("-inf"))
        return nodes, scores

    @torch.no_grad()
    def score(
        self, item_seq: Tensor, users: Tensor | None = None, exclude: Tensor | None = None
    ) -> Tensor:
        """[B, item rows]: the generated items scored by their place in the list (0 for the
        first, then -1, -2, ...: the order :meth:`generate` recommends), -inf for the rest; the
        history ``exclude`` is pruned while decoding."""
        items, _ = self.generate(item_seq, self.config.beam_size, exclude)
        scores = torch.full(
            (len(item_seq), len(self.item_codes)), float("-inf"), device=item_seq.device
        )
        found = items >= 0
        rows = torch.arange(len(items), device=items.device)[:, None].expand_as(items)
        place = -torch.arange(items.shape[1], device=items.device, dtype=scores.dtype)
        scores[rows[found], items[found]] = place.expand_as(items)[found]
        return scores

    def validation_loss(self, item_seq: Tensor, targets: Tensor, scores: Tensor) -> Tensor:
        """Summed -log p(target's codes | history), token by token: the beam's places are ranks,
        not probabilities."""
        return -self.item_log_probs(item_seq, targets).sum()


def _top_items(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` best items [B, k] of ``scores`` [B, item rows] and their scores; item -1 at -inf
    where fewer are open."""
    best, top = scores.topk(min(k, scores.shape[1]), dim=1)
    spare = k - top.shape[1]
    best = F.pad(best, (0, spare), value=float("-inf"))
    top = F.pad(top, (0, spare), value=-1)
    return top.masked_fill(torch.isinf(best), -1), best


def cold_places(beam_size: int, cold_share: float) -> Tensor:
    """[beam_size] bool: the places of a list that go to never-trained items, ``cold_share`` of
    them (at least one, and at least one place left for the rest), spread evenly: the last
    place of each of n_cold equal stretches of the list."""
    n_cold = min(beam_size - 1, max(1, round(beam_size * cold_share)))
    ends = torch.arange(1, n_cold + 1) * beam_size // n_cold - 1
    places = torch.zeros(beam_size, dtype=torch.bool)
    places[ends] = True
    return places
