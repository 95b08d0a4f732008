"""Ranking metrics as pure, batched tensor functions (they run on whatever device the scores are).

The pipeline is two steps so that memory stays bounded by the batch, not by users x items:

1. per batch of users, :func:`target_ranks` turns a ``[B, C]`` score matrix into the 0-based rank
   of each target among the candidates, and :func:`top_k_items` keeps the recommended lists;
2. over all users, the ``*_at_k`` functions turn ranks into one value per user, and
   :func:`bootstrap_ci` / :func:`paired_bootstrap` resample users for confidence intervals.

Conventions:

* Column ``j`` of a score matrix is item ``j``; column 0 is padding and never a candidate.
  Candidates are items ``1..n_rank`` (``n_rank`` defaults to every column), so a model that also
  scores item-table-only items is still ranked over the interacted catalogue.
* Ties are pessimistic: every candidate that scores at least as high as a target is ranked above
  it, and tied relevant items come after tied irrelevant ones. A constant scorer therefore puts
  each target last and earns nothing. NaN scores count as the lowest possible score.
* History masking removes the user's earlier items from the candidates (not the targets
  themselves: a repeated item can still be a hit).
* ``targets`` may be ``[B]`` (next-item evaluation) or ``[B, T]`` with 0 as padding (several
  relevant items). With a single target, Recall@K equals HR@K and MAP@K equals MRR@K; they differ
  once a user has several relevant items.
* Ranks are int64 with :data:`NO_TARGET` (-1) where a target slot is padding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

KS: tuple[int, ...] = (5, 10, 20, 50)
NO_TARGET = -1


def _nan_lowest(scores: torch.Tensor) -> torch.Tensor:
    """Float scores with NaN turned into -inf, so a broken score never wins a comparison."""
    scores = scores.float()
    return torch.where(torch.isnan(scores), float("-inf"), scores)


def _as_2d(targets: torch.Tensor) -> torch.Tensor:
    return targets.unsqueeze(1) if targets.dim() == 1 else targets


def candidate_mask(
    n_rows: int,
    n_cols: int,
    n_rank: int | None = None,
    exclude: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """Boolean ``[n_rows, n_cols]``: True for items ``1..n_rank`` not listed in ``exclude``.

    ``exclude`` is a 0-padded ``LongTensor[n_rows, H]`` (e.g. a left-padded history);
    ``allowed`` (``BoolTensor[n_cols]``) can narrow the items further for every row.
    """
    n_rank = n_cols - 1 if n_rank is None else n_rank
    if not 0 < n_rank < n_cols:
        raise ValueError(f"n_rank must be in 1..{n_cols - 1}, got {n_rank}")
    mask = torch.zeros(n_rows, n_cols, dtype=torch.bool, device=device)
    mask[:, 1 : n_rank + 1] = True
    if exclude is not None and exclude.numel():
        exclude = exclude.to(mask.device).clamp(0, n_cols - 1)
        mask.scatter_(1, exclude, False)
    if allowed is not None:
        mask &= allowed.to(mask.device).unsqueeze(0)
    mask[:, 0] = False
    return mask


def target_ranks(
    scores: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor | None = None,
    n_rank: int | None = None,
) -> torch.Tensor:
    """Pessimistic 0-based rank of each target among the candidates: ``LongTensor[B, T]``.

    ``scores``: ``[B, C]``; ``targets``: ``[B]`` or ``[B, T]`` item ids (0 = padding, ids distinct
    within a row); ``exclude``: items removed from the candidates (history), targets excepted.
    """
    targets = _as_2d(targets).to(scores.device).long()
    n_rows, n_cols = scores.shape
    n_rank = n_cols - 1 if n_rank is None else n_rank
    valid = targets > 0
    if bool((targets > n_rank).any()) or bool((targets < 0).any()):
        raise ValueError(f"targets must be item ids in 1..{n_rank} (0 = padding)")
    scores = _nan_lowest(scores)
    cand = candidate_mask(n_rows, n_cols, n_rank, exclude, scores.device)
    cand.scatter_(1, targets, valid)  # targets always compete, even if also in the history
    cand[:, 0] = False

    target_scores = scores.gather(1, targets)  # [B, T]
    above = (scores.unsqueeze(1) > target_scores.unsqueeze(2)) & cand.unsqueeze(1)
    tied = (scores.unsqueeze(1) == target_scores.unsqueeze(2)) & cand.unsqueeze(1)
    # Tied relevant items: placed after tied irrelevant ones, in target order among themselves.
    same = (target_scores.unsqueeze(2) == target_scores.unsqueeze(1)) & valid.unsqueeze(1)
    n_slots = targets.shape[1]
    earlier = torch.ones(n_slots, n_slots, dtype=torch.bool, device=scores.device).tril(-1)
    tied_relevant = same.sum(2)
    tied_relevant_before = (same & earlier).sum(2)
    ranks = above.sum(2) + tied.sum(2) - tied_relevant + tied_relevant_before
    return torch.where(valid, ranks, torch.full_like(ranks, NO_TARGET))


def top_k_items(
    scores: torch.Tensor,
    k: int,
    exclude: torch.Tensor | None = None,
    n_rank: int | None = None,
    allowed: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ``k`` best candidate items per row: ``LongTensor[B, k]`` (history masked if given).

    A row with fewer than ``k`` candidates left after masking is filled with 0 (padding).
    """
    _check_k(k)
    n_rows, n_cols = scores.shape
    if k >= n_cols:
        raise ValueError(f"k must be at most the catalogue size {n_cols - 1}, got {k}")
    cand = candidate_mask(n_rows, n_cols, n_rank, exclude, scores.device, allowed)
    masked = torch.where(cand, _nan_lowest(scores), float("-inf"))
    items = masked.topk(k, dim=1).indices
    return torch.where(cand.gather(1, items), items, torch.zeros_like(items))


