"""The transformer pieces every sequence family shares (after nanoGPT's ``model.py``): dropout,
SDPA self-attention with a cached-decoding path, the MLPs, the three block kinds, positions and
masks, and :class:`Decoder`, the embedded-positions-to-hidden-states stack that the SASRec/GPT
decoder, BERT4Rec and TIGER build on. No I/O here.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from recsys.modeling.models.base import Recommender
from recsys.modeling.models.config import ModelConfig

#: Cached keys and values of the positions decoded so far, [B, K, S, H, d / H] each.
KeyValues = tuple[Tensor, Tensor]


def attention_backend(query: Tensor) -> contextlib.AbstractContextManager:
    """SDPA's math path for bf16 on the CPU: there, at these models' head widths, the flash
    kernel's backward was measured slower than the plain matmuls (a TIGER step's largest cost);
    elsewhere SDPA picks its own kernel."""
    if query.device.type == "cpu" and query.dtype == torch.bfloat16:
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


class Dropout(nn.Module):
    """``nn.Dropout`` with its mask cut from random 64-bit words, four 15-bit draws each: on the
    CPU, torch's ``bernoulli_`` and a uniform fill take one generator call per element, which is
    a visible share of a small model's step. ``p`` is kept to 1 / 32,768."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.threshold = round(p * 2**15)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        n = x.numel()
        # random_() fills int64 with 63 random bits: each 16-bit quarter has 15 low ones.
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()
        draws = words.view(torch.int16)[:n].bitwise_and_(2**15 - 1)
        keep = draws.ge_(self.threshold).view(x.shape)
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))


class SelfAttention(nn.Module):
    """Multi-head attention by SDPA; the mask decides whether it is causal (decoders) or not."""

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
        with attention_backend(q):
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


def low_pass_matrix(length: int, kept: int) -> Tensor:
    """[length, length]: row t applied to a window gives its position t after BSARec's filter,
    which keeps the ``kept`` lowest of the window's real-FFT frequencies (a circular
    convolution, so each row holds the same kernel shifted)."""
    spectrum = torch.fft.rfft(torch.eye(length), dim=0, norm="ortho")
    spectrum[kept:] = 0
    return torch.fft.irfft(spectrum, n=length, dim=0, norm="ortho")


class LowPassFilter(nn.Module):
    """BSARec's frequency branch, made causal: low + gain**2 * (x - low), where ``low`` at each
    position is what BSARec's low-pass of a ``max_len`` window gives at that window's last
    position, so it reads that position and the ones before it only. Applied to the full
    window's last position it is BSARec's filter exactly; BSARec itself is not causal, and
    trains on the last position alone."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # The circular filter's weight of position s in position t's low band depends on t - s
        # alone; its lower triangle, s <= t, is what each window ending at t gives at its end.
        circular = low_pass_matrix(config.max_len, config.filter_cutoff // 2 + 1)
        self.register_buffer("causal", torch.tril(circular), persistent=False)
        self.high_gain = nn.Parameter(torch.ones(config.d_model))
        self.dropout = Dropout(config.dropout)

    def forward(self, x: Tensor, real: Tensor, last_only: bool = False) -> Tensor:
        """``x`` [B, T, d] with ``real`` [B, T]; padded positions count as zero. ``last_only``
        gives the last position alone, [B, 1, d]."""
        length = x.shape[1]
        x = x * real[..., None].to(x.dtype)
        rows = slice(length - 1, length) if last_only else slice(0, length)
        low = torch.matmul(self.causal[rows, :length].to(x.dtype), x)
        if last_only:
            x = x[:, -1:]
        return self.dropout(low + self.high_gain.square() * (x - low))


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
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = SwiGLU(config) if self.kind == "gated" else MLP(config)
        self.filter_alpha = config.filter_alpha
        self.filter = LowPassFilter(config) if config.filter_alpha > 0 else None
        if self.kind == "gated":
            self.attn_gate = nn.Linear(d, d)
            self.mlp_gate = nn.Linear(d, d)

    def forward(
        self, x: Tensor, attn_mask: Tensor, real: Tensor | None = None, last_only: bool = False
    ) -> Tensor:
        """The block's output at every position, or (``last_only``) at the last one alone: what
        the final block of a next-item score needs, at a fraction of the work. ``real`` [B, T]
        marks the items; only the low-pass filter reads it."""
        normed = self.ln_1(x)
        keys = self.key_input(x, normed)
        if last_only:
            attn_mask, x, normed = attn_mask[..., -1:, :], x[:, -1:], normed[:, -1:]
        query = None if normed is keys else normed
        mixed = self.attn(keys, attn_mask, query)
        if self.filter is not None:
            filtered = self.filter(keys, real, last_only)
            mixed = self.filter_alpha * filtered + (1.0 - self.filter_alpha) * mixed
        return self.residual(x, normed, mixed)

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
        :meth:`SelfAttention.extend`."""
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


class Decoder(Recommender):
    """What the transformer families share: the positions, the blocks and final norm, and the
    weight init. Subclasses embed their tokens and call :meth:`_init_weights` last."""

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

    def attention_mask(self, real: Tensor) -> Tensor:
        """Which keys each query sees: a decoder's are the real positions up to its own."""
        return causal_mask(real)

    def transform(self, x: Tensor, real: Tensor, last_only: bool = False) -> Tensor:
        """The blocks and final norm over embedded positions ``x`` [B, T, d]; each position sees
        the ``real`` [B, T] ones :meth:`attention_mask` allows (``last_only``: the last position
        alone)."""
        x = self.emb_dropout(x * real[..., None])
        mask, last = self.attention_mask(real), len(self.blocks) - 1
        for depth, block in enumerate(self.blocks):
            x = block(x, mask, real, last_only=last_only and depth == last)
        return self.ln_f(x)


def causal_mask(real: Tensor) -> Tensor:
    """[B, 1, T, T]: causal and key-padding; a query keeps itself, so padding stays finite."""
    length = real.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=real.device).tril()
    diagonal = torch.eye(length, dtype=torch.bool, device=real.device)
    return (causal & real[:, None, None, :]) | diagonal


def item_positions(real: Tensor) -> Tensor:
    """0, 1, 2, ... over the real items of each left-padded row (padding gets 0)."""
    return (real.long().cumsum(dim=1) - 1).clamp(min=0)


def shift_rows(x: Tensor, shifts: Tensor) -> Tensor:
    """Rotate each row of ``x`` [B, L, d] left by ``shifts`` [B] places."""
    length = x.shape[1]
    index = (shifts[:, None] + torch.arange(length, device=x.device)[None, :]) % length
    return x.gather(1, index[..., None].expand_as(x))
