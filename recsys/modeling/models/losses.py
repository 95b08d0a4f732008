"""The losses every item-scoring family trains with, and the negatives they sample.

Each loss reads the hidden states of the training positions [N, d], their target items [N] and
the item table [C, d]. ``ce`` scores the whole table; the sampled losses score the targets and
one pool of negatives shared by the batch; ``directau`` needs no negatives. The score-level
functions (:func:`sampled_softmax`, :func:`binary_cross_entropy`, :func:`bpr`, :func:`ccl`,
:func:`directau`) take plain scores or vectors, so each can be checked by hand.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from recsys.modeling.models.config import ModelConfig

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


def full_softmax_loss(
    hidden: Tensor, targets: Tensor, table: Tensor, candidates: Tensor
) -> Tensor:
    """Cross-entropy over every candidate item (the default and usually the best)."""
    bias = torch.zeros_like(candidates, dtype=table.dtype)
    bias.masked_fill_(~candidates, float("-inf"))  # padding and held-out items
    with_grads = torch.is_grad_enabled() and (hidden.requires_grad or table.requires_grad)
    return SoftmaxCrossEntropy.apply(hidden, table, bias, targets, with_grads)


def draw_negatives(
    sampler: str, count: int, targets: Tensor, candidates: Tensor, item_counts: Tensor
) -> tuple[Tensor, Tensor]:
    """A pool of negatives for the batch and, per item [C], the log of how many times the
    sampler is expected to put it in the pool (logQ). ``in-batch`` mixes the batch's other
    targets (drawn by popularity) with ``count`` uniform negatives: mixed negative sampling."""
    mask = candidates.float()
    popularity = item_counts * mask
    popularity = popularity / popularity.sum().clamp(min=1e-12)
    uniform = mask / mask.sum()
    if sampler == "uniform":
        pool, expected = torch.multinomial(uniform, count, replacement=True), count * uniform
    elif sampler == "popularity":
        pool = torch.multinomial(popularity, count, replacement=True)
        expected = count * popularity
    else:
        pool = torch.cat([targets.unique(), torch.multinomial(uniform, count, replacement=True)])
        expected = 1.0 - (1.0 - popularity) ** len(targets) + count * uniform
    return pool, expected.clamp(min=1e-12).log()


def sampled_softmax(positive: Tensor, negative: Tensor) -> Tensor:
    """Mean cross-entropy of each row's positive [N] against its negatives [N, K] (-inf: none)."""
    logits = torch.cat([positive[:, None], negative], dim=1)
    return F.cross_entropy(
        logits, torch.zeros(len(positive), dtype=torch.long, device=logits.device)
    )


def binary_cross_entropy(
    positive: Tensor, negative: Tensor, valid: Tensor, beta: float = 1.0
) -> Tensor:
    """-beta log sigmoid(positive) - sum of log(1 - sigmoid(negative)) over the ``valid``
    negatives, averaged over rows. beta = 1 is SASRec's BCE; gSASRec's gBCE lowers it to undo
    the overconfidence that many negatives teach (:func:`gbce_beta`)."""
    negatives = (F.logsigmoid(-negative) * valid).sum(dim=1)
    return -(beta * F.logsigmoid(positive) + negatives).mean()