def _hits(ranks: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    ranks = _as_2d(ranks)
    valid = ranks >= 0
    return valid & (ranks < k), valid.sum(1)


def _check_k(k: int) -> None:
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")


def hit_rate_at_k(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """1 if any target is in the top ``k``, else 0; one value per user."""
    _check_k(k)
    hits, _ = _hits(ranks, k)
    return hits.any(1).float()


def recall_at_k(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """Share of the user's targets found in the top ``k``."""
    _check_k(k)
    hits, n_relevant = _hits(ranks, k)
    return hits.sum(1).float() / n_relevant.clamp(min=1).float()


def _discounts(n: int, device: torch.device) -> torch.Tensor:
    return 1.0 / torch.log2(torch.arange(n, device=device, dtype=torch.float32) + 2.0)


def ndcg_at_k(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """Binary-relevance NDCG@k: DCG of the hits over the DCG of a perfect ranking."""
    _check_k(k)
    ranks = _as_2d(ranks)
    hits, n_relevant = _hits(ranks, k)
    gains = torch.where(hits, 1.0 / torch.log2(ranks.clamp(min=0).float() + 2.0), 0.0)
    ideal = _discounts(k, ranks.device).cumsum(0)
    ideal_dcg = ideal[(n_relevant.clamp(1, k) - 1)]
    return gains.sum(1) / ideal_dcg


def mrr_at_k(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """Reciprocal rank of the first target within the top ``k`` (0 if none)."""
    _check_k(k)
    ranks = _as_2d(ranks)
    hits, _ = _hits(ranks, k)
    reciprocal = torch.where(hits, 1.0 / (ranks.clamp(min=0).float() + 1.0), 0.0)
    return reciprocal.max(1).values


def map_at_k(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """Average precision at ``k``: mean precision at each hit, over ``min(n_targets, k)``."""
    _check_k(k)
    ranks = _as_2d(ranks)
    hits, n_relevant = _hits(ranks, k)
    ordered = torch.where(hits, ranks, torch.full_like(ranks, k)).sort(1).values
    hit_number = torch.arange(1, ranks.shape[1] + 1, device=ranks.device).float()
    precision = torch.where(ordered < k, hit_number / (ordered.float() + 1.0), 0.0)
    return precision.sum(1) / n_relevant.clamp(1, k).float()


RANK_METRICS = {
    "hr": hit_rate_at_k,
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "mrr": mrr_at_k,
    "map": map_at_k,
}


def popularity_percentiles(counts: torch.Tensor) -> torch.Tensor:
    """Per-item popularity percentile (0..100, mid-rank for ties) among items ``1..``.

    ``counts[j]`` is item ``j``'s training interaction count; entry 0 (padding) gets 0.
    """
    item_counts = counts[1:].float()
    ordered = item_counts.sort().values
    below = torch.searchsorted(ordered, item_counts, right=False).float()
    at_or_below = torch.searchsorted(ordered, item_counts, right=True).float()
    pct = 100.0 * (below + at_or_below) / 2.0 / max(len(item_counts), 1)
    return torch.cat([pct.new_zeros(1), pct])


def mean_popularity_at_k(
    top_items: torch.Tensor, k: int, percentiles: torch.Tensor
) -> torch.Tensor:
    """Mean popularity percentile of each user's top ``k`` recommended items (padding skipped)."""
    _check_k(k)
    top = top_items[:, :k]
    filled = (top > 0).float()
    total = (percentiles.to(top.device)[top] * filled).sum(1)
    return total / filled.sum(1).clamp(min=1.0)


def coverage_at_k(top_items: torch.Tensor, k: int, n_items: int) -> float:
    """Share of the catalogue ``1..n_items`` recommended to at least one user in the top ``k``."""
    _check_k(k)
    seen = torch.zeros(n_items + 1, dtype=torch.bool, device=top_items.device)
    seen[top_items[:, :k].reshape(-1)] = True
    seen[0] = False
    return float(seen[1 : n_items + 1].sum()) / n_items


# ---------------------------------------------------------------- bootstrap over users


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap confidence interval (None when not resampled)."""

    value: float
    low: float | None
    high: float | None

    def as_dict(self, digits: int = 6) -> dict[str, float | None]:
        """JSON-ready, rounded: the sixth decimal is far below any interval's width."""

        def rounded(x: float | None) -> float | None:
            return None if x is None else round(x, digits)

        return {"value": rounded(self.value), "low": rounded(self.low), "high": rounded(self.high)}


def _resamples(
    n_users: int, n_samples: int, seed: int, chunk_elems: int
) -> Iterator[torch.Tensor]:
    """Seeded user resamples in chunks ``[c, n_users]``: every caller with the same seed and size
    draws the same resamples, so all metrics and models share them (that is what pairs them)."""
    gen = torch.Generator().manual_seed(seed)
    per_chunk = max(1, chunk_elems // max(n_users, 1))
    done = 0
    while done < n_samples:
        size = min(per_chunk, n_samples - done)
        yield torch.randint(n_users, (size, n_users), generator=gen)
        done += size


def _bootstrap_means(values: torch.Tensor, n_samples: int, seed: int) -> torch.Tensor:
    values = values.detach().double().cpu()
    parts = [values[idx].mean(1) for idx in _resamples(len(values), n_samples, seed, 1 << 22)]
    return torch.cat(parts)


def _interval(point: float, stats: torch.Tensor, confidence: float) -> Interval:
    alpha = (1.0 - confidence) / 2.0
    low, high = torch.quantile(stats, torch.tensor([alpha, 1.0 - alpha], dtype=stats.dtype))
    return Interval(point, float(low), float(high))


def _check_bootstrap(n_users: int, confidence: float) -> None:
    if n_users == 0:
        raise ValueError("cannot summarise a metric over zero users")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def bootstrap_ci(
    values: torch.Tensor, n_samples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Mean of per-user ``values`` with a percentile bootstrap interval over users."""
    _check_bootstrap(len(values), confidence)
    point = float(values.double().mean())
    if n_samples <= 0:
        return Interval(point, None, None)
    return _interval(point, _bootstrap_means(values, n_samples, seed), confidence)


def coverage_ci(
    top_items: torch.Tensor,
    k: int,
    n_items: int,
    n_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Catalogue coverage@k with a bootstrap interval over users (same resamples as
    :func:`bootstrap_ci`).

    Coverage is a union, not a mean: a resample holds only about 63% distinct users, so its
    coverage is biased low and the plain percentile interval can miss the observed value
    entirely. The interval is therefore the percentile interval shifted by the bootstrap bias
    (observed minus mean resampled coverage): it keeps the resampling spread, centred on the
    observed coverage.
    """
    _check_bootstrap(len(top_items), confidence)
    point = coverage_at_k(top_items, k, n_items)
    if n_samples <= 0:
        return Interval(point, None, None)
    lists = top_items[:, :k].cpu()
    stats = []
    for idx in _resamples(len(lists), n_samples, seed, 1 << 22):
        chosen = lists[idx].reshape(len(idx), -1)  # [c, n_users * k]
        seen = torch.zeros(len(idx), n_items + 1, dtype=torch.bool)
        seen.scatter_(1, chosen, True)
        stats.append(seen[:, 1:].sum(1).double() / n_items)
    stats = torch.cat(stats)
    return _interval(point, (stats + (point - float(stats.mean()))).clamp(0.0, 1.0), confidence)


@dataclass(frozen=True)
class PairedTest:
    """Mean paired difference ``a - b`` over users, its interval, and a two-sided p-value."""

    delta: float
    low: float | None
    high: float | None
    p_value: float | None
    method: str = "paired bootstrap over users"


def paired_bootstrap(
    a: torch.Tensor,
    b: torch.Tensor,
    n_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedTest:
    """Is ``a`` better than ``b`` on the same users? Resamples users, keeping each user's pair.

    The p-value tests "mean difference = 0" by centring the bootstrap distribution on zero and
    counting resamples at least as extreme as the observed difference (add-one smoothed).
    """
    if a.shape != b.shape:
        raise ValueError(
            f"paired values need the same users, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    _check_bootstrap(len(a), confidence)
    diff = a.double().cpu() - b.double().cpu()
    delta = float(diff.mean())
    if n_samples <= 0:
        return PairedTest(delta, None, None, None)
    means = _bootstrap_means(diff, n_samples, seed)
    ci = _interval(delta, means, confidence)
    extreme = int(((means - delta).abs() >= abs(delta) - 1e-12).sum())
    return PairedTest(delta, ci.low, ci.high, (extreme + 1) / (n_samples + 1))
