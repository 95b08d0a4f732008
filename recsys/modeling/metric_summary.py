"""One model's ranks as the report's metrics: per user, and every metric at every K with its
bootstrap interval over users."""

from __future__ import annotations

import torch

from recsys.modeling import metrics
from recsys.modeling.scoring import Ranked

CONFIDENCE = 0.95
MAIN_METRIC = "ndcg@10"
#: Names of the metrics of the target's rank among sampled negatives, not the full catalogue.
SAMPLED_PREFIX = "sampled_"


def per_user(ranked: Ranked, metric: str, k: int) -> torch.Tensor:
    """One rank metric (``hr``, ``recall``, ``ndcg``, ``mrr``, ``map``) per user; with the
    ``sampled_`` prefix, of the target's rank among the user's sampled negatives."""
    if metric.startswith(SAMPLED_PREFIX):
        if ranked.sampled_ranks is None:
            raise ValueError("these ranks were computed without sampled negatives")
        return metrics.RANK_METRICS[metric.removeprefix(SAMPLED_PREFIX)](ranked.sampled_ranks, k)
    return metrics.RANK_METRICS[metric](ranked.ranks, k)


def summarize(
    ranked: Ranked,
    popularity_pct: torch.Tensor,
    n_items: int,
    ks: tuple[int, ...],
    n_bootstrap: int,
    seed: int = 0,
) -> dict[str, dict[str, float | None]]:
    """Every metric at every K with its bootstrap interval, keyed like ``ndcg@10``, then the
    sampled-negatives metrics (``sampled_ndcg@10``) when the ranks have them.

    Every mean is resampled with the same draws, all at once (:func:`metrics.bootstrap_cis`).
    """
    means: dict[str, torch.Tensor] = {}
    for k in ks:
        for name in metrics.RANK_METRICS:
            means[f"{name}@{k}"] = per_user(ranked, name, k)
        means[f"popularity@{k}"] = metrics.mean_popularity_at_k(
            ranked.top_items, k, popularity_pct
        )
    if ranked.sampled_ranks is not None:
        for name, k in metrics.SAMPLED_METRICS:
            means[f"{SAMPLED_PREFIX}{name}@{k}"] = per_user(ranked, SAMPLED_PREFIX + name, k)
    intervals = metrics.bootstrap_cis(list(means.values()), n_bootstrap, CONFIDENCE, seed)
    found = {key: ci.as_dict() for key, ci in zip(means, intervals)}
    coverage = metrics.coverage_cis(ranked.top_items, ks, n_items, n_bootstrap, CONFIDENCE, seed)
    out: dict[str, dict[str, float | None]] = {}
    for k, covered in zip(ks, coverage):
        out.update({f"{name}@{k}": found[f"{name}@{k}"] for name in metrics.RANK_METRICS})
        out[f"coverage@{k}"] = covered.as_dict()
        out[f"popularity@{k}"] = found[f"popularity@{k}"]
    out.update({key: entry for key, entry in found.items() if key.startswith(SAMPLED_PREFIX)})
    return out
