"""A GPT-style decoder over item histories, in one readable file (after nanoGPT).

The model reads a LEFT-padded item sequence and, at every position, predicts the next item as
the dot product of its last hidden state with the output item table. The table is tied to the
input item representation, which is a learned id embedding (``id``), a learned projection of
frozen text vectors (``text``) or their sum (``hybrid``). Because a text item's row comes from
its features, ``text`` and ``hybrid`` can score items never seen in training; ``hybrid`` gives such
an item (no training target) its text part alone, as its id row was never trained.

Positions count real items only (from the first one, or back from the most recent one), and
padded keys are masked out of attention, so the same history scores the same however much left
padding it has, and no position's output depends on the items after it. Counted from the
start, a training position's output is exactly what ``score`` gives for that prefix.

No I/O here: the features arrive as a tensor and are kept as a buffer, so a checkpoint alone
rebuilds the model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

#: Cached keys and values of the positions decoded so far, [B, K, S, H, d / H] each.
KeyValues = tuple[Tensor, Tensor]

ITEM_REPRS = ("id", "text", "hybrid", "codes", "semantic")
#: Representations with a projection of the frozen text vectors.
TEXT_REPRS = ("text", "hybrid")
#: Representations that read the items' semantic IDs: ``codes`` scores a table whose rows are
#: sums of code embeddings; ``semantic`` generates the codes (:class:`SemanticDecoder`).
CODE_REPRS = ("codes", "semantic")
#: Representations whose item rows come from the item's content (text vectors or the codes made
#: from them), not from its interactions: every catalogue item is rankable by them.
CONTENT_REPRS = (*TEXT_REPRS, "codes")
COLD_CAPABLE = (*CONTENT_REPRS, "semantic")
LOSSES = ("ce", "sampled", "bce", "bpr")
SAMPLERS = ("uniform", "popularity", "in-batch")
POSITIONS = ("learned", "sinusoidal")
POSITION_ORIGINS = ("start", "end")
BLOCKS = ("pre-ln", "sasrec", "gated")


@dataclass
class ModelConfig:
    """Everything that shapes the network and its loss; plain values so checkpoints stay safe."""

    n_items: int  # items 1..n_items have interactions (training targets, ranked by metrics)
    n_catalogue: int  # items 1..n_catalogue have a row in the item table (cold ones included)
    max_len: int = 200
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 1
    d_ff: int = 0  # MLP width; 0 means 4 * d_model
    dropout: float = 0.2
    attn_dropout: float = 0.0  # on attention weights; > 0 makes CPU attention ~5x slower
    positions: str = "learned"
    # Count positions from the sequence's first item (``start``) or back from its most recent
    # one (``end``: SASRec's right-aligned positions, where the position says how recent it is).
    position_origin: str = "start"
    # ``pre-ln``: GPT's x + attn(ln(x)); ``sasrec``: Kang & McAuley's block, whose residual
    # stream restarts from the normalised query, so raw item embeddings do not run through;
    # ``gated``: eSASRec's (LiGR) block, pre-ln with sigmoid-gated residuals and a SwiGLU MLP.
    block: str = "pre-ln"
    item_repr: str = "id"
    feature_dim: int = 0  # width of the frozen text vectors (text and hybrid)
    scale_embeddings: bool = True  # multiply input item vectors by sqrt(d_model), as SASRec
    n_users: int = 0
    use_user: bool = False
    loss: str = "ce"
    sampler: str = "uniform"  # negatives for loss=sampled
    n_negatives: int = 256  # negatives per batch for loss=sampled
    # item_repr=semantic: the vocabulary of each semantic-ID level (the last one tells apart
    # items whose codes collide), and the beams kept while generating the next item.
    code_vocab: tuple[int, ...] = ()
    beam_size: int = 20
    cold_share: float = 0.0  # semantic: the share of beams kept for items never trained on

    def __post_init__(self) -> None:
        choices = {
            "item_repr": ITEM_REPRS,
            "loss": LOSSES,
            "sampler": SAMPLERS,
            "positions": POSITIONS,
            "position_origin": POSITION_ORIGINS,
            "block": BLOCKS,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(
                    f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}"
                )
        positive = ("n_items", "n_catalogue", "max_len", "d_model", "n_layers", "n_heads")
        for key in positive:
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)!r}")
        if self.n_catalogue < self.n_items:
            raise ValueError(
                f"n_catalogue ({self.n_catalogue}) must be >= n_items ({self.n_items})"
            )
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        for key in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key} must be in [0, 1), got {getattr(self, key)!r}")
        if self.item_repr in TEXT_REPRS and self.feature_dim < 1:
            raise ValueError(f"item_repr={self.item_repr} needs text features (feature_dim >= 1)")
        self.code_vocab = tuple(int(v) for v in self.code_vocab)
        if self.item_repr in CODE_REPRS and (not self.code_vocab or min(self.code_vocab) < 1):
            raise ValueError(
                f"item_repr={self.item_repr} needs code_vocab sizes >= 1, got {self.code_vocab}"
            )
        if self.item_repr == "semantic":
            self._check_semantic()
        if self.use_user and self.n_users < 1:
            raise ValueError("use_user needs n_users >= 1")
        if self.loss == "sampled" and self.n_negatives < 1:
            raise ValueError(f"n_negatives must be >= 1, got {self.n_negatives!r}")

    def _check_semantic(self) -> None:
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size!r}")
        if not 0.0 <= self.cold_share < 1.0:
            raise ValueError(f"cold_share must be in [0, 1), got {self.cold_share!r}")
        unsupported = {
            "loss": (self.loss, "ce"),
            "use_user": (self.use_user, False),
            "position_origin": (self.position_origin, "start"),
        }
        for key, (value, needed) in unsupported.items():
            if value != needed:
                raise ValueError(f"item_repr=semantic supports {key}={needed} only, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        """Build from a (larger) config dict, taking only the keys this dataclass has."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


