"""Generative retrieval over semantic IDs: TIGER (Rajput et al. 2023) on the shared blocks.

An item is the tuple of its semantic-ID codes; the decoder learns to spell the next item code by
code, and recommends by beam search in a trie of the catalogue's codes (:mod:`.trie`). No I/O
here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys.modeling.models.blocks import Decoder, KeyValues, causal_mask, item_positions
from recsys.modeling.models.config import ModelConfig
from recsys.modeling.models.items import checked_codes, level_offsets, summed_code_rows
from recsys.modeling.models.losses import full_softmax_loss
from recsys.modeling.models.trie import TrieGenerator


class SemanticDecoder(TrieGenerator, Decoder):
    """Generative retrieval over semantic IDs (TIGER, Rajput et al. 2023) on the same blocks.

    An item is the tuple of its L codes (``item_codes`` [n_catalogue + 1, L], row 0 the padding
    item, all -1). The decoder reads a history as its items' codes in order, one token each,
    embedded by level (one block of rows of ``token_emb`` per level) plus the item's position and
    the token's level, and learns to predict every next token. The output table is the input
    table, tied as in GPT: a level's logits are the hidden state against that level's rows.
    Recommending is a beam search in an :class:`~.trie.ItemTrie`, so every beam spells a real
    item, and items the user has seen are pruned from the trie before decoding starts.
    """

    def __init__(self, config: ModelConfig, item_codes: Tensor) -> None:
        super().__init__(config, config.max_len + 1)  # a window: max_len items and the next
        vocab = config.code_vocab
        sizes = torch.tensor(vocab)
        self._build_trie(checked_codes(config, item_codes))
        self.register_buffer("level_offsets", level_offsets(vocab), persistent=False)
        self.token_emb = nn.Embedding(int(sizes.sum()), config.d_model)
        self.level_emb = nn.Embedding(len(vocab), config.d_model)
        self._init_weights()

    def item_table(self) -> Tensor:
        """Each item as the sum of its code embeddings [n_catalogue + 1, d] (row 0 zero): its
        place in the learned space, for pictures of it. Ranking generates instead."""
        return summed_code_rows(self.token_emb, self.item_codes, self.level_offsets)

    def _tokens(self, item_seq: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """An item batch [B, n] as token ids, real flags, item positions and levels [B, n * L]."""
        real = item_seq > 0
        codes = self.item_codes[item_seq] + self.level_offsets
        levels = torch.arange(self.levels, device=item_seq.device).expand_as(codes)
        positions = item_positions(real)[..., None].expand_as(codes)
        flat = [t.flatten(1) for t in (codes.clamp(min=0), real[..., None].expand_as(codes))]
        return flat[0], flat[1], positions.flatten(1), levels.flatten(1)

    def _embed(self, tokens: Tensor, positions: Tensor, levels: Tensor) -> Tensor:
        x = self.token_emb(tokens)
        if self.config.scale_embeddings:
            x = x * math.sqrt(self.config.d_model)
        return x + self.position_vectors(positions) + self.level_emb(levels)

    def _level_logits(self, hidden: Tensor, level: int) -> Tensor:
        """Logits over ``level``'s own codes alone: no other level's token can come next, so
        the softmax over the whole vocabulary would only add zeros, at several times the cost."""
        offset, vocab = int(self.level_offsets[level]), self.config.code_vocab[level]
        return hidden @ self.token_emb.weight[offset : offset + vocab].T

    # ------------------------------------------------------------------------------ training
    def _teacher_forced(self, items: Tensor, last: Tensor) -> tuple[Tensor, ...]:
        """The windows ``items`` + ``last`` [B] read token by token: the hidden state before
        each token and that token, its level and whether both it and its input are real."""
        window = torch.cat([items, last[:, None]], dim=1)
        tokens, real, positions, levels = self._tokens(window)
        x = self._embed(tokens[:, :-1], positions[:, :-1], levels[:, :-1])
        hidden = self.transform(x, real[:, :-1])
        return hidden, tokens[:, 1:], levels[:, 1:], real[:, 1:] & real[:, :-1]

    def loss(self, item_seq: Tensor, targets: Tensor, users: Tensor | None = None) -> Tensor:
        """Mean cross-entropy of every next token of the windows ``item_seq`` + last target;
        with ``dense_weight``, plus that weight times the dense head's: the full softmax over
        the trained items of each state that comes before an item's first code."""
        hidden, tokens, levels, keep = self._teacher_forced(item_seq, targets[:, -1])
        loss = hidden.new_zeros((), dtype=torch.float32)
        for level in range(self.levels):
            rows = keep & (levels == level)
            logits = self._level_logits(hidden[rows], level).float()
            target = tokens[rows] - self.level_offsets[level]
            loss = loss + F.cross_entropy(logits, target, reduction="sum")
        loss = loss / keep.sum().clamp(min=1)
        if self.config.dense_weight == 0:
            return loss
        before_item = keep & (levels == 0)
        window = torch.cat([item_seq, targets[:, -1:]], dim=1)
        next_items = window.repeat_interleave(self.levels, dim=1)[:, 1:]
        dense = full_softmax_loss(
            hidden[before_item], next_items[before_item], self.item_table(), self.item_trained
        )
        return loss + self.config.dense_weight * dense

    @torch.no_grad()
    def item_log_probs(self, item_seq: Tensor, items: Tensor) -> Tensor:
        """log p(item's codes | history) [B], one item per row, token by token (teacher forced)."""
        hidden, tokens, _, _ = self._teacher_forced(item_seq, items)
        total = hidden.new_zeros(len(items))
        for level in range(self.levels):  # the item's own tokens close the window
            place = level - self.levels
            log_probs = torch.log_softmax(self._level_logits(hidden[:, place], level), -1)
            code = tokens[:, place] - self.level_offsets[level]
            total += log_probs.gather(1, code[:, None])[:, 0]
        return total

    # ---------------------------------------------------------------------------- retrieval
    def _start(self, item_seq: Tensor) -> dict[str, Any]:
        """The history's keys and values at every block, its last hidden state and the position
        of the item to generate: what every beam search after it reads (with no beam's own
        cache yet)."""
        tokens, real, positions, levels = self._tokens(item_seq)
        x = self.emb_dropout(self._embed(tokens, positions, levels) * real[..., None])
        mask, history, last = causal_mask(real), [], len(self.blocks) - 1
        for depth, block in enumerate(self.blocks):
            history.append(block.attn.keys_values(block.key_input(x, block.ln_1(x))))
            x = block(x, mask, last_only=depth == last)
        return {
            "batch": len(item_seq),
            "history": history,
            "real": real,
            "hidden": self.ln_f(x[:, -1:]),  # [B, 1, d]: one beam, the root
            "position": (item_seq > 0).sum(dim=1).clamp(max=self.config.max_len)[:, None],
            "caches": [None] * len(self.blocks),
        }

    def _query(self, state: dict[str, Any]) -> Tensor:
        """The state before the next item's first code: what the dense head reads."""
        return state["hidden"][:, 0]

    def _step(
        self, state: dict[str, Any], level: int, parents: Tensor | None, chosen: Tensor | None
    ) -> Tensor:
        """With the history cached, each level costs one position per beam."""
        hidden, real = state["hidden"], state["real"]
        if chosen is not None:
            caches = [_pick_beams(cache, parents) for cache in state["caches"]]
            token = chosen + self.level_offsets[level - 1]
            level_ids = torch.full_like(token, level - 1)
            x = self._embed(token, state["position"].expand_as(token), level_ids)
            for depth, block in enumerate(self.blocks):
                x, caches[depth] = block.step(x, state["history"][depth], real, caches[depth])
            state["caches"], hidden = caches, self.ln_f(x)
        return torch.log_softmax(self._level_logits(hidden, level), -1)


def _pick_beams(cache: KeyValues | None, parents: Tensor) -> KeyValues | None:
    """Each new beam's cache is its parent beam's."""
    if cache is None:
        return None
    index = parents[:, :, None, None, None].expand(-1, -1, *cache[0].shape[2:])
    return cache[0].gather(1, index), cache[1].gather(1, index)
