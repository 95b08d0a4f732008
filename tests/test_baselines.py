"""EASE's fast path: the in-place float32 inverse and the sparse scoring give the plain numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.modeling.baselines import EASE, _mirror_upper, _spd_inverse


def test_mirror_upper_copies_the_upper_triangle_across_tiles():
    rng = np.random.default_rng(0)
    full = rng.random((11, 11)).astype(np.float32)
    full = full + full.T
    garbage = np.triu(full) + np.tril(rng.random((11, 11)).astype(np.float32), -1)
    _mirror_upper(garbage, tile=4)  # 11 = two whole tiles and a partial one
    assert np.array_equal(garbage, full)


def test_spd_inverse_matches_a_float64_inverse_in_place():
    rng = np.random.default_rng(1)
    x = rng.random((50, 700)).astype(np.float32)  # 700 > one 512 tile of the mirror
    gram = x.T @ x + 5.0 * np.eye(700, dtype=np.float32)
    expected = np.linalg.inv(gram.astype(np.float64))
    work = gram.copy()
    inverse = _spd_inverse(work)
    assert np.shares_memory(inverse, work) and inverse.flags["C_CONTIGUOUS"]
    assert np.array_equal(inverse, inverse.T)
    assert np.abs(inverse - expected).max() < 1e-5 * np.abs(expected).max()
    with pytest.raises(ValueError, match="not positive definite"):
        _spd_inverse(-np.eye(3, dtype=np.float32))


def test_ease_scores_are_the_dense_multi_hot_product_plus_tie_break():
    rng = np.random.default_rng(2)
    seqs = [
        rng.choice(np.arange(1, 31), size=rng.integers(2, 8), replace=False) for _ in range(80)
    ]
    model = EASE(l2=2.0).fit(seqs, n_items=30, n_catalogue=33)  # 3 item-table-only items
    item_seq = torch.tensor([[0, 0, 3, 7, 3], [0, 0, 0, 0, 31], [1, 2, 4, 8, 16]])
    scores = model.score(item_seq)
    multi_hot = torch.zeros(3, 31)
    for row, seq in enumerate(item_seq.tolist()):
        multi_hot[row, [i for i in seq if 0 < i <= 30]] = 1.0  # a repeat counts once
    tie_break = torch.from_numpy(model._tie_break())
    expected = torch.cat([multi_hot @ model.weights, torch.zeros(3, 3)], 1) + tie_break
    assert scores.shape == (3, 34)
    assert torch.allclose(scores[:, 1:], expected[:, 1:], atol=1e-6)
    assert torch.isinf(scores[:, 0]).all()
