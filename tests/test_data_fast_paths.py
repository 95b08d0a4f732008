"""The data stage's fast paths at H&M size give what their plain forms give: the event order
(by user, then time, ties by policy) is numpy's three-key lexsort however the keys are packed,
the exact duplicates are pandas' ``duplicated``, and the interim interactions keep one dictionary
of ids for the whole file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from recsys.data import interim
from recsys.data.split import event_order


def reference(user_idx: np.ndarray, timestamps: np.ndarray, ties: str, seed: int) -> np.ndarray:
    if ties == "file":
        return np.lexsort((timestamps, user_idx))
    key = np.random.default_rng(seed).permutation(len(user_idx))
    return np.lexsort((key, timestamps, user_idx))


@pytest.mark.parametrize("ties", ["shuffle", "file"])
@pytest.mark.parametrize(
    "max_user, times",
    [
        (50, lambda rng, n: rng.integers(0, 5, n) * 86_400 + 1_537_401_600),  # one sort
        (2**20, lambda rng, n: rng.integers(0, 2**40, n)),  # wide times: by their rank
        (2**20, lambda rng, n: rng.integers(0, 2**25, n) * 86_400),  # days: in steps of one
        (2**45, lambda rng, n: rng.integers(0, 2**40, n)),  # no room for the tie key: stable
        (2**61, lambda rng, n: rng.integers(0, 2**40, n)),  # too wide to pack: lexsort
    ],
)
def test_event_order_is_the_lexsort_of_user_time_and_tie_key(ties, max_user, times):
    rng = np.random.default_rng(0)
    n = 5_000
    user_idx = rng.integers(1, max_user, n, dtype=np.int64)
    user_idx[: n // 2] = user_idx[0]  # one heavy user, so that many events tie
    timestamps = times(rng, n)
    timestamps[: n // 4] = timestamps[0]
    for seed in (0, 7):
        order = event_order(user_idx, timestamps, ties, seed)
        np.testing.assert_array_equal(order, reference(user_idx, timestamps, ties, seed))


def test_no_events_give_an_empty_order():
    assert event_order(np.zeros(0, np.int64), np.zeros(0, np.int64)).tolist() == []


@pytest.mark.parametrize("collide", [False, True])
def test_exact_duplicates_are_pandas_duplicated_even_when_hashes_collide(monkeypatch, collide):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {
            "user_id": pd.Categorical(rng.choice(["a", "b", "c"], 400)),
            "item_id": rng.integers(0, 6, 400).astype(str),
            "timestamp": rng.integers(0, 3, 400),
            "rating": np.where(rng.random(400) < 0.5, np.nan, 4.0),
        }
    )
    if collide:  # every row the same hash: only the exact comparison tells them apart
        monkeypatch.setattr(
            pd.util, "hash_pandas_object", lambda f, index: pd.Series(np.zeros(len(f), np.uint64))
        )
    found = interim.exact_duplicates(frame)
    np.testing.assert_array_equal(found, frame.duplicated(keep="first").to_numpy())
    assert 0 < found.sum() < len(frame)


def test_rows_without_repeated_hashes_have_no_duplicates():
    frame = pd.DataFrame({"user_id": ["a", "b", "a"], "item_id": ["1", "1", "2"], "timestamp": 0})
    assert not interim.exact_duplicates(frame).any()


@pytest.mark.slow
def test_interim_interactions_are_one_row_group_with_one_dictionary(tmp_path):
    """Past parquet's default row group (1,048,576 rows) the ids' dictionary would be written
    again for every group; the file holds one group, and the ids read back as categories."""
    rng = np.random.default_rng(2)
    n = 1_200_000
    users = pd.Categorical.from_codes(
        rng.integers(0, 50_000, n), [f"{u:064x}" for u in range(50_000)]
    )
    frame = pd.DataFrame(
        {
            "user_id": users,
            "item_id": pd.Categorical(rng.integers(0, 900, n).astype(str)),
            "timestamp": rng.integers(0, 10**9, n),
            "rating": np.full(n, np.nan, np.float32),
        }
    )
    interim.write_interactions(frame, tmp_path / "interactions.parquet")
    assert pq.ParquetFile(tmp_path / "interactions.parquet").metadata.num_row_groups == 1
    back = pd.read_parquet(tmp_path / "interactions.parquet")
    pd.testing.assert_frame_equal(back, frame)
