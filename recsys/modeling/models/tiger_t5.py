"""TIGER as an encoder-decoder (``item_repr: semantic``, ``generator: t5``): a small T5 from
``transformers`` reads the history's semantic-ID codes and generates the next item's, as in
Rajput et al. (2023), against the decoder-only :class:`~.tiger.SemanticDecoder` on the same IDs.

Tokens: 0 is padding and the decoder's start; a code ``c`` of level ``l`` is
``1 + level_offsets[l] + c``. Each training position of a window is one example: the history up
to it (re-aligned to the right) is encoded, and the next item's codes are decoded with teacher
forcing. Decoding restricts each step to its level's tokens, and beam search walks the items'
trie (:class:`~.trie.TrieGenerator`). No I/O here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from recsys.arrays import length_groups
from recsys.modeling.models.config import ModelConfig
from recsys.modeling.models.blocks import shift_rows
from recsys.modeling.models.items import checked_codes, level_offsets, summed_code_rows
from recsys.modeling.models.trie import TrieGenerator


class T5Generator(TrieGenerator):
    """Generative retrieval by a T5 encoder-decoder over semantic-ID tokens."""

    def __init__(self, config: ModelConfig, item_codes: Tensor) -> None:
        super().__init__()
        from transformers import T5Config, T5ForConditionalGeneration

        self.config = config
        vocab = config.code_vocab
        n_tokens = 1 + sum(vocab)
        self._build_trie(checked_codes(config, item_codes))
        self.register_buffer("level_offsets", level_offsets(vocab) + 1, persistent=False)
        levels = torch.repeat_interleave(torch.arange(len(vocab)), torch.tensor(vocab))
        bias = torch.full((len(vocab), n_tokens), float("-inf"))
        bias[levels, torch.arange(1, n_tokens)] = 0.0
        self.register_buffer("level_bias", bias, persistent=False)  # 0 on a level's own tokens
        t5_config = T5Config(
            vocab_size=n_tokens,
            d_model=config.d_model,
            d_kv=config.d_model // config.n_heads,
            d_ff=config.d_ff or 4 * config.d_model,
            num_layers=config.n_layers,
            num_decoder_layers=config.n_layers,
            num_heads=config.n_heads,
            dropout_rate=config.dropout,
            feed_forward_proj="relu",
            pad_token_id=0,
            decoder_start_token_id=0,
            eos_token_id=0,
            tie_word_embeddings=True,
        )
        self.t5 = T5ForConditionalGeneration(t5_config)

    def item_table(self) -> Tensor:
        """Each item as the sum of its code embeddings [n_catalogue + 1, d] (row 0 zero)."""
        return summed_code_rows(self.t5.shared, self.item_codes, self.level_offsets)

    # ------------------------------------------------------------------------------ tokens
    def _encode(self, item_seq: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder's states [B, n * L, d] of left-padded items [B, n], one per token, and
        their attention mask."""
        real = item_seq > 0
        tokens = (self.item_codes[item_seq] + self.level_offsets) * real[..., None]
        mask = real[..., None].expand_as(tokens).flatten(1).long()
        encoded = self.t5.get_encoder()(input_ids=tokens.flatten(1), attention_mask=mask)
        return encoded.last_hidden_state, mask

    def _item_tokens(self, items: Tensor) -> Tensor:
        """The tokens [N, L] that spell ``items`` [N]."""
        return self.item_codes[items] + self.level_offsets

    def _level_log_probs(self, logits: Tensor) -> Tensor:
        """Log-probabilities of decoder steps [..., L', V], each over its own level's tokens."""
        levels = logits.shape[-2]
        return torch.log_softmax(logits.float() + self.level_bias[:levels], dim=-1)

    def _decode(self, encoded: Tensor, mask: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced log-probabilities [N, L, V] of spelling ``items`` [N], and its tokens."""
        labels = self._item_tokens(items)
        start = torch.zeros_like(labels[:, :1])
        out = self.t5(
            encoder_outputs=(encoded,),
            attention_mask=mask,
            decoder_input_ids=torch.cat([start, labels[:, :-1]], dim=1),
        )
        return self._level_log_probs(out.logits), labels

    # ---------------------------------------------------------------------------- training
    def loss(self, item_seq: Tensor, targets: Tensor, users: Tensor | None = None) -> Tensor:
        """Mean cross-entropy of the next item's tokens after every training position.

        Examples are encoded in groups of similar history length, each cut to its longest: a
        window's early positions have short histories, and padding them all to the window's
        length made the encoder (quadratic in it) most of an epoch. T5's positions are relative
        and padding is masked, so the loss is the same."""
        keep = (targets > 0) & (item_seq > 0)
        rows, ends = keep.nonzero(as_tuple=True)
        length = item_seq.shape[1]
        prefix = item_seq[rows] * (torch.arange(length, device=item_seq.device) <= ends[:, None])
        prefix = shift_rows(prefix[..., None], ends - length + 1)[..., 0]  # end on the right
        items, lengths = targets[rows, ends], (prefix > 0).sum(dim=1)
        total = torch.zeros((), device=item_seq.device)
        for rows in length_groups(lengths.cpu().numpy(), growth=2.0):
            group = torch.from_numpy(rows).to(item_seq.device)
            encoded, mask = self._encode(prefix[group, -int(lengths[group].max()) :])
            log_probs, labels = self._decode(encoded, mask, items[group])
            total = total + F.nll_loss(log_probs.flatten(0, 1), labels.flatten(), reduction="sum")
        return total / max(1, items.numel() * len(self.config.code_vocab))

    @torch.no_grad()
    def item_log_probs(self, item_seq: Tensor, items: Tensor) -> Tensor:
        """log p(item's codes | history) [B], one item per row, token by token."""
        encoded, mask = self._encode(item_seq)
        log_probs, labels = self._decode(encoded, mask, items)
        return log_probs.gather(2, labels[..., None]).sum(dim=(1, 2))

    # ---------------------------------------------------------------------------- retrieval
    def _start(self, item_seq: Tensor) -> dict[str, Any]:
        encoded, mask = self._encode(item_seq)
        return {"batch": len(item_seq), "encoded": encoded, "mask": mask, "prefix": None}

    def _step(
        self, state: dict[str, Any], level: int, parents: Tensor | None, chosen: Tensor | None
    ) -> Tensor:
        """Log-probabilities [B, K, V_level] of each beam's next code. The decoder reruns over
        the beam's few tokens so far: with at most a handful of levels, a cache saves little."""
        batch = len(state["mask"])
        if chosen is None:
            prefix = torch.zeros(batch, 1, 1, dtype=torch.long, device=state["mask"].device)
        else:
            token = chosen + self.level_offsets[level - 1]
            old = state["prefix"].gather(1, parents[..., None].expand(-1, -1, level))
            prefix = torch.cat([old, token[..., None]], dim=2)
        state["prefix"] = prefix
        beams = prefix.shape[1]
        encoded = state["encoded"].repeat_interleave(beams, dim=0)
        out = self.t5(
            encoder_outputs=(encoded,),
            attention_mask=state["mask"].repeat_interleave(beams, dim=0),
            decoder_input_ids=prefix.flatten(0, 1),
        )
        logits = out.logits[:, -1].float() + self.level_bias[level]
        offset, vocab = int(self.level_offsets[level]), self.config.code_vocab[level]
        log_probs = torch.log_softmax(logits, dim=-1)[:, offset : offset + vocab]
        return log_probs.view(batch, beams, vocab)