def gbce_beta(n_negatives: int, n_candidates: int, t: float) -> float:
    """gSASRec's beta = alpha (t (1 - 1/alpha) + 1/alpha), alpha the negatives' sampling rate:
    t = 0 gives plain BCE (beta 1), t = 1 calibrates the scores to the full softmax."""
    alpha = n_negatives / max(1, n_candidates - 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def bpr(positive: Tensor, negative: Tensor, valid: Tensor) -> Tensor:
    """Bayesian personalised ranking: -log sigmoid(positive - negative), averaged over each
    row's ``valid`` negatives and then over rows."""
    pairs = F.logsigmoid(positive[:, None] - negative) * valid
    return -(pairs.sum(dim=1) / valid.sum(dim=1).clamp(min=1)).mean()


def ccl(
    positive: Tensor, negative: Tensor, valid: Tensor, margin: float, negative_weight: float
) -> Tensor:
    """SimpleX's cosine contrastive loss over cosines: (1 - positive) plus ``negative_weight``
    times the mean of the ``valid`` negatives' excess over ``margin``."""
    excess = F.relu(negative - margin) * valid
    mean_excess = excess.sum(dim=1) / valid.sum(dim=1).clamp(min=1)
    return (1.0 - positive + negative_weight * mean_excess).mean()


def uniformity(vectors: Tensor) -> Tensor:
    """log of the mean of exp(-2 |a - b|^2) over the pairs of unit vectors: lower is spread."""
    return torch.pdist(vectors, p=2).pow(2).mul(-2.0).exp().mean().log()


#: Rows the uniformity term reads: its pairs grow with the square of the rows.
UNIFORMITY_ROWS = 1024


def directau(queries: Tensor, items: Tensor, gamma: float) -> Tensor:
    """DirectAU: the alignment of each query with its item (squared distance of unit vectors)
    plus ``gamma`` times the mean uniformity of the queries and of the items (at most
    :data:`UNIFORMITY_ROWS` rows of each, drawn at random)."""
    queries, items = F.normalize(queries, dim=-1), F.normalize(items, dim=-1)
    alignment = (queries - items).pow(2).sum(dim=-1).mean()
    if len(queries) > UNIFORMITY_ROWS:
        rows = torch.randperm(len(queries), device=queries.device)[:UNIFORMITY_ROWS]
        queries, items = queries[rows], items[rows]
    return alignment + gamma * (uniformity(queries) + uniformity(items)) / 2


def item_loss(
    config: ModelConfig,
    hidden: Tensor,
    targets: Tensor,
    table: Tensor,
    candidates: Tensor,
    item_counts: Tensor,
) -> Tensor:
    """The mean training loss ``config.loss`` of ``hidden`` [N, d] for ``targets`` [N] over the
    item ``table`` [C, d] restricted to ``candidates`` [C] (``item_counts``: popularity)."""
    if config.loss == "ce":
        return full_softmax_loss(hidden, targets, table, candidates)
    if config.loss == "directau":
        return directau(hidden.float(), table[targets].float(), config.directau_gamma)
    per_position = config.negatives == "position"
    count = config.n_negatives * (len(targets) if per_position else 1)
    pool, log_q = draw_negatives(config.sampler, count, targets, candidates, item_counts)
    # [N, K] or [K]: each position's own negatives, or one pool that every position shares
    pool = pool.view(len(targets), -1) if per_position else pool
    valid = (pool if per_position else pool[None, :]) != targets[:, None]  # a hit is no negative
    target_rows, pool_rows = table[targets], table[pool]
    if config.loss == "ccl":  # cosines: only the rows it reads are normalised
        hidden, target_rows, pool_rows = (
            F.normalize(t.float(), dim=-1) for t in (hidden, target_rows, pool_rows)
        )
    positive = (hidden * target_rows).sum(-1).float()
    if per_position:
        negative = torch.einsum("nd,nkd->nk", hidden, pool_rows).float()
    else:
        negative = (hidden @ pool_rows.T).float()
    if config.loss == "sampled":
        negative = (negative - log_q[pool]).masked_fill(~valid, float("-inf"))
        return sampled_softmax(positive - log_q[targets], negative)
    if config.loss == "bpr":
        return bpr(positive, negative, valid)
    if config.loss == "ccl":
        return ccl(positive, negative, valid, config.ccl_margin, config.ccl_negative_weight)
    beta = 1.0
    if config.loss == "gbce":
        beta = gbce_beta(len(pool), int(candidates.sum()), config.gbce_t)
    return binary_cross_entropy(positive, negative, valid, beta)
