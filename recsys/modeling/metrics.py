"""Ranking metrics as pure, batched tensor functions (they run on whatever device the scores are).

The pipeline is two steps so that memory stays bounded by the batch, not by users x items:

1. per batch of users, :func:`target_ranks` turns a ``[B, C]`` score matrix into the 0-based rank
   of each target among the candidates, and :func:`top_k_items` keeps the recommended lists
   (:func:`rank_batch` does both, and the sampled-negatives rank, in one pass for one target);
2. over all users, the ``*_at_k`` functions turn ranks into one value per user, and
   :func:`bootstrap_ci` / :func:`paired_bootstrap` resample users for confidence intervals; the
   resamples are drawn once per (number of users, seed) and shared by every metric and model.

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

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from math import inf

import numpy as np
import torch

from recsys.arrays import sorted_member

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
    _check_targets(targets, n_rank)
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
    _check_top_k(k, scores.shape[1])
    cand = candidate_mask(*scores.shape, n_rank, exclude, scores.device, allowed)
    return _top_of_masked(_masked_scores(scores, cand), cand, k)


def _check_top_k(k: int, n_cols: int) -> None:
    _check_k(k)
    if k >= n_cols:
        raise ValueError(f"k must be at most the catalogue size {n_cols - 1}, got {k}")


def _masked_scores(scores: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Float scores with non-candidates and NaN at -inf: a fresh tensor, two passes over it."""
    masked = torch.where(cand, scores.float(), float("-inf"))
    return masked.nan_to_num_(nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))


def _top_of_masked(masked: torch.Tensor, cand: torch.Tensor, k: int) -> torch.Tensor:
    items = masked.topk(k, dim=1).indices
    return torch.where(cand.gather(1, items), items, torch.zeros_like(items))


def _check_targets(targets: torch.Tensor, n_rank: int) -> None:
    if bool((targets > n_rank).any()) or bool((targets < 0).any()):
        raise ValueError(f"targets must be item ids in 1..{n_rank} (0 = padding)")


@dataclass(frozen=True)
class BatchRanks:
    """One batch of one-target rows reduced at once (see :func:`rank_batch`)."""

    ranks: torch.Tensor  # [B] pessimistic 0-based full-ranking rank
    top_items: torch.Tensor  # [B, k]
    sampled: torch.Tensor | None  # [B] rank among the sampled negatives, if any were given


def rank_batch(
    scores: torch.Tensor,
    targets: torch.Tensor,
    k: int,
    exclude: torch.Tensor | None = None,
    n_rank: int | None = None,
    negatives: torch.Tensor | None = None,
) -> BatchRanks:
    """:func:`target_ranks`, :func:`top_k_items` and :func:`sampled_ranks` for one target per row
    (``targets``: ``[B]``, ids in ``1..n_rank``), from one masked copy of the scores.

    The same numbers as the three functions, without a ``[B, C]`` candidate mask: the masked
    items are written into a copy of the scores as -inf, and whether a target or a top item is
    a candidate is read from the short ``exclude`` rows. Evaluation spends most of its time here
    on large catalogues.
    """
    _check_top_k(k, scores.shape[1])
    targets, exclude, n_rank = _one_target_inputs(scores, targets, exclude, n_rank)
    masked = _scores_without_history(scores, exclude, n_rank)
    ranks = _one_target_ranks(masked, scores, targets, exclude, n_rank)
    values, items = masked.topk(k, dim=1)
    if bool((values == float("-inf")).any()):  # fewer than k scored candidates: drop the rest
        cand = (items > 0) & (items <= n_rank) & ~_listed(items, exclude)
        items = torch.where(cand, items, torch.zeros_like(items))
    sampled = None if negatives is None else sampled_ranks(scores, targets, negatives)
    return BatchRanks(ranks, items, sampled)


def next_item_ranks(
    scores: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor | None = None,
    n_rank: int | None = None,
) -> torch.Tensor:
    """:func:`target_ranks` for one target per row (``[B]``, ids in ``1..n_rank``) as ``[B]``:
    the ranks of :func:`rank_batch` without its top lists. What validation needs: no
    ``[B, T, C]`` comparison, as the general function builds for several targets."""
    targets, exclude, n_rank = _one_target_inputs(scores, targets, exclude, n_rank)
    ranks, rows = [], max(1, COUNT_BLOCK // scores.shape[1])
    # A few rows at a time, so that the masked copy is made, counted and dropped in cache.
    for start in range(0, len(scores), rows):
        part = slice(start, start + rows)
        listed = None if exclude is None else exclude[part]
        masked = _scores_without_history(scores[part], listed, n_rank)
        ranks.append(_one_target_ranks(masked, scores[part], targets[part], listed, n_rank))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long, device=scores.device)


