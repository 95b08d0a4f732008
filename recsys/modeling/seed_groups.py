"""Runs of one config trained with several seeds (``make train SEEDS=42,1,2``) made into one row:
the mean over the seeds, their spread (sample std, min, max), and the bootstrap interval of the
mean model (each user's metric averaged over the seeds, then users resampled)."""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

import numpy as np
import torch
from loguru import logger

from recsys.modeling import metrics
from recsys.modeling.candidates import Candidate
from recsys.modeling.evaluation_data import SPLITS
from recsys.modeling.metric_summary import CONFIDENCE, SAMPLED_PREFIX, per_user
from recsys.modeling.scoring import Ranked

#: The run-name suffix ``make train SEEDS=...`` adds; a config's row drops it.
SEED_SUFFIX = re.compile(r"-seed\d+$")


def config_groups(candidates: list[Candidate]) -> list[list[Candidate]]:
    """Trained runs grouped by config (everything in their config but the seed), one run per
    seed; each baseline alone. Groups keep the order their first member came in."""
    groups: dict[str, list[Candidate]] = {}
    for cand in candidates:
        if cand.kind != "trained":
            groups[f"baseline {cand.name}"] = [cand]
            continue
        config = {k: v for k, v in (cand.config or {}).items() if k != "seed"}
        members = groups.setdefault(json.dumps(config, sort_keys=True, default=str), [])
        seed = (cand.config or {}).get("seed")
        twin = next((m for m in members if (m.config or {}).get("seed") == seed), None)
        if twin is not None:
            logger.warning(
                f"runs {twin.name} and {cand.name} have the same config and seed {seed}; "
                f"counting {twin.name} only"
            )
            continue
        members.append(cand)
    return list(groups.values())


def group_names(groups: list[list[Candidate]]) -> list[str]:
    """A row's name: its run's, or its runs' name without ``-seed<N>`` (all names if ambiguous)."""

    def wanted(members: list[Candidate]) -> str:
        bases = {SEED_SUFFIX.sub("", m.name) for m in members}
        if len(members) == 1:
            return members[0].name
        return bases.pop() if len(bases) == 1 else "+".join(m.name for m in members)

    names = [wanted(members) for members in groups]
    taken = Counter(names)
    return [
        name if taken[name] == 1 or len(members) == 1 else "+".join(m.name for m in members)
        for name, members in zip(names, groups)
    ]


def per_user_mean(ranked: list[Ranked], key: str, popularity: torch.Tensor) -> torch.Tensor | None:
    """Each user's ``key`` (``ndcg@10``, ``popularity@10``, ...) averaged over runs on the same
    users; None for coverage, which is a property of the whole list, not a mean over users."""
    name, _, k = key.partition("@")
    if name in metrics.RANK_METRICS or name.startswith(SAMPLED_PREFIX):
        values = [per_user(r, name, int(k)) for r in ranked]
    elif name == "popularity":
        values = [metrics.mean_popularity_at_k(r.top_items, int(k), popularity) for r in ranked]
    else:
        return None
    return torch.stack([v.double().cpu() for v in values]).mean(0)


def seed_entry(
    values: np.ndarray, users: torch.Tensor | None, n_bootstrap: int, seed: int
) -> dict[str, float | None]:
    """One metric over a config's seeds: the mean of the seeds' ``values``, their spread (``std``:
    sample standard deviation, ``min``, ``max``) and the bootstrap interval of the mean model
    (resampling users on their metric averaged over the seeds; none without such ``users``)."""
    entry = metrics.Interval(float(values.mean()), None, None).as_dict()
    if users is not None:
        interval = metrics.bootstrap_ci(users, n_bootstrap, CONFIDENCE, seed).as_dict()
        entry.update(low=interval["low"], high=interval["high"])
    spread = {"std": values.std(ddof=1), "min": values.min(), "max": values.max()}
    return {**entry, **{k: round(float(v), 6) for k, v in spread.items()}}


def seed_row(
    name: str,
    rows: list[dict[str, Any]],
    ranked: list[dict[str, Ranked]],
    popularity: torch.Tensor,
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """One config's row from the rows (and ranks) of its seeds' runs: see :func:`seed_entry`."""
    first = rows[0]
    out = {
        "name": name,
        "kind": first["kind"],
        "run": None,
        "item_repr": first["item_repr"],
        "n_params": first["n_params"],
        "max_k": first["max_k"],
        "params": first["params"],
    }
    for split in SPLITS:
        out[split] = {
            key: (
                seed_entry(
                    np.array([row[split][key]["value"] for row in rows], dtype=np.float64),
                    per_user_mean([r[split] for r in ranked], key, popularity),
                    n_bootstrap,
                    seed,
                )
                if entry["value"] is not None
                else entry  # blank beyond a generative run's beams
            )
            for key, entry in first[split].items()
        }
    return out
