"""What every model of an evaluation is scored on, the same for all: a split's examples, the
seeded sample of test users (``--sample-users``), the Ks the catalogue allows, and the items'
training popularity."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from loguru import logger

from recsys.cli import fail
from recsys.modeling import metrics
from recsys.processed import TRAIN, EvalExamples, ProcessedData, eval_examples

SPLITS = ("valid", "test")


def training_popularity(data: ProcessedData) -> torch.Tensor:
    """Popularity percentile of items ``0..n_items`` from training-split counts."""
    train_items = data.events.loc[data.events["split"] == TRAIN, "item_idx"].to_numpy()
    counts = np.bincount(train_items, minlength=data.n_items + 1)[: data.n_items + 1]
    return metrics.popularity_percentiles(torch.from_numpy(counts))


def usable_ks(n_items: int) -> tuple[int, ...]:
    ks = tuple(k for k in metrics.KS if k <= n_items)
    if not ks:
        raise fail(f"the catalogue has {n_items} items, fewer than the smallest K {metrics.KS[0]}")
    return ks


def split_examples(
    data: ProcessedData, split: str, sample: UserSample | None = None
) -> EvalExamples:
    """A split's examples, of the sampled users only when there is a ``sample``."""
    examples = eval_examples(data.events, split)
    if not len(examples.targets):
        raise fail(
            f"processed {data.name!r} has no {split} events; re-run "
            f"'make data DATASET={data.name}' with a split that holds some out"
        )
    if sample is None:
        return examples
    examples = examples.take(np.isin(examples.users, sample.users))
    if not len(examples.targets):
        raise fail(
            f"the {len(sample.users)} sampled users have no {split} events; "
            "sample more with a larger --sample-users"
        )
    return examples


@dataclass(frozen=True)
class UserSample:
    """A seeded random sample of the test users: every model and split is scored on them."""

    users: np.ndarray  # sorted user ids
    of: int  # the test users it was drawn from
    seed: int

    def as_dict(self) -> dict[str, int]:
        return {"n_users": int(len(self.users)), "of": self.of, "seed": self.seed}


def user_sample(data: ProcessedData, n: int | None, seed: int) -> UserSample | None:
    """``n`` test users drawn with ``seed`` (``--sample-users``); None for all of them, also
    when ``n`` is at least their number."""
    if n is None:
        return None
    if n < 1:
        raise fail(f"--sample-users must be >= 1 (leave it out to evaluate every user), got {n}")
    users = np.unique(split_examples(data, "test").users)
    if n >= len(users):
        logger.info(f"--sample-users {n}: the {len(users)} test users are all evaluated")
        return None
    chosen = np.random.default_rng(seed).choice(users, n, replace=False)
    logger.info(f"evaluating a sample of {n} of the {len(users)} test users (seed {seed})")
    return UserSample(np.sort(chosen), len(users), seed)