def _one_target_inputs(
    scores: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor | None,
    n_rank: int | None,
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Checked ``targets`` [B, 1], ``exclude`` clamped as :func:`candidate_mask` does, and
    ``n_rank``."""
    n_cols = scores.shape[1]
    n_rank = n_cols - 1 if n_rank is None else n_rank
    if not 0 < n_rank < n_cols:
        raise ValueError(f"n_rank must be in 1..{n_cols - 1}, got {n_rank}")
    targets = targets.to(scores.device).long().view(-1, 1)
    _check_targets(targets, n_rank)
    if bool((targets == 0).any()):
        raise ValueError("one real target per row is needed (no 0 padding)")
    if exclude is not None:
        exclude = exclude.to(scores.device).clamp(0, n_cols - 1)
    return targets, exclude, n_rank


def _scores_without_history(
    scores: torch.Tensor, exclude: torch.Tensor | None, n_rank: int
) -> torch.Tensor:
    """A float copy of the scores with every non-candidate (and NaN) at -inf."""
    masked = torch.nan_to_num(scores.float(), nan=-inf, posinf=inf, neginf=-inf)  # the copy
    masked[:, 0] = -inf
    masked[:, n_rank + 1 :] = -inf
    if exclude is not None and exclude.numel():
        masked.scatter_(1, exclude, -inf)
    return masked


def _one_target_ranks(
    masked: torch.Tensor,
    scores: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor | None,
    n_rank: int,
) -> torch.Tensor:
    """Pessimistic 0-based ranks [B] of ``targets`` [B, 1] from :func:`_scores_without_history`."""
    target_scores = _nan_lowest(scores.gather(1, targets))
    # Candidates at or above the target; the target competes even when the history masks it.
    at_least = _count_at_least(masked, target_scores)
    lowest = target_scores.squeeze(1) == float("-inf")
    if bool(lowest.any()):  # every candidate ties with a -inf target, masked ones do not count
        n_rows, n_cols = scores.shape
        n_cand = candidate_mask(n_rows, n_cols, n_rank, exclude, scores.device).sum(1)
        at_least = torch.where(lowest, n_cand, at_least)
    return at_least - (~_listed(targets, exclude)).squeeze(1).long()


#: Cells of a score matrix compared with the targets' scores at once (see :func:`_count_at_least`).
COUNT_BLOCK = 2**20


def _count_at_least(scores: torch.Tensor, target_scores: torch.Tensor) -> torch.Tensor:
    """Per row, how many ``scores`` are at least its ``target_scores`` entry: ``[B]`` int64.

    A few rows (``COUNT_BLOCK`` cells) at a time: counting a whole ``[B, C]`` comparison makes an
    int64 copy of it, twice the size of the float scores, and is about three times slower on a
    105,542-item catalogue than blocks that stay in cache."""
    rows = max(1, COUNT_BLOCK // scores.shape[1])
    pairs = zip(scores.split(rows), target_scores.split(rows))
    return torch.cat([(block >= target).sum(1) for block, target in pairs])


def _listed(items: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
    """Whether each of ``items`` (``[B, n]``) is in its row of ``exclude`` (``[B, H]``)."""
    if exclude is None or not exclude.numel():
        return torch.zeros_like(items, dtype=torch.bool)
    return (items.unsqueeze(2) == exclude.unsqueeze(1)).any(2)


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


# ------------------------------------------------------------- sampled-negatives protocol

#: Negatives per user in the classic sampled protocol (the target ranked among 100 sampled items).
N_NEGATIVES = 100
#: Rows whose negatives are drawn together (the draws take about 7 KB per row).
SAMPLE_CHUNK_ROWS = 16_384
#: The sampled metrics reported (``sampled_hr@10``, ...): with 101 candidates only small K mean
#: anything, and NDCG@1 would repeat HR@1.
SAMPLED_METRICS: tuple[tuple[str, int], ...] = (
    ("hr", 1),
    ("hr", 5),
    ("hr", 10),
    ("ndcg", 5),
    ("ndcg", 10),
)


def sample_negatives(
    exclude: torch.Tensor, n_items: int, n: int = N_NEGATIVES, seed: int = 0
) -> torch.Tensor:
    """``n`` distinct items per row, uniform over ``1..n_items`` minus the row's ``exclude``
    (``LongTensor[U, H]``, 0-padded: history and target): ``LongTensor[U, n]`` on the CPU.

    Seeded and drawn for all rows at once, so the negatives do not depend on how users are
    batched later. A row with at most ``n`` allowed items gets all of them, then 0 (padding).
    Rows are filled by rejection: i.i.d. uniform draws, keeping each first unseen allowed item,
    which is a uniform sample without replacement.
    """
    ex = exclude.detach().cpu().long().numpy()
    rows, cols = np.nonzero(ex)
    return sample_negatives_excluding(rows, ex[rows, cols], len(ex), n_items, n, seed)


def sample_negatives_excluding(
    rows: np.ndarray,
    items: np.ndarray,
    n_rows: int,
    n_items: int,
    n: int = N_NEGATIVES,
    seed: int = 0,
) -> torch.Tensor:
    """:func:`sample_negatives` for ``n_rows`` rows whose excluded items are the pairs
    ``(rows[i], items[i])``, in any order: the same negatives, in memory that follows the pairs
    rather than rows x the longest history (1.36M H&M customers would pad to tens of GB)."""
    if n < 1:
        raise ValueError(f"the number of negatives must be positive, got {n}")
    stride = n_items + 1
    inside = (items > 0) & (items <= n_items)  # ids out of range exclude nothing
    banned = np.sort(rows[inside].astype(np.int64) * stride + items[inside])  # row * stride + item
    distinct = banned[np.r_[True, banned[1:] != banned[:-1]]] if len(banned) else banned
    allowed = n_items - np.bincount(distinct // stride, minlength=n_rows)
    out = np.zeros((n_rows, n), dtype=np.int64)
    everything = np.arange(1, n_items + 1)
    for row in np.flatnonzero(allowed <= n):  # small catalogues: every allowed item
        low, high = np.searchsorted(distinct, [row * stride, (row + 1) * stride])
        kept = np.setdiff1d(everything, distinct[low:high] - row * stride)
        out[row, : len(kept)] = kept
    rng = np.random.default_rng(seed)
    drawing = np.flatnonzero(allowed > n)
    # rows a chunk at a time, each against its own slice of the exclusions: the draws of all
    # rows at once would take about 7 KB per row (10 GB for 1.36M H&M customers)
    for chunk in np.array_split(drawing, max(1, -(-len(drawing) // SAMPLE_CHUNK_ROWS))):
        if len(chunk):
            low, high = np.searchsorted(banned, [chunk[0] * stride, (chunk[-1] + 1) * stride])
            _draw_rows(out, chunk, banned[low:high], allowed, n, n_items, rng)
    return torch.from_numpy(out)


def _draw_rows(
    out: np.ndarray,
    rows: np.ndarray,
    banned: np.ndarray,
    allowed: np.ndarray,
    n: int,
    n_items: int,
    rng: np.random.Generator,
) -> None:
    """Fill ``out[rows]`` by rejection; ``banned`` holds (at least) those rows' keys."""
    stride = n_items + 1
    filled = np.zeros(len(rows), dtype=np.int64)
    live = np.arange(len(rows))
    while len(live):
        pending = rows[live]
        need = n - filled[live]
        # enough draws that most rows finish in this round (acceptance is about allowed / n_items)
        width = int(np.ceil(1.1 * need.max() * n_items / allowed[pending].min())) + 16
        draws = rng.integers(1, n_items + 1, size=(len(pending), width))
        keys = pending[:, None] * stride + draws
        keep = ~sorted_member(keys, banned)
        # an item drawn twice in a row is kept at its first draw only
        order = np.argsort(draws, axis=1, kind="stable")
        ordered = np.take_along_axis(draws, order, axis=1)
        repeat = np.zeros_like(keep)
        np.put_along_axis(repeat, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
        keep &= ~repeat
        slot = filled[live, None] + keep.cumsum(1) - 1
        keep &= slot < n
        hit_rows, hit_cols = np.nonzero(keep)
        out[pending[hit_rows], slot[hit_rows, hit_cols]] = draws[hit_rows, hit_cols]
        filled[live] += keep.sum(1)
        short = filled[live[hit_rows]] < n  # rows drawing again must not repeat their picks
        banned = np.sort(np.concatenate([banned, keys[hit_rows[short], hit_cols[short]]]))
        live = live[filled[live] < n]


def sampled_ranks(
    scores: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    """Pessimistic 0-based rank of each target among its sampled ``negatives`` (``[B, n]``, 0 =
    empty slot): how many of them score at least as high, NaN counting as the lowest score."""
    targets = targets.to(scores.device).long().view(-1, 1)
    negatives = negatives.to(scores.device)
    target_scores = _nan_lowest(scores.gather(1, targets))
    negative_scores = _nan_lowest(scores.gather(1, negatives))
    return ((negative_scores >= target_scores) & (negatives > 0)).sum(1)


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


def _resample_draws(n_users: int, n_samples: int, seed: int) -> Iterator[torch.Tensor]:
    """Seeded user draws in chunks ``[c, n_users]`` (about 4M indices each)."""
    gen = torch.Generator().manual_seed(seed)
    per_chunk = max(1, (1 << 22) // max(n_users, 1))
    done = 0
    while done < n_samples:
        size = min(per_chunk, n_samples - done)
        yield torch.randint(n_users, (size, n_users), generator=gen)
        done += size


@dataclass(frozen=True)
class Resamples:
    """One seeded set of user resamples, in the two forms every statistic needs.

    ``counts[b, u]`` is how often resample ``b`` drew user ``u``, so the means of any number of
    per-user values over all resamples are one matmul; bit ``b`` of ``drawn[u]`` says whether
    resample ``b`` drew user ``u`` at all (for coverage, a union). Shared, never to be modified.
    """

    counts: torch.Tensor  # [n_samples, n_users] float32 (small integers, exact)
    drawn: np.ndarray  # [n_users, n_words] uint64, bit-packed over the resamples


@functools.lru_cache(maxsize=4)
def resamples(n_users: int, n_samples: int, seed: int) -> Resamples:
    """The resamples for ``(n_users, n_samples, seed)``, drawn once per process: every metric, K,
    model and split on the same number of users gets the same draws, which is also what pairs
    two models in :func:`paired_bootstrap`."""
    counts = torch.empty(n_samples, n_users, dtype=torch.float32)
    done = 0
    for idx in _resample_draws(n_users, n_samples, seed):
        size = len(idx)
        flat = (idx + torch.arange(size).unsqueeze(1) * n_users).view(-1)
        counts[done : done + size] = torch.bincount(flat, minlength=size * n_users).view(size, -1)
        done += size
    bits = np.packbits((counts > 0).T.numpy(), axis=1)  # [n_users, ceil(n_samples / 8)]
    words = np.zeros((n_users, -(-bits.shape[1] // 8) * 8), dtype=np.uint8)
    words[:, : bits.shape[1]] = bits
    counts.requires_grad_(False)
    return Resamples(counts, words.view(np.uint64))


def bootstrap_means(values: torch.Tensor, n_samples: int, seed: int) -> torch.Tensor:
    """Means of per-user ``values`` (``[U]`` or ``[U, m]``) over each seeded resample of the
    users: ``[n_samples]`` or ``[n_samples, m]``, float64."""
    values = values.detach().double().cpu()
    counts = resamples(len(values), n_samples, seed).counts
    # Row chunks bound the float64 copy of the count matrix.
    parts = [chunk.double() @ values for chunk in counts.split(128)]
    return torch.cat(parts) / len(values)


def _intervals(points: list[float], stats: torch.Tensor, confidence: float) -> list[Interval]:
    """Percentile intervals of each column of ``stats`` (``[n_samples, m]``)."""
    alpha = (1.0 - confidence) / 2.0
    q = torch.tensor([alpha, 1.0 - alpha], dtype=stats.dtype)
    low, high = torch.quantile(stats, q, dim=0).tolist()
    return [Interval(p, lo, hi) for p, lo, hi in zip(points, low, high)]


def _check_bootstrap(n_users: int, confidence: float) -> None:
    if n_users == 0:
        raise ValueError("cannot summarise a metric over zero users")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def bootstrap_cis(
    columns: list[torch.Tensor],
    n_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Interval]:
    """:func:`bootstrap_ci` of several per-user metrics on the same users, all from one matmul."""
    if not columns:
        return []
    _check_bootstrap(len(columns[0]), confidence)
    points = [float(c.double().mean()) for c in columns]
    if n_samples <= 0:
        return [Interval(p, None, None) for p in points]
    stats = bootstrap_means(torch.stack([c.double().cpu() for c in columns], 1), n_samples, seed)
    return _intervals(points, stats, confidence)


def bootstrap_ci(
    values: torch.Tensor, n_samples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Interval:
    """Mean of per-user ``values`` with a percentile bootstrap interval over users."""
    return bootstrap_cis([values], n_samples, confidence, seed)[0]


def _resampled_coverage(
    lists: torch.Tensor, ks: tuple[int, ...], n_items: int, drawn: np.ndarray, n_samples: int
) -> torch.Tensor:
    """Coverage at each of ``ks`` (ascending) in each resample, ``[len(ks), n_samples]``: an item
    counts at k once any drawn user has it in their top k.

    One pass over the longest lists serves every k: the (user, item) pairs are grouped by item
    and by the band of slots they sit in (below ks[0], below ks[1], ...), each group ORs its
    users' draw bits once, and an item's bands are then ORed up to each k."""
    top = lists.numpy()
    users, slots = np.nonzero(top > 0)
    items = top[users, slots]
    bands = np.searchsorted(np.asarray(ks), slots, side="right")
    order = np.lexsort((bands, items))
    items, users, bands = items[order], users[order], bands[order]
    covered = np.zeros((len(ks), n_samples), dtype=np.int64)
    if not len(items):
        return torch.from_numpy(covered).double()
    new_item = np.r_[True, items[1:] != items[:-1]]
    groups = np.flatnonzero(new_item | np.r_[True, bands[1:] != bands[:-1]])
    item_starts = np.flatnonzero(new_item)
    # Chunks of whole items bound the gathered bit rows to about 32 MB.
    per_chunk = max(1, (1 << 22) // drawn.shape[1])
    bounds = np.r_[item_starts, len(items)]
    first = 0
    while first < len(item_starts):
        last = int(np.searchsorted(bounds, bounds[first] + per_chunk, side="right")) - 1
        last = max(last, first + 1)
        lo, hi = bounds[first], bounds[last]
        starts = groups[np.searchsorted(groups, lo) : np.searchsorted(groups, hi)]
        ored = np.bitwise_or.reduceat(drawn[users[lo:hi]], starts - lo, axis=0)
        item_of_group = np.cumsum(new_item[starts]) - 1
        for j in range(len(ks)):
            upto = bands[starts] <= j
            if not upto.any():
                continue
            its = item_of_group[upto]
            per_item = np.bitwise_or.reduceat(
                ored[upto], np.flatnonzero(np.r_[True, its[1:] != its[:-1]]), axis=0
            )
            bits = np.unpackbits(per_item.view(np.uint8), axis=1, count=n_samples)
            covered[j] += bits.sum(0, dtype=np.int64)
        first = last
    return torch.from_numpy(covered).double() / n_items


def coverage_cis(
    top_items: torch.Tensor,
    ks: tuple[int, ...],
    n_items: int,
    n_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[Interval]:
    """Catalogue coverage@k for each of ``ks`` with a bootstrap interval over users (the
    resamples of :func:`bootstrap_ci`).

    Coverage is a union, not a mean: a resample holds only about 63% distinct users, so its
    coverage is biased low and the plain percentile interval can miss the observed value
    entirely. The interval is therefore the percentile interval shifted by the bootstrap bias
    (observed minus mean resampled coverage): it keeps the resampling spread, centred on the
    observed coverage.
    """
    _check_bootstrap(len(top_items), confidence)
    points = [coverage_at_k(top_items, k, n_items) for k in ks]
    if n_samples <= 0:
        return [Interval(point, None, None) for point in points]
    ascending = sorted(set(ks))
    drawn = resamples(len(top_items), n_samples, seed).drawn
    lists = top_items[:, : ascending[-1]].cpu()
    by_k = _resampled_coverage(lists, tuple(ascending), n_items, drawn, n_samples)
    stats = by_k[[ascending.index(k) for k in ks]].T  # [n_samples, len(ks)]
    bias = torch.tensor(points, dtype=stats.dtype) - stats.mean(dim=0)
    return _intervals(points, (stats + bias).clamp(0.0, 1.0), confidence)


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
    means = bootstrap_means(diff, n_samples, seed)  # the same draws as each model's intervals
    ci = _intervals([delta], means.unsqueeze(1), confidence)[0]
    extreme = int(((means - delta).abs() >= abs(delta) - 1e-12).sum())
    return PairedTest(delta, ci.low, ci.high, (extreme + 1) / (n_samples + 1))
