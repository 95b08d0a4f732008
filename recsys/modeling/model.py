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

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

ITEM_REPRS = ("id", "text", "hybrid")
#: Representations whose item vectors come from text: any item with text is rankable by them.
TEXT_REPRS = ("text", "hybrid")
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
        if self.item_repr != "id" and self.feature_dim < 1:
            raise ValueError(f"item_repr={self.item_repr} needs text features (feature_dim >= 1)")
        if self.use_user and self.n_users < 1:
            raise ValueError("use_user needs n_users >= 1")
        if self.loss == "sampled" and self.n_negatives < 1:
            raise ValueError(f"n_negatives must be >= 1, got {self.n_negatives!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
        """Build from a (larger) config dict, taking only the keys this dataclass has."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.attn_dropout = config.attn_dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.resid_dropout = nn.Dropout(config.dropout)

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


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        hidden = config.d_ff or 4 * config.d_model
        self.fc = nn.Linear(config.d_model, hidden)
        self.proj = nn.Linear(hidden, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

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
        self.dropout = nn.Dropout(config.dropout)

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
        if last_only:
            attn_mask = attn_mask[..., -1:, :]
        if self.kind == "sasrec":
            query = self.ln_1(x[:, -1:] if last_only else x)
            x = self.ln_2(query + self.attn(x, attn_mask, query))
            return x + self.mlp(x)
        normed = self.ln_1(x)
        query = normed[:, -1:] if last_only else None
        x = x[:, -1:] if last_only else x
        if self.kind == "gated":
            x = x + torch.sigmoid(self.attn_gate(x)) * self.attn(normed, attn_mask, query)
            return x + torch.sigmoid(self.mlp_gate(x)) * self.mlp(self.ln_2(x))
        x = x + self.attn(normed, attn_mask, query)
        return x + self.mlp(self.ln_2(x))


def sinusoidal_table(length: int, width: int) -> Tensor:
    """The fixed sin/cos position table of "Attention is all you need"."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : width // 2]
    return table


class SoftmaxCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of the scores ``hidden @ table.T + bias`` [N, C] at ``targets`` [N].

    The same loss and gradients as ``F.cross_entropy(hidden @ table.T + bias, targets)``, with
    one [N, C] tensor instead of four: autograd would keep the scores and their log-softmax and
    make a one-hot gradient and a softmax gradient, each a pass over memory. With short
    sequences and a large catalogue these passes, not the model, are most of a training step.
    Here the saved log-probabilities become the gradient in place, ``softmax - one_hot``, so
    the graph can be backpropagated once only (no ``retain_graph``). ``bias`` is -inf for the
    columns that are not candidates.
    """

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, table: Tensor, bias: Tensor, targets: Tensor) -> Tensor:
        scores = torch.addmm(bias, hidden, table.T)  # autocast may make these bf16
        log_probs = torch.log_softmax(scores.float(), dim=1)
        ctx.save_for_backward(hidden, table, targets, log_probs)
        ctx.dtype, ctx.used = scores.dtype, False
        return -log_probs.gather(1, targets[:, None]).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.used:
            raise RuntimeError("SoftmaxCrossEntropy cannot be backpropagated twice")
        ctx.used = True
        hidden, table, targets, log_probs = ctx.saved_tensors
        d_scores = log_probs.exp_()
        d_scores[torch.arange(len(targets), device=targets.device), targets] -= 1.0
        d_scores = d_scores.to(ctx.dtype)
        scale = grad / max(1, len(targets))
        d_hidden = (d_scores @ table.to(ctx.dtype)) * scale
        d_table = (d_scores.T @ hidden.to(ctx.dtype)) * scale
        return d_hidden, d_table, None, None


class SeqRecModel(nn.Module):
    """Next-item scores over the whole catalogue from a left-padded item history."""

    def __init__(self, config: ModelConfig, item_features: Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        n_rows = config.n_catalogue + 1
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
        if config.positions == "learned":
            self.pos_emb = nn.Embedding(config.max_len, d)
        else:
            self.register_buffer(
                "pos_table", sinusoidal_table(config.max_len, d), persistent=False
            )
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(d)
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
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith("proj.weight") and "text_proj" not in name:
                # GPT-2: scale the residual projections by depth so the stream does not grow.
                nn.init.normal_(param, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()

    def set_item_counts(self, counts: Tensor) -> None:
        """Training-target counts per item: popularity for sampling, and which ids are trained."""
        self.item_counts.copy_(counts.float())
        self.id_trained.copy_(counts > 0)

    # ----------------------------------------------------------------------------- encoder
    def item_table(self) -> Tensor:
        """Item representations [n_catalogue + 1, d_model]: the input and output table."""
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
            positions = (real.long().cumsum(dim=1) - 1).clamp(min=0)
        else:
            positions = (real.long().flip(1).cumsum(dim=1).flip(1) - 1).clamp(min=0)
        if self.config.positions == "learned":
            x = x + self.pos_emb(positions)
        else:
            x = x + self.pos_table[positions]
        x = self.emb_dropout(x * real[..., None])
        # Causal and key-padding mask; every query keeps itself so padded rows stay finite.
        causal = torch.ones(length, length, dtype=torch.bool, device=item_seq.device).tril()
        diagonal = torch.eye(length, dtype=torch.bool, device=item_seq.device)
        attn_mask = (causal & real[:, None, None, :]) | diagonal
        last = len(self.blocks) - 1
        for depth, block in enumerate(self.blocks):
            x = block(x, attn_mask, last_only=last_only and depth == last)
        x = self.ln_f(x)
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
        return SoftmaxCrossEntropy.apply(hidden, table, bias, targets)

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
