"""Paired tests on the same test users: the best trained config against the best baseline, the
best generative config against ``sasrec-ce``, each chosen on validation, and every other trained
config against ``sasrec-ce``."""

from __future__ import annotations

from typing import Any

import torch

from recsys.modeling import metrics
from recsys.modeling.metric_summary import CONFIDENCE, MAIN_METRIC

#: The scoring config a generative one is compared with, on the same users.
REFERENCE_CONFIG = "sasrec-ce"


def significance(
    rows: list[dict[str, Any]], test_values: dict[str, torch.Tensor], n_bootstrap: int, seed: int
) -> dict[str, Any] | None:
    """Best trained config vs best baseline (both chosen on valid NDCG@10, a config by its mean
    over seeds), paired on the same test users; ``test_values`` holds each row's per-user test
    NDCG@10, averaged over a config's seeds."""

    def best(kind: str) -> dict[str, Any] | None:
        pool = [r for r in rows if r["kind"] == kind]
        return best_on_valid(pool) if pool else None

    model, baseline = best("trained"), best("baseline")
    if model is None or baseline is None:
        return None
    return paired_test(model, baseline, test_values, n_bootstrap, seed)


def best_on_valid(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return max(rows, key=lambda r: r["valid"][MAIN_METRIC]["value"])


def paired_test(
    model: dict[str, Any],
    baseline: dict[str, Any],
    test_values: dict[str, torch.Tensor],
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """``model`` - ``baseline`` in test NDCG@10, by a paired bootstrap over the same users."""
    test = metrics.paired_bootstrap(
        test_values[model["name"]], test_values[baseline["name"]], n_bootstrap, CONFIDENCE, seed
    )
    return {
        "metric": MAIN_METRIC,
        "split": "test",
        "model": model["name"],
        "n_seeds": model.get("n_seeds"),
        "baseline": baseline["name"],
        "method": test.method,
        "delta": test.delta,
        "low": test.low,
        "high": test.high,
        "p_value": test.p_value,
    }


def generative_test(
    rows: list[dict[str, Any]], test_values: dict[str, torch.Tensor], n_bootstrap: int, seed: int
) -> dict[str, Any] | None:
    """The best generative config against ``sasrec-ce`` (else the best scoring config), each
    chosen on valid NDCG@10, paired on the same test users."""
    trained = [r for r in rows if r["kind"] == "trained"]
    generative = [r for r in trained if r["item_repr"] == "semantic"]
    scoring = [r for r in trained if r["item_repr"] != "semantic"]
    if not generative or not scoring:
        return None
    reference = [r for r in scoring if r.get("config_name") == REFERENCE_CONFIG] or scoring
    return paired_test(
        best_on_valid(generative), best_on_valid(reference), test_values, n_bootstrap, seed
    )


def against_reference(
    rows: list[dict[str, Any]], test_values: dict[str, torch.Tensor], n_bootstrap: int, seed: int
) -> list[dict[str, Any]]:
    """Every other trained config (each model family, each variant) against ``sasrec-ce``,
    paired on the same test users: how far each lands from the reference, not a choice."""
    trained = [r for r in rows if r["kind"] == "trained"]
    reference = [r for r in trained if r.get("config_name") == REFERENCE_CONFIG]
    if not reference:
        return []
    chosen = best_on_valid(reference)
    return [
        paired_test(row, chosen, test_values, n_bootstrap, seed)
        for row in trained
        if row is not chosen
    ]