class Dropout(nn.Module):
    """``nn.Dropout`` with its mask drawn by a uniform fill and a comparison: on the CPU, torch's
    ``bernoulli_`` costs about three times as much, a visible share of a small model's step."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty_like(x).uniform_().ge_(self.p)
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.attn_dropout = config.attn_dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.resid_dropout = Dropout(config.dropout)

    def forward(self, x: Tensor, attn_mask: Tensor, query: Tensor | None = None) -> Tensor:
        """Attention of ``query`` (default: ``x`` itself; it may be a suffix of the positions,
        with ``attn_mask`` rows to match) over keys and values from ``x``."""
        batch, _, width = x.shape
        if query is None:
            q, k, v = self.qkv(x).split(width, dim=2)
        else:
            weight, bias = self.qkv.weight, self.qkv.bias
            q = F.linear(query, weight[:width], bias[:width])
            k, v = F.linear(x, weight[width:], bias[width:]).split(width, dim=2)
        q, k, v = (t.view(batch, t.shape[1], self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).contiguous().view(batch, q.shape[2], width)
        return self.resid_dropout(self.proj(y))

    def keys_values(self, keys: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values [B, H, T, d / H] of a sequence, to cache for decoding after it."""
        batch, length, width = keys.shape
        k, v = F.linear(keys, self.qkv.weight[width:], self.qkv.bias[width:]).split(width, dim=2)
        return tuple(t.view(batch, length, self.n_heads, -1).transpose(1, 2) for t in (k, v))

    def extend(
        self,
        query: Tensor,
        keys: Tensor,
        history: tuple[Tensor, Tensor],
        real: Tensor,
        cache: KeyValues | None,
    ) -> tuple[Tensor, KeyValues]:
        """Attention of one new position per beam over the shared history and the beam's own
        earlier new positions, without copying the history for every beam.

        ``query`` and ``keys`` [B, K, d] are the new positions' inputs; ``history`` the cached
        keys and values [B, H, T, d / H] of the sequence with ``real`` [B, T] marking its items;
        ``cache`` the keys and values [B, K, S, H, d / H] of the beams' S earlier new positions.
        Returns the attention output [B, K, d] and the cache with this position appended.
        """
        batch, beams, width = query.shape
        weight, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(query, weight[:width], bias[:width]).view(batch, beams, self.n_heads, -1)
        k, v = F.linear(keys, weight[width:], bias[width:]).split(width, dim=2)
        k, v = (t.view(batch, beams, 1, self.n_heads, -1) for t in (k, v))
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        history_k, history_v = history
        scale = 1.0 / math.sqrt(q.shape[-1])
        old = torch.einsum("bkhd,bhtd->bkht", q, history_k) * scale
        old = old.masked_fill(~real[:, None, None, :], float("-inf"))
        new = torch.einsum("bkhd,bkshd->bkhs", q, k) * scale
        weights = torch.softmax(torch.cat([old, new], dim=-1), dim=-1)
        length = history_k.shape[2]
        y = torch.einsum("bkht,bhtd->bkhd", weights[..., :length], history_v)
        y = y + torch.einsum("bkhs,bkshd->bkhd", weights[..., length:], v)
        return self.resid_dropout(self.proj(y.reshape(batch, beams, width))), (k, v)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.d_ff or 4 * config.d_model
        self.fc = nn.Linear(config.d_model, hidden)
        self.proj = nn.Linear(hidden, config.d_model)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class SwiGLU(nn.Module):
    """Gated feed-forward (Shazeer, 2020): proj(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.d_ff or 4 * config.d_model
        self.gate = nn.Linear(config.d_model, hidden, bias=False)
        self.up = nn.Linear(config.d_model, hidden, bias=False)
        self.proj = nn.Linear(hidden, config.d_model, bias=False)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.silu(self.gate(x)) * self.up(x)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x)).

    With ``block="sasrec"``: q = ln(x); x = q + attn(q, x); x = ln(x); x + mlp(x).
    With ``block="gated"`` (LiGR, as in eSASRec, Tikhonov et al. 2025): each residual branch is
    scaled per channel by a sigmoid gate of the stream, x + sigmoid(g(x)) * f(ln(x)), and the
    MLP is a SwiGLU.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.kind = config.block
        d = config.d_model
        self.ln_1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = SwiGLU(config) if self.kind == "gated" else MLP(config)
        if self.kind == "gated":
            self.attn_gate = nn.Linear(d, d)
            self.mlp_gate = nn.Linear(d, d)

    def forward(self, x: Tensor, attn_mask: Tensor, last_only: bool = False) -> Tensor:
        """The block's output at every position, or (``last_only``) at the last one alone: what
        the final block of a next-item score needs, at a fraction of the work."""
        normed = self.ln_1(x)
        keys = self.key_input(x, normed)
        if last_only:
            attn_mask, x, normed = attn_mask[..., -1:, :], x[:, -1:], normed[:, -1:]
        query = None if normed is keys else normed
        return self.residual(x, normed, self.attn(keys, attn_mask, query))

    def key_input(self, x: Tensor, normed: Tensor) -> Tensor:
        """What keys and values are computed from: SASRec's block reads the raw stream."""
        return x if self.kind == "sasrec" else normed

    def residual(self, x: Tensor, normed: Tensor, attended: Tensor) -> Tensor:
        """The rest of the block, given its stream ``x``, ``ln_1(x)`` and the attention output."""
        if self.kind == "sasrec":
            x = self.ln_2(normed + attended)
            return x + self.mlp(x)
        if self.kind == "gated":
            x = x + torch.sigmoid(self.attn_gate(x)) * attended
            return x + torch.sigmoid(self.mlp_gate(x)) * self.mlp(self.ln_2(x))
        x = x + attended
        return x + self.mlp(self.ln_2(x))

    def step(
        self, x: Tensor, history: tuple[Tensor, Tensor], real: Tensor, cache: KeyValues | None
    ) -> tuple[Tensor, KeyValues]:
        """One new position per beam (``x`` [B, K, d]) after a cached history; see
        :meth:`CausalSelfAttention.extend`."""
        normed = self.ln_1(x)
        attended, cache = self.attn.extend(normed, self.key_input(x, normed), history, real, cache)
        return self.residual(x, normed, attended), cache


