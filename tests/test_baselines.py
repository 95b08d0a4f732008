"""The baselines' fast paths give the plain numbers: EASE's in-place float32 inverse and sparse
scoring, and item-kNN's neighbours from sparse blocks of the co-occurrence product."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.modeling.baselines import EASE, ItemKNN, _mirror_upper, _spd_inverse


def test_mirror_upper_copies_the_upper_triangle_across_tiles():
    rng = np.random.default_rng(0)
    full = rng.random((11, 11)).astype(np.float32)
    full = full + full.T
    garbage = np.triu(full) + np.tril(rng.random((11, 11)).astype(np.float32), -1)
    _mirror_upper(garbage, tile=4)  # 11 = two whole tiles and a partial one
    assert np.array_equal(garbage, full)


@pytest.mark.slow
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


@pytest.mark.parametrize("neighbors, block", [(5, 7), (200, 1024)])
def test_item_knn_keeps_each_items_most_similar_items_of_the_dense_cosine(neighbors, block):
    """Against the dense cosine of the co-occurrence, diagonal out: each row keeps the values of
    its best ``neighbors`` (which of several tied items is kept is not fixed), in row blocks
    smaller and larger than the catalogue."""
    rng = np.random.default_rng(2)
    n_items = 30
    seqs = [rng.choice(np.arange(1, n_items + 1), size=rng.integers(1, 8)) for _ in range(60)]
    model = ItemKNN(neighbors=neighbors, block=block).fit(seqs, n_items, n_items)
    users_items = np.zeros((len(seqs), n_items + 1))
    for row, seq in enumerate(seqs):
        users_items[row, seq] = 1.0
    co = users_items.T @ users_items
    norms = np.sqrt(users_items.sum(0))
    norms[norms == 0] = 1.0
    cosine = co / np.outer(norms, norms)
    np.fill_diagonal(cosine, 0.0)
    similarity = model.similarity.toarray()
    kept = similarity > 0
    np.testing.assert_allclose(similarity[kept], cosine[kept], rtol=1e-6)
    for item in range(n_items + 1):
        best = np.sort(cosine[item][cosine[item] > 0])[::-1][:neighbors]
        np.testing.assert_allclose(np.sort(similarity[item][kept[item]])[::-1], best, rtol=1e-6)


@pytest.mark.parametrize("cls, settings", [(EASE, "l2"), (ItemKNN, "neighbors")])
def test_a_grid_fits_the_models_that_each_setting_fits_alone(cls, settings):
    """EASE's grid shares one Gram matrix across its l2 values; each model must still be the one
    that setting fits on its own (item-kNN fits each setting anew)."""
    rng = np.random.default_rng(3)
    seqs = [
        rng.choice(np.arange(1, 41), size=rng.integers(2, 9), replace=False) for _ in range(90)
    ]
    values = {"l2": (1.0, 30.0, 500.0), "neighbors": (2, 5, 40)}[settings]
    points = [{settings: value} for value in values]
    grid = list(cls.fit_grid(seqs, 40, 42, points))
    assert [model.settings() for model in grid] == points
    item_seq = torch.tensor([[0, 0, 3, 7, 9], [0, 0, 0, 1, 41], [2, 4, 8, 16, 32]])
    for model, setting in zip(grid, points):
        alone = cls(**setting).fit(seqs, 40, 42)
        assert torch.allclose(model.score(item_seq), alone.score(item_seq), atol=1e-6)
    assert not torch.allclose(grid[0].score(item_seq)[:, 1:], grid[-1].score(item_seq)[:, 1:])
