"""Synthetic processed datasets for training tests and speed benchmarks.

Sequences follow a noisy walk over the catalogue (the next item is usually a few ids after the
previous one), so a sequence model has something to learn and an untrained one does not score
well. The files follow the processed-data contract of :mod:`recsys.processed`, leave-one-out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recsys.io import ensure_dir
from recsys.processed import TEST, TRAIN, VALID, processed_dir, write_processed


def synthetic_events(
    n_users: int, n_items: int, n_events: int, seed: int = 0, min_len: int = 5
) -> pd.DataFrame:
    """Leave-one-out events of ``n_users`` walks with lengths summing to about ``n_events``."""
    rng = np.random.default_rng(seed)
    lengths = rng.lognormal(mean=0.0, sigma=1.0, size=n_users)
    lengths = np.maximum(min_len, np.round(lengths / lengths.sum() * n_events)).astype(np.int64)
    rows = []
    for user, length in enumerate(lengths, start=1):
        steps = rng.integers(1, 4, size=length)
        jumps = rng.random(length) < 0.1
        steps[jumps] = rng.integers(0, n_items, size=int(jumps.sum()))
        items = (rng.integers(0, n_items) + np.cumsum(steps)) % n_items + 1
        split = np.full(length, TRAIN, dtype=np.int8)
        split[-2], split[-1] = VALID, TEST
        rows.append(
            pd.DataFrame(
                {
                    "user_idx": np.full(length, user, dtype=np.int32),
                    "item_idx": items.astype(np.int32),
                    "timestamp": np.arange(length, dtype=np.int64),
                    "split": split,
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def write_synthetic_processed(
    root: Path,
    name: str = "synthetic",
    n_users: int = 60,
    n_items: int = 40,
    n_events: int = 1500,
    n_cold: int = 0,
    seed: int = 0,
) -> Path:
    """Write ``root/name`` in the processed layout; ``n_cold`` extra items have no events."""
    events = synthetic_events(n_users, n_items, n_events, seed)
    folder = processed_dir(name, root)
    n_catalogue = n_items + n_cold
    counts = np.bincount(events["item_idx"], minlength=n_catalogue + 1)[1:]
    items = pd.DataFrame(
        {
            "item_idx": np.arange(1, n_catalogue + 1, dtype=np.int32),
            "item_id": np.arange(1, n_catalogue + 1),
            "title": [f"Item {i}" for i in range(1, n_catalogue + 1)],
            "n_interactions": counts.astype(np.int64),
        }
    )
    users = pd.DataFrame(
        {"user_idx": np.arange(1, n_users + 1, dtype=np.int32), "user_id": np.arange(n_users)}
    )
    stats = {
        "dataset": name,
        "n_users": n_users,
        "n_items": n_items,
        "n_catalogue": n_catalogue,
        "n_interactions": len(events),
        "split": {"kind": "leave-one-out"},
        "synthetic": True,
    }
    return write_processed(ensure_dir(folder), events, items, users, stats)