def sinusoidal_table(length: int, width: int) -> Tensor:
    """The fixed sin/cos position table of "Attention is all you need"."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : width // 2]
    return table


#: Bytes of float32 scores per chunk of the full-softmax loss: small enough that a chunk's
#: scores stay in a core's cache from the matrix product through the softmax.
CE_CHUNK_BYTES = 2 * 2**20
#: Bytes of probabilities kept for one pair of gradient products: large enough that the table's
#: gradient is summed a few times a step rather than once a chunk, small enough for the cache
#: that all cores share.
CE_GROUP_BYTES = 16 * 2**20


class SoftmaxCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of the scores ``hidden @ table.T + bias`` [N, C] at ``targets`` [N].

    The same loss and gradients as ``F.cross_entropy(hidden @ table.T + bias, targets)``, made
    in one pass over the rows, holding at most ``group_bytes`` of probabilities at any catalogue
    size. Autograd would write the scores, their log-softmax, a one-hot and a softmax gradient
    out to memory and read them back; with an inner dimension of 64 those passes, not the
    arithmetic, are the cost. Here each chunk of rows is scored and turned into probabilities
    while it is in a core's cache; a group of chunks' probabilities becomes the scores' gradient
    in place (``softmax - one_hot``), carried back to the hidden rows and to the table by two
    matrix products. The backward pass only scales the saved gradients. ``bias`` is -inf for the
    columns that are not candidates.

    Under autocast (bf16 on a CPU with AVX512-BF16, or a GPU) the three matrix products run in
    its dtype; the softmax is computed in float32, and the table gradient is summed over the
    groups in float32.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        table: Tensor,
        bias: Tensor,
        targets: Tensor,
        with_grads: bool = True,
        chunk_bytes: int = CE_CHUNK_BYTES,
        group_bytes: int = CE_GROUP_BYTES,
    ) -> Tensor:
        device = hidden.device.type
        dtype = hidden.dtype
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
        n_rows, n_columns = len(targets), table.shape[0]
        rows = max(1, chunk_bytes // (4 * n_columns))
        group = max(1, group_bytes // (dtype.itemsize * n_columns) // rows) * rows
        h, w, b = hidden.to(dtype), table.to(dtype), bias.to(dtype)
        losses = torch.empty(n_rows, dtype=torch.float32, device=hidden.device)
        if with_grads:
            d_hidden = torch.empty_like(h)
            d_table = torch.zeros(table.shape, dtype=torch.float32, device=table.device)
        with torch.autocast(device, enabled=False):
            for first in range(0, n_rows, group):
                last = min(first + group, n_rows)
                probs = torch.empty(last - first, n_columns, dtype=dtype, device=hidden.device)
                for start in range(first, last, rows):
                    end = min(start + rows, last)
                    scores = torch.addmm(b, h[start:end], w.T)
                    torch.softmax(scores, dim=1, out=probs[start - first : end - first])
                index = torch.arange(last - first, device=hidden.device)
                picked = targets[first:last]
                # -log of the target's probability, with no further pass over the scores (a
                # bf16 probability keeps float32's range: it is 0 only past a loss of 87).
                losses[first:last] = -probs[index, picked].float().clamp_min(1e-38).log()
                if not with_grads:
                    continue
                probs[index, picked] -= 1.0  # the gradient of the scores, in place
                torch.mm(probs, w, out=d_hidden[first:last])
                d_table += (probs.T @ h[first:last]).float()
        if with_grads:
            ctx.save_for_backward(d_hidden, d_table)
        ctx.dtypes = hidden.dtype, table.dtype
        return losses.mean()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        d_hidden, d_table = ctx.saved_tensors
        scale = grad / max(1, len(d_hidden))
        hidden_dtype, table_dtype = ctx.dtypes
        d_hidden, d_table = (d_hidden * scale).to(hidden_dtype), (d_table * scale).to(table_dtype)
        return d_hidden, d_table, None, None, None, None, None


class Decoder(nn.Module):
    """What both decoders share: the positions, the blocks and final norm, the weight init and
    the optimiser groups. Subclasses embed their tokens and call :meth:`_init_weights` last."""

    def __init__(self, config: ModelConfig, n_positions: int) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        if config.positions == "learned":
            self.pos_emb = nn.Embedding(n_positions, d)
        else:
            self.register_buffer("pos_table", sinusoidal_table(n_positions, d), persistent=False)
        self.emb_dropout = Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(d)

    def _init_weights(self) -> None:
        self.apply(self._init_module)
        for name, param in self.named_parameters():
            if name.endswith("proj.weight") and "text_proj" not in name:
                # GPT-2: scale the residual projections by depth so the stream does not grow.
                nn.init.normal_(param, std=0.02 / math.sqrt(2 * self.config.n_layers))

    @staticmethod
    def _init_module(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    def position_vectors(self, positions: Tensor) -> Tensor:
        if self.config.positions == "learned":
            return self.pos_emb(positions)
        return self.pos_table[positions]

    def transform(self, x: Tensor, real: Tensor, last_only: bool = False) -> Tensor:
        """The blocks and final norm over embedded positions ``x`` [B, T, d]; position t sees
        positions <= t that are ``real`` [B, T] only (``last_only``: the last position alone)."""
        x = self.emb_dropout(x * real[..., None])
        mask, last = causal_mask(real), len(self.blocks) - 1
        for depth, block in enumerate(self.blocks):
            x = block(x, mask, last_only=last_only and depth == last)
        return self.ln_f(x)

    # ---------------------------------------------------------------------------- optimiser
    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: decay linear-layer matrices only, not norms, biases or embeddings."""
        decay, no_decay = [], []
        linear_weights = {id(m.weight) for m in self.modules() if isinstance(m, nn.Linear)}
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


