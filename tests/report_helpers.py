"""Small synthetic stage outputs for the plot, report and browser tests (no MovieLens needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys import processed

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]


def write_processed(
    root: Path, dataset: str, n_users: int = 40, n_items: int = 60, n_cold: int = 4, seed: int = 0
) -> Path:
    """The processed files of a toy dataset: genre-loyal users, leave-one-out split.

    Each user mostly picks items of one genre, so a model (and the kNN genre agreement) has some
    structure to find.
    """
    rng = np.random.default_rng(seed)
    n_catalogue = n_items + n_cold
    item_genres = [GENRES[i % len(GENRES)] for i in range(n_catalogue)]
    by_genre = {g: [i + 1 for i in range(n_items) if item_genres[i] == g] for g in GENRES}
    rows = []
    for user in range(1, n_users + 1):
        favourite = GENRES[user % len(GENRES)]
        length = int(rng.integers(12, 25))
        for t in range(length):
            pool = by_genre[favourite] if rng.random() < 0.8 else range(1, n_items + 1)
            rows.append((user, int(rng.choice(list(pool))), 1_000_000 + 60 * t))
    events = pd.DataFrame(rows, columns=["user_idx", "item_idx", "timestamp"])
    # items 1..n_items must each have an interaction: give the unpicked ones to user 1
    unseen = sorted(set(range(1, n_items + 1)) - set(events["item_idx"]))
    extra = pd.DataFrame({"user_idx": 1, "item_idx": unseen, "timestamp": 999_000})
    events = pd.concat([extra, events]).sort_values(["user_idx", "timestamp"], kind="stable")
    position_from_end = events.groupby("user_idx").cumcount(ascending=False)
    events["split"] = np.select([position_from_end == 0, position_from_end == 1], [2, 1], 0)
    events = events.astype(
        {"user_idx": "int32", "item_idx": "int32", "timestamp": "int64", "split": "int8"}
    ).reset_index(drop=True)
    counts = events["item_idx"].value_counts()
    items = pd.DataFrame(
        {
            "item_idx": np.arange(1, n_catalogue + 1, dtype=np.int32),
            "item_id": [str(100 + i) for i in range(1, n_catalogue + 1)],
            "title": [
                f"Film {i} | part *{i % 3}* (19{50 + i % 50})" for i in range(1, n_catalogue + 1)
            ],
            "genres": [f"{g}|Drama" if g != "Drama" else "Drama" for g in item_genres],
            "n_interactions": [int(counts.get(i, 0)) for i in range(1, n_catalogue + 1)],
        }
    )
    users = pd.DataFrame(
        {
            "user_idx": np.arange(1, n_users + 1, dtype=np.int32),
            "user_id": [str(500 + u) for u in range(1, n_users + 1)],
        }
    )
    stats = {
        "dataset": dataset,
        "n_users": n_users,
        "n_items": n_items,
        "n_catalogue": n_catalogue,
        "n_interactions": len(events),
        "split": {"kind": "leave-one-out"},
        "raw_files": {
            "ratings.csv": {
                "bytes": 4321,
                "md5": "0123456789abcdef0123456789abcdef",
                "verified": True,
            }
        },
    }
    return processed.write_processed(root / dataset, events, items, users, stats)


def interval(value: float, half: float) -> dict[str, float]:
    return {"value": value, "low": round(value - half, 6), "high": round(value + half, 6)}


def metrics_report(dataset: str, cold_start: bool = True) -> dict[str, Any]:
    """The metrics JSON of evaluate with distinct, recognisable values (a fixture, not results)."""

    def split(base: float) -> dict[str, dict[str, float]]:
        cells = {}
        for i, k in enumerate([5, 10, 20, 50]):
            for j, metric in enumerate(["hr", "ndcg", "recall", "mrr", "map", "coverage"]):
                cells[f"{metric}@{k}"] = interval(round(base + 0.0123 * i + 0.0311 * j, 4), 0.0211)
            cells[f"popularity@{k}"] = interval(round(0.7123 - base / 10 + 0.001 * i, 4), 0.0105)
        return cells

    models = [
        ("gpt-hybrid", "trained", "models/x/gpt-hybrid", "hybrid", 12345, 0.2718),
        ("sasrec-ce", "trained", "models/x/sasrec-ce", "id", 23456, 0.2468),
        ("most-popular", "baseline", None, None, None, 0.0577),
        ("ease", "baseline", None, None, None, 0.1357),
    ]
    return {
        "dataset": dataset,
        "split": "leave-one-out",
        "n_users": 943,
        "n_items": 1682,
        "ks": [5, 10, 20, 50],
        "history_masked": True,
        "bootstrap": {"samples": 1000, "confidence": 0.95},
        "generated_at": "2025-01-02T03:04:05+00:00",
        "models": [
            {
                "name": name,
                "kind": kind,
                "run": run_dir,
                "item_repr": item_repr,
                "n_params": n_params,
                "valid": split(base + 0.0042),
                "test": split(base),
            }
            for name, kind, run_dir, item_repr, n_params, base in models
        ],
        "significance": {
            "metric": "ndcg@10",
            "split": "test",
            "model": "gpt-hybrid",
            "baseline": "ease",
            "method": "paired bootstrap",
            "delta": 0.1361,
            "low": 0.1013,
            "high": 0.1702,
            "p_value": 0.0009,
        },
        "cold_start": (
            {
                "fraction": 0.1,
                "n_cold_items": 168,
                "n_test_events": 77,
                "models": [
                    {
                        "name": "gpt-text-cold0.1",
                        "item_repr": "text",
                        "can_score_cold": True,
                        "hr@10": interval(0.0649, 0.0311),
                        "ndcg@10": interval(0.0302, 0.0157),
                    },
                    {
                        "name": "sasrec-ce-cold0.1",
                        "item_repr": "id",
                        "can_score_cold": False,
                        "hr@10": interval(0.0, 0.0),
                        "ndcg@10": interval(0.0, 0.0),
                    },
                ],
            }
            if cold_start
            else None
        ),
    }
