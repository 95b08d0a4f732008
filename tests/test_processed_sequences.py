"""Sequences as one flat item array with bounds: the vectorised split examples, training pieces
and padding agree with plain per-user loops over the same random events."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recsys.modeling.lightning import SequenceWindows, ValidationExamples
from recsys.processed import (
    SPLIT_NAMES,
    TEST,
    TRAIN,
    VALID,
    Sequences,
    eval_examples,
    left_pad,
    train_pieces,
)


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    """Users 1..300 with 1..30 events, mostly train then valid then test, some odd orders."""
    rng = np.random.default_rng(3)
    rows = []
    for user in range(1, 301):
        n = int(rng.integers(1, 31))
        splits = [TRAIN] * max(0, n - 2) + [VALID, TEST][: min(n, 2)]
        if user % 7 == 0:  # an event of another split inside the training run
            splits = list(rng.permutation(splits))
        if user % 11 == 0:  # no test event
            splits = [TRAIN if s == TEST else s for s in splits]
        rows += [(user, int(rng.integers(1, 60)), s) for s in splits]
    return pd.DataFrame(rows, columns=["user_idx", "item_idx", "split"])


@pytest.mark.parametrize("split", ["valid", "test"])
def test_split_examples_are_each_users_first_split_event_and_all_before_it(events, split):
    examples = eval_examples(events, split)
    expected_users, expected_histories, expected_targets = [], [], []
    for user, group in events.groupby("user_idx", sort=True):
        hits = np.flatnonzero(group["split"].to_numpy() == SPLIT_NAMES[split])
        if len(hits):
            items = group["item_idx"].to_numpy()
            expected_users.append(user)
            expected_histories.append(items[: hits[0]].tolist())
            expected_targets.append(items[hits[0]])
    assert examples.users.tolist() == expected_users
    assert [h.tolist() for h in examples.histories] == expected_histories
    assert examples.targets.tolist() == expected_targets
    assert examples.histories.lengths().tolist() == [len(h) for h in expected_histories]


@pytest.mark.parametrize("removed", [[], [3, 17, 40]])
def test_training_pieces_are_the_runs_of_kept_training_events(events, removed):
    pieces = train_pieces(events, np.array(removed, dtype=np.int64))
    expected = []
    for user, group in events.groupby("user_idx", sort=True):
        run: list[int] = []
        for item, split in zip(group["item_idx"], group["split"]):
            if split == TRAIN and item not in removed:
                run.append(int(item))
                continue
            if run:
                expected.append((user, run))
            run = []
        if run:
            expected.append((user, run))
    assert [(int(u), s.tolist()) for u, s in zip(pieces.users, pieces)] == expected
    targets = [item for _, run in expected for item in run[1:]]
    assert pieces.flat(skip_first=True).tolist() == targets
    assert pieces.flat(skip_last=True).tolist() == [i for _, run in expected for i in run[:-1]]
    windows = SequenceWindows(pieces, max_len=4)
    assert windows.n_targets() == len(targets)


@pytest.mark.parametrize("width", [1, 5, 40])
def test_padding_keeps_the_last_items_of_each_sequence(events, width):
    histories = eval_examples(events, "test").histories
    padded = histories.padded(width)
    for row, history in enumerate(histories):
        tail = history[-width:].tolist()
        assert padded[row].tolist() == [0] * (width - len(tail)) + tail
    rows = np.array([5, 0, 9])
    assert np.array_equal(histories.padded(width, rows), padded[rows])
    assert np.array_equal(left_pad([h for h in histories], width), padded)
    assert left_pad([np.zeros(0, dtype=np.int64)], 3).tolist() == [[0, 0, 0]]


def test_selected_examples_and_validation_lengths_follow_the_rows(events):
    examples = eval_examples(events, "valid")
    keep = examples.targets % 2 == 0
    chosen = examples.take(keep)
    assert chosen.users.tolist() == examples.users[keep].tolist()
    assert [h.tolist() for h in chosen.histories] == [
        h.tolist() for h, k in zip(examples.histories, keep) if k
    ]
    valid = ValidationExamples(chosen, max_len=6)
    assert valid.lengths().tolist() == [min(len(h), 6) for h in chosen.histories]
    user, history, target = valid[2]
    assert (user, history.tolist(), target) == (
        int(chosen.users[2]),
        chosen.histories[2].tolist(),
        int(chosen.targets[2]),
    )


def test_sequences_of_arrays_keep_their_users_and_order():
    sequences = Sequences.of([np.array([4, 5]), np.zeros(0, dtype=np.int64), np.array([6])])
    assert sequences.users.tolist() == [1, 2, 3]
    assert [s.tolist() for s in sequences] == [[4, 5], [], [6]]
    assert Sequences.of([np.array([1])], users=np.array([9])).users.tolist() == [9]