def causal_mask(real: Tensor) -> Tensor:
    """[B, 1, T, T]: causal and key-padding; a query keeps itself, so padding stays finite."""
    length = real.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=real.device).tril()
    diagonal = torch.eye(length, dtype=torch.bool, device=real.device)
    return (causal & real[:, None, None, :]) | diagonal


def item_positions(real: Tensor) -> Tensor:
    """0, 1, 2, ... over the real items of each left-padded row (padding gets 0)."""
    return (real.long().cumsum(dim=1) - 1).clamp(min=0)


class SeqRecModel(Decoder):
    """Next-item scores over the whole catalogue from a left-padded item history."""

    def __init__(
        self,
        config: ModelConfig,
        item_features: Tensor | None = None,
        item_codes: Tensor | None = None,
    ) -> None:
        super().__init__(config, config.max_len)
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
        if config.use_user:
            self.user_emb = nn.Embedding(config.n_users + 1, d, padding_idx=0)
            self.user_mlp = nn.Sequential(nn.Linear(2 * d, d), nn.GELU(), nn.Linear(d, d))
        # Items the training loss may use as candidates (cold-start runs switch some off).
        candidates = torch.zeros(n_rows, dtype=torch.bool)
        candidates[1 : config.n_items + 1] = True
        self.register_buffer("candidate_mask", candidates)
        # Training-target counts for popularity negatives and logQ; set by the trainer.
        self.register_buffer("item_counts", candidates.float(), persistent=False)
        # Items trained on (count > 0): a hybrid model describes every other item by its text
        # alone, since its id row never moved from the random init. Saved with the weights.
        self.register_buffer("id_trained", candidates.clone())
        self._init_weights()

    def set_item_counts(self, counts: Tensor) -> None:
        """Training-target counts per item: popularity for sampling, and which ids are trained."""
        self.item_counts.copy_(counts.float())
        self.id_trained.copy_(counts > 0)

    # ----------------------------------------------------------------------------- encoder
    def item_table(self) -> Tensor:
        """Item representations [n_catalogue + 1, d_model]: the input and output table."""
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
        x = F.embedding(item_seq, table)
        if self.config.scale_embeddings:
            x = x * math.sqrt(self.config.d_model)
        if self.config.position_origin == "start":
            positions = item_positions(real)
        else:
            positions = item_positions(real.flip(1)).flip(1)
        x = self.transform(x + self.position_vectors(positions), real, last_only)
        if self.config.use_user:
            if users is None:
                users = torch.zeros(batch, dtype=torch.long, device=item_seq.device)
            user = self.user_emb(users)[:, None, :].expand(-1, x.shape[1], -1)
            x = x + self.user_mlp(torch.cat([x, user], dim=-1))
        return x

    @torch.no_grad()
    def score(self, item_seq: Tensor, users: Tensor | None = None) -> Tensor:
        """Next-item scores [B, n_catalogue + 1] after each sequence's last item (col 0: -inf)."""
        table = self.item_table()
        hidden = self.encode(item_seq, users, table, last_only=True)[:, -1, :]
        scores = hidden @ table.T
        scores[:, 0] = float("-inf")
        return scores

    def forward(self, item_seq: Tensor, users: Tensor | None = None) -> Tensor:
        """Scores at every position [B, L, n_catalogue + 1], for inspection (training: loss)."""
        table = self.item_table()
        return self.encode(item_seq, users, table) @ table.T

    # ------------------------------------------------------------------------------ losses
    def loss(self, item_seq: Tensor, targets: Tensor, users: Tensor | None = None) -> Tensor:
        """Mean next-item loss over the positions where both the input and the target are items."""
        table = self.item_table()
        hidden = self.encode(item_seq, users, table)
        keep = (targets > 0) & (item_seq > 0)
        hidden, targets = hidden[keep], targets[keep]
        if self.config.loss == "ce":
            return self.full_softmax_loss(hidden, targets, table)
        if self.config.loss == "sampled":
            return self.sampled_softmax_loss(hidden, targets, table)
        return self.one_negative_loss(hidden, targets, table)

    def full_softmax_loss(self, hidden: Tensor, targets: Tensor, table: Tensor) -> Tensor:
        """Cross-entropy over every candidate item (the default and usually the best)."""
        bias = torch.zeros_like(self.candidate_mask, dtype=table.dtype)
        bias.masked_fill_(~self.candidate_mask, float("-inf"))  # padding and held-out items
        with_grads = torch.is_grad_enabled() and (hidden.requires_grad or table.requires_grad)
        return SoftmaxCrossEntropy.apply(hidden, table, bias, targets, with_grads)

    def _draw(self, weights: Tensor, count: int) -> Tensor:
        return torch.multinomial(weights, count, replacement=True)

    def sampled_softmax_loss(self, hidden: Tensor, targets: Tensor, table: Tensor) -> Tensor:
        """Softmax over the target and shared sampled negatives, with logQ correction.

        Every candidate's logit is lowered by the log of how many times the sampler is
        expected to put it in the pool, which makes the sampled softmax an unbiased-in-the-limit
        stand-in for the full one. ``in-batch`` mixes the batch's other targets (drawn by
        popularity) with uniform negatives, as in mixed negative sampling.
        """
        n_neg = self.config.n_negatives
        candidates = self.candidate_mask.float()
        popularity = self.item_counts * candidates
        popularity = popularity / popularity.sum().clamp(min=1e-12)
        uniform = candidates / candidates.sum()
        if self.config.sampler == "uniform":
            pool = self._draw(uniform, n_neg)
            expected = n_neg * uniform
        elif self.config.sampler == "popularity":
            pool = self._draw(popularity, n_neg)
            expected = n_neg * popularity
        else:
            pool = torch.cat([targets.unique(), self._draw(uniform, n_neg)])
            in_batch = 1.0 - (1.0 - popularity) ** len(targets)
            expected = in_batch + n_neg * uniform
        log_q = expected.clamp(min=1e-12).log()
        positive = (hidden * table[targets]).sum(-1) - log_q[targets]
        negative = hidden @ table[pool].T - log_q[pool]
        negative = negative.masked_fill(pool[None, :] == targets[:, None], float("-inf"))
        logits = torch.cat([positive[:, None], negative], dim=1).float()
        return F.cross_entropy(logits, torch.zeros_like(targets))

    def one_negative_loss(self, hidden: Tensor, targets: Tensor, table: Tensor) -> Tensor:
        """SASRec's original objectives: BCE or BPR against one uniform negative per position."""
        negatives = self._draw(self.candidate_mask.float(), len(targets))
        positive = (hidden * table[targets]).sum(-1).float()
        negative = (hidden * table[negatives]).sum(-1).float()
        if self.config.loss == "bpr":
            return -F.logsigmoid(positive - negative).mean()
        return -(F.logsigmoid(positive) + F.logsigmoid(-negative)).mean()


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


class SemanticDecoder(Decoder):
    """Generative retrieval over semantic IDs (TIGER, Rajput et al. 2023) on the same blocks.

    An item is the tuple of its L codes (``item_codes`` [n_catalogue + 1, L], row 0 the padding
    item, all -1). The decoder reads a history as its items' codes in order, one token each,
    embedded by level (one block of rows of ``token_emb`` per level) plus the item's position and
    the token's level, and learns to predict every next token. The output table is the input
    table, tied as in GPT: a level's logits are the hidden state against that level's rows.
    Recommending is a beam search in an :class:`ItemTrie`, so every beam spells a real item, and
    items the user has seen are pruned from the trie before decoding starts.
    """

    def __init__(self, config: ModelConfig, item_codes: Tensor) -> None:
        super().__init__(config, config.max_len + 1)  # a window: max_len items and the next
        vocab = config.code_vocab
        codes = checked_codes(config, item_codes)
        sizes = torch.tensor(vocab)
        self.register_buffer("item_codes", codes)
        self.register_buffer("level_offsets", level_offsets(vocab), persistent=False)
        levels = torch.repeat_interleave(torch.arange(len(vocab)), sizes)
        bias = torch.full((len(vocab), int(sizes.sum())), float("-inf"))
        bias[levels, torch.arange(int(sizes.sum()))] = 0.0
        self.register_buffer("level_bias", bias, persistent=False)  # 0 on a level's own tokens
        self.token_emb = nn.Embedding(int(sizes.sum()), config.d_model)
        self.level_emb = nn.Embedding(len(vocab), config.d_model)
        self.trie = ItemTrie(codes, self.trie_items(), vocab)
        # Items with training targets (set by the trainer; saved): see ``cold_share``.
        trained = torch.zeros(config.n_catalogue + 1, dtype=torch.bool)
        trained[1 : config.n_items + 1] = True
        self.register_buffer("item_trained", trained)
        self._split_tries: tuple[ItemTrie, ItemTrie] | None = None
        self._init_weights()

    @property
    def levels(self) -> int:
        return len(self.config.code_vocab)

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

    def _log_probs(self, hidden: Tensor, levels: Tensor) -> Tensor:
        """Log-probabilities over every token, -inf outside each position's target level."""
        return torch.log_softmax(hidden @ self.token_emb.weight.T + self.level_bias[levels], -1)

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
        """Mean cross-entropy of every next token of the windows ``item_seq`` + last target."""
        hidden, tokens, levels, keep = self._teacher_forced(item_seq, targets[:, -1])
        logits = hidden[keep] @ self.token_emb.weight.T + self.level_bias[levels[keep]]
        return F.cross_entropy(logits.float(), tokens[keep])

    @torch.no_grad()
    def item_log_probs(self, item_seq: Tensor, items: Tensor) -> Tensor:
        """log p(item's codes | history) [B], one item per row, token by token (teacher forced)."""
        hidden, tokens, levels, _ = self._teacher_forced(item_seq, items)
        tail = slice(-self.levels, None)  # the tokens of the item itself
        log_probs = self._log_probs(hidden[:, tail], levels[:, tail])
        return log_probs.gather(2, tokens[:, tail, None]).sum(dim=(1, 2))

    # ---------------------------------------------------------------------------- retrieval
    def set_item_counts(self, counts: Tensor) -> None:
        """Training-target counts per item: which items the decoder has learned to spell."""
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

    @torch.no_grad()
    def generate(
        self,
        item_seq: Tensor,
        beam_size: int,
        exclude: Tensor | None = None,
        allowed: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The ``beam_size`` next items [B, K] in recommendation order, with their
        log-probabilities, by beam search in the trie (see :meth:`_beam_search`). Items in
        ``exclude`` (left-padded ids) and items outside ``allowed`` (bool over the item rows,
        [n_rows] or [B, n_rows]) are pruned; a row with fewer items left than beams gets item -1
        at log-probability -inf in the spare beams.

        With ``cold_share`` > 0, that share of the beams (at least one) is searched among the
        items never trained on, as TIGER recommends new items, and they take every
        1 / cold_share-th place of the list: a decoder never taught to spell an item would
        otherwise rank it below every item it was.
        """
        state = self._encode_history(item_seq)
        untrained = (~self.item_trained[self.trie_items()]).sum()
        if self.config.cold_share == 0 or beam_size < 2 or untrained == 0:
            return self._beam_search(self.trie, state, beam_size, exclude, allowed)
        n_cold = max(1, round(beam_size * self.config.cold_share))
        warm_trie, cold_trie = self._tries()
        warm = self._beam_search(warm_trie, state, beam_size - n_cold, exclude, allowed)
        cold = self._beam_search(cold_trie, state, n_cold, exclude, allowed)
        every = round(1 / self.config.cold_share)
        places = torch.zeros(beam_size, dtype=torch.bool, device=item_seq.device)
        places[torch.arange(1, n_cold + 1).mul(every).sub(1).clamp(max=beam_size - 1)] = True
        merged = []
        for ours, theirs in zip(warm, cold):
            out = torch.empty(len(item_seq), beam_size, dtype=ours.dtype, device=ours.device)
            out[:, ~places], out[:, places] = ours, theirs
            merged.append(out)
        return merged[0], merged[1]

    def _encode_history(self, item_seq: Tensor) -> dict[str, Any]:
        """The history's keys and values at every block, its last hidden state and the position
        of the item to generate: what every beam search after it reads."""
        tokens, real, positions, levels = self._tokens(item_seq)
        x = self.emb_dropout(self._embed(tokens, positions, levels) * real[..., None])
        mask, history, last = causal_mask(real), [], len(self.blocks) - 1
        for depth, block in enumerate(self.blocks):
            history.append(block.attn.keys_values(block.key_input(x, block.ln_1(x))))
            x = block(x, mask, last_only=depth == last)
        return {
            "history": history,
            "real": real,
            "hidden": self.ln_f(x[:, -1:]),  # [B, 1, d]: one beam, the root
            "position": (item_seq > 0).sum(dim=1).clamp(max=self.config.max_len)[:, None],
        }

    def _beam_search(
        self,
        trie: ItemTrie,
        state: dict[str, Any],
        beam_size: int,
        exclude: Tensor | None,
        allowed: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """The ``beam_size`` most likely items of ``trie`` [B, K], best first, and their
        log-probabilities; with the history cached, each level costs one position per beam."""
        history, real, hidden = state["history"], state["real"], state["hidden"]
        batch = len(real)
        nodes = torch.zeros(batch, 1, dtype=torch.long, device=real.device)
        scores = torch.zeros(batch, 1, device=real.device)
        caches: list[KeyValues | None] = [None] * len(self.blocks)
        chosen = torch.zeros_like(nodes)  # each beam's code at the level before
        for level, vocab in enumerate(self.config.code_vocab):
            if level:
                token = chosen + self.level_offsets[level - 1]
                level_ids = torch.full_like(token, level - 1)
                x = self._embed(token, state["position"].expand_as(token), level_ids)
                for depth, block in enumerate(self.blocks):
                    x, caches[depth] = block.step(x, history[depth], real, caches[depth])
                hidden = self.ln_f(x)
            offset = int(self.level_offsets[level])
            log_probs = self._log_probs(hidden, torch.full_like(nodes, level))
            log_probs = log_probs[..., offset : offset + vocab]  # [B, K, V]
            children = trie.child_table(level)[nodes.clamp(min=0)]
            children = children.masked_fill((nodes < 0)[..., None], -1).flatten(1)
            open_ = trie.available(level, exclude, batch, allowed)
            open_ = open_.expand(batch, -1).gather(1, children.clamp(min=0)) & (children >= 0)
            total = (scores[..., None] + log_probs).flatten(1).masked_fill(~open_, float("-inf"))
            scores, picked = total.topk(min(beam_size, total.shape[1]), dim=1)
            nodes = children.gather(1, picked).masked_fill(scores == float("-inf"), -1)
            parents, chosen = picked // vocab, picked % vocab
            caches = [_pick_beams(cache, parents) for cache in caches]
        if nodes.shape[1] < beam_size:  # a trie with fewer items than beams
            spare = beam_size - nodes.shape[1]
            nodes = F.pad(nodes, (0, spare), value=-1)
            scores = F.pad(scores, (0, spare), value=float("-inf"))
        return nodes, scores

    @torch.no_grad()
    def score(self, item_seq: Tensor, exclude: Tensor | None = None) -> Tensor:
        """[B, item rows]: the generated items scored by their place in the list (0 for the
        first, then -1, -2, ...: the order :meth:`generate` recommends), -inf for the rest."""
        items, _ = self.generate(item_seq, self.config.beam_size, exclude)
        scores = torch.full(
            (len(item_seq), len(self.item_codes)), float("-inf"), device=item_seq.device
        )
        found = items >= 0
        rows = torch.arange(len(items), device=items.device)[:, None].expand_as(items)
        place = -torch.arange(items.shape[1], device=items.device, dtype=scores.dtype)
        scores[rows[found], items[found]] = place.expand_as(items)[found]
        return scores


def _pick_beams(cache: KeyValues | None, parents: Tensor) -> KeyValues | None:
    """Each new beam's cache is its parent beam's."""
    if cache is None:
        return None
    index = parents[:, :, None, None, None].expand(-1, -1, *cache[0].shape[2:])
    return cache[0].gather(1, index), cache[1].gather(1, index)


def build_model(
    config: ModelConfig, item_features: Tensor | None = None, item_codes: Tensor | None = None
) -> Decoder:
    """The decoder a config asks for: semantic-ID generation, or scoring an item table."""
    if config.item_repr == "semantic":
        return SemanticDecoder(config, item_codes)
    return SeqRecModel(config, item_features, item_codes)


def next_item_scores(
    model: Decoder, item_seq: Tensor, users: Tensor | None = None, exclude: Tensor | None = None
) -> Tensor:
    """Scores [B, n_catalogue + 1] from either decoder. The generative one prunes ``exclude``
    (the whole history) while it decodes; for the scoring one, ranking masks it afterwards."""
    if isinstance(model, SemanticDecoder):
        return model.score(item_seq, exclude)
    return model.score(item_seq, users if model.config.use_user else None)
