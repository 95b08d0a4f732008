"""Hand-worked cases for every ranking metric, the sampled protocol, the bootstrap, and the
baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.linear_model import Ridge

from recsys.modeling import metrics
from recsys.modeling.baselines import EASE, ItemKNN, MostPopular, Transitions, fit_baselines

NEG_INF = float("-inf")


def ranks_of(scores, targets, exclude=None, n_rank=None):
    return metrics.target_ranks(torch.tensor(scores), torch.tensor(targets), exclude, n_rank)


# ------------------------------------------------------------------------------------ ranks


def test_rank_counts_better_candidates_and_skips_padding_column():
    # items 1..4 score 5, 3, 4, 1; item 2 (score 3) is beaten by items 1 and 3
    ranks = ranks_of([[99.0, 5.0, 3.0, 4.0, 1.0]], [2])
    assert ranks.tolist() == [[2]]


def test_history_masking_removes_earlier_items_but_keep_history_does_not():
    scores = [[0.0, 5.0, 3.0, 4.0, 1.0]]
    history = torch.tensor([[0, 1]])  # left-padded: the user saw item 1
    assert ranks_of(scores, [2], exclude=history).tolist() == [[1]]
    assert ranks_of(scores, [2], exclude=None).tolist() == [[2]]


def test_target_in_history_still_competes():
    history = torch.tensor([[2, 1]])
    assert ranks_of([[0.0, 5.0, 3.0, 4.0, 1.0]], [2], exclude=history).tolist() == [[1]]


def test_ties_are_pessimistic():
    # items 1, 2, 3 tie at 2.0; the target (2) is placed after both other tied items
    assert ranks_of([[0.0, 2.0, 2.0, 2.0, 1.0]], [2]).tolist() == [[2]]


def test_tied_relevant_items_come_after_tied_irrelevant_ones():
    ranks = ranks_of([[0.0, 1.0, 1.0, 1.0, 1.0]], [[1, 3]])
    assert ranks.tolist() == [[2, 3]]


def test_nan_scores_rank_last():
    assert ranks_of([[0.0, 1.0, float("nan"), 2.0]], [2]).tolist() == [[2]]


def test_n_rank_limits_candidates_to_interacted_items():
    # item 4 is item-table-only (cold): it must not push the target down
    scores = [[0.0, 1.0, 2.0, 3.0, 9.0]]
    assert ranks_of(scores, [1], n_rank=3).tolist() == [[2]]
    with pytest.raises(ValueError, match="targets must be item ids"):
        ranks_of(scores, [4], n_rank=3)


def test_constant_scorer_earns_nothing():
    gen = torch.Generator().manual_seed(0)
    n_users, n_items = 64, 100
    scores = torch.ones(n_users, n_items + 1)
    targets = torch.randint(1, n_items + 1, (n_users,), generator=gen)
    history = torch.randint(0, n_items + 1, (n_users, 20), generator=gen)
    for exclude in (None, history):
        ranks = metrics.target_ranks(scores, targets, exclude)
        for k in metrics.KS:
            for name, metric in metrics.RANK_METRICS.items():
                assert metric(ranks, k).sum().item() == 0.0, (name, k)


# ---------------------------------------------------------------------------------- metrics


def test_single_target_metrics_by_hand():
    ranks = torch.tensor([0, 2, 7])  # three users: top hit, third place, miss at k=5
    assert metrics.hit_rate_at_k(ranks, 5).tolist() == [1.0, 1.0, 0.0]
    assert metrics.hit_rate_at_k(ranks, 1).tolist() == [1.0, 0.0, 0.0]
    assert metrics.recall_at_k(ranks, 5).tolist() == [1.0, 1.0, 0.0]
    assert metrics.ndcg_at_k(ranks, 5).tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert metrics.mrr_at_k(ranks, 5).tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    assert metrics.map_at_k(ranks, 5).tolist() == pytest.approx([1.0, 1 / 3, 0.0])
    assert metrics.ndcg_at_k(ranks, 10).tolist() == pytest.approx([1.0, 0.5, 1 / math.log2(9)])


def test_single_interaction_user_with_empty_history():
    # a user whose only event is the target: the history row is all padding, nothing is masked
    scores = [[0.0, 3.0, 2.0, 1.0], [0.0, 3.0, 2.0, 1.0]]
    history = torch.tensor([[0, 0], [0, 1]])
    ranks = ranks_of(scores, [2, 2], exclude=history)
    assert ranks.tolist() == [[1], [0]]
    assert metrics.ndcg_at_k(ranks, 2).tolist() == pytest.approx([1 / math.log2(3), 1.0])
    padded = ranks_of(scores[:1], [[2, 0]])  # one real target plus padding
    assert padded.tolist() == [[1, metrics.NO_TARGET]]
    assert metrics.recall_at_k(padded, 2).item() == 1.0
    assert metrics.map_at_k(padded, 2).item() == pytest.approx(0.5)


def test_several_targets_by_hand():
    # items 1..6 score 6..1, targets 2 and 5 sit at ranks 1 and 4
    ranks = ranks_of([[0.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]], [[2, 5]])
    assert ranks.tolist() == [[1, 4]]
    assert metrics.hit_rate_at_k(ranks, 3).item() == 1.0
    assert metrics.recall_at_k(ranks, 3).item() == 0.5
    assert metrics.recall_at_k(ranks, 5).item() == 1.0
    ideal = 1 + 1 / math.log2(3)
    assert metrics.ndcg_at_k(ranks, 5).item() == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(6)) / ideal
    )
    assert metrics.ndcg_at_k(ranks, 3).item() == pytest.approx((1 / math.log2(3)) / ideal)
    assert metrics.mrr_at_k(ranks, 5).item() == pytest.approx(0.5)
    assert metrics.map_at_k(ranks, 5).item() == pytest.approx((1 / 2 + 2 / 5) / 2)
    assert metrics.map_at_k(ranks, 3).item() == pytest.approx((1 / 2) / 2)
    assert metrics.map_at_k(ranks, 1).item() == 0.0


def test_k_must_be_positive():
    with pytest.raises(ValueError, match="k must be positive"):
        metrics.ndcg_at_k(torch.tensor([0]), 0)


def test_top_k_items_masks_history_and_fills_when_candidates_run_out():
    scores = torch.tensor([[0.0, 5.0, 3.0, 4.0, 1.0]])
    assert metrics.top_k_items(scores, 2).tolist() == [[1, 3]]
    assert metrics.top_k_items(scores, 2, exclude=torch.tensor([[1, 0]])).tolist() == [[3, 2]]
    assert metrics.top_k_items(scores, 3, n_rank=2).tolist() == [[1, 2, 0]]
    allowed = torch.tensor([False, True, False, False, True])
    assert metrics.top_k_items(scores, 3, allowed=allowed).tolist() == [[1, 4, 0]]
    with pytest.raises(ValueError, match="at most the catalogue size"):
        metrics.top_k_items(scores, 5)


def test_coverage_and_popularity_by_hand():
    top = torch.tensor([[1, 2], [2, 3]])
    assert metrics.coverage_at_k(top, 2, n_items=4) == 0.75
    assert metrics.coverage_at_k(top, 1, n_items=4) == 0.5
    counts = torch.tensor([0, 10, 20, 20, 5])
    pct = metrics.popularity_percentiles(counts)
    assert pct.tolist() == pytest.approx([0.0, 37.5, 75.0, 75.0, 12.5])
    assert metrics.mean_popularity_at_k(top, 2, pct).tolist() == pytest.approx([56.25, 75.0])
    padded = torch.tensor([[4, 0]])  # a user with one candidate left: padding is skipped
    assert metrics.mean_popularity_at_k(padded, 2, pct).tolist() == pytest.approx([12.5])


def test_rank_batch_and_next_item_ranks_equal_target_ranks_and_top_k_items(monkeypatch):
    # ties, NaN, -inf, targets inside the history, item-table-only columns: one pass, same numbers
    gen = torch.Generator().manual_seed(0)
    for trial in range(50):
        # next_item_ranks goes through the rows in blocks: one block, then 2 rows, then 1
        monkeypatch.setattr(metrics, "COUNT_BLOCK", (2**20, 60, 1)[trial % 3])
        scores = torch.randint(0, 4, (9, 30), generator=gen).float()
        scores[torch.rand(9, 30, generator=gen) < 0.1] = float("nan")
        scores[torch.rand(9, 30, generator=gen) < 0.1] = NEG_INF
        targets = torch.randint(1, 26, (9,), generator=gen)
        history = torch.randint(0, 30, (9, 6), generator=gen)
        history[::2, 0] = targets[::2]
        exclude = None if trial % 4 == 0 else history
        k = 22 if trial % 2 else 5  # 22: rows run out of scored candidates, 0 fills the list
        out = metrics.rank_batch(scores, targets, k, exclude, n_rank=25)
        general = metrics.target_ranks(scores, targets, exclude, 25)[:, 0]
        assert torch.equal(out.ranks, general)
        assert torch.equal(metrics.next_item_ranks(scores, targets, exclude, 25), general)
        assert torch.equal(out.top_items, metrics.top_k_items(scores, k, exclude, 25))
        assert out.sampled is None
    with pytest.raises(ValueError, match="one real target per row"):
        metrics.rank_batch(torch.zeros(1, 5), torch.tensor([0]), 2)
    with pytest.raises(ValueError, match="one real target per row"):
        metrics.next_item_ranks(torch.zeros(1, 5), torch.tensor([0]))
    with pytest.raises(ValueError, match="targets must be item ids"):
        metrics.rank_batch(torch.zeros(1, 5), torch.tensor([4]), 2, n_rank=3)


# ------------------------------------------------------------------------- sampled metrics


def test_sampled_ranks_by_hand():
    # items 1..6 score 6..1; the target (item 4, score 3) beats negatives 5 and 6 only
    scores = torch.tensor([[0.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]])
    assert metrics.sampled_ranks(scores, torch.tensor([4]), torch.tensor([[5, 6]])).tolist() == [0]
    assert metrics.sampled_ranks(
        scores, torch.tensor([4]), torch.tensor([[1, 5, 0]])
    ).tolist() == [1]
    # ties are pessimistic, NaN is the lowest score, 0 is an empty slot
    tied = torch.tensor([[0.0, 2.0, 2.0, float("nan"), 2.0]])
    ranks = metrics.sampled_ranks(tied, torch.tensor([2]), torch.tensor([[1, 3, 4, 0]]))
    assert ranks.tolist() == [2]
    assert metrics.hit_rate_at_k(ranks, 1).item() == 0.0
    assert metrics.ndcg_at_k(ranks, 5).item() == pytest.approx(0.5)


@pytest.mark.parametrize("chunk_rows", [metrics.SAMPLE_CHUNK_ROWS, 7])
def test_sample_negatives_exclude_history_and_target_and_are_seeded(monkeypatch, chunk_rows):
    """Also when the rows are drawn a few at a time, each chunk against its own exclusions."""
    monkeypatch.setattr(metrics, "SAMPLE_CHUNK_ROWS", chunk_rows)
    gen = torch.Generator().manual_seed(0)
    n_items, n = 300, 100
    exclude = torch.randint(0, n_items + 1, (40, 30), generator=gen)  # history + target, 0-padded
    negatives = metrics.sample_negatives(exclude, n_items, n, seed=3)
    assert negatives.shape == (40, n)
    for row, banned in zip(negatives.tolist(), exclude.tolist()):
        assert len(set(row)) == n and min(row) >= 1 and max(row) <= n_items
        assert not set(row) & set(banned)
    assert torch.equal(metrics.sample_negatives(exclude, n_items, n, seed=3), negatives)
    assert not torch.equal(metrics.sample_negatives(exclude, n_items, n, seed=4), negatives)
    # a catalogue with fewer allowed items than n: all of them, then padding
    few = metrics.sample_negatives(torch.tensor([[2, 0, 5]]), n_items=6, n=5)
    assert sorted(few[0, :4].tolist()) == [1, 3, 4, 6] and few[0, 4].item() == 0
    with pytest.raises(ValueError, match="must be positive"):
        metrics.sample_negatives(exclude, n_items, 0)


def test_sample_negatives_are_uniform_over_the_allowed_items():
    exclude = torch.tensor([[1, 2]] * 4000)
    counts = torch.bincount(metrics.sample_negatives(exclude, 12, n=5).view(-1), minlength=13)
    assert counts[:3].tolist() == [0, 0, 0]
    expected = 4000 * 5 / 10  # 10 allowed items, 5 drawn per row
    assert ((counts[3:].double() - expected).abs() < 0.06 * expected).all()


def test_sampled_rank_is_never_above_the_full_rank():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 20, (64, 201), generator=gen).float()
    targets = torch.randint(1, 201, (64,), generator=gen)
    history = torch.randint(0, 201, (64, 10), generator=gen)
    negatives = metrics.sample_negatives(
        torch.cat([history, targets[:, None]], 1), 200, 100, seed=0
    )
    for exclude in (history, None):
        out = metrics.rank_batch(scores, targets, 10, exclude, negatives=negatives)
        assert (out.sampled <= out.ranks).all() and (out.sampled < out.ranks).any()


# -------------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_of_constant_is_the_constant():
    ci = metrics.bootstrap_ci(torch.full((50,), 0.25), n_samples=200)
    assert (ci.value, ci.low, ci.high) == (0.25, 0.25, 0.25)


def test_bootstrap_ci_matches_normal_approximation_and_is_seeded():
    values = torch.tensor([0.0, 1.0] * 200)
    ci = metrics.bootstrap_ci(values, n_samples=2000, seed=1)
    half_width = 1.96 * math.sqrt(0.25 / 400)
    assert ci.value == 0.5
    assert ci.low == pytest.approx(0.5 - half_width, abs=0.01)
    assert ci.high == pytest.approx(0.5 + half_width, abs=0.01)
    assert metrics.bootstrap_ci(values, n_samples=2000, seed=1) == ci
    assert metrics.bootstrap_ci(values, n_samples=0) == metrics.Interval(0.5, None, None)


def _old_style_draws(n_users, n_samples, seed):
    """The user indices the resamples are made of, as the per-metric implementation drew them."""
    return torch.cat(list(metrics._resample_draws(n_users, n_samples, seed)))


def test_shared_resamples_equal_per_metric_resampling_with_the_same_draws():
    gen = torch.Generator().manual_seed(0)
    columns = [torch.rand(257, generator=gen), (torch.rand(257, generator=gen) < 0.3).float()]
    idx = _old_style_draws(257, 400, 7)
    cis = metrics.bootstrap_cis(columns, n_samples=400, seed=7)
    for values, ci in zip(columns, cis):
        means = values.double()[idx].mean(1)  # what every metric used to redraw for itself
        low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64))
        assert ci.value == float(values.double().mean())
        assert (ci.low, ci.high) == pytest.approx((float(low), float(high)), abs=1e-12)
        assert ci == metrics.bootstrap_ci(values, n_samples=400, seed=7)
        assert ci.low <= ci.value <= ci.high
    assert metrics.resamples(257, 400, 7) is metrics.resamples(
        257, 400, 7
    )  # drawn once, then reused
    assert metrics.bootstrap_cis(columns, n_samples=400, seed=8) != cis


def test_coverage_cis_equal_the_union_over_the_same_draws_at_every_k():
    gen = torch.Generator().manual_seed(0)
    top = torch.randint(0, 80, (150, 10), generator=gen)  # 0: a slot with nothing recommended
    idx = _old_style_draws(150, 300, 0)
    cis = metrics.coverage_cis(top, (10, 1, 5), 80, n_samples=300)  # any order of ks
    for k, ci in zip((10, 1, 5), cis):
        seen = torch.zeros(300, 81, dtype=torch.bool)
        seen.scatter_(1, top[:, :k][idx].reshape(300, -1), True)
        union = seen[:, 1:].sum(1).double() / 80
        point = metrics.coverage_at_k(top, k, 80)
        shifted = (union + (point - float(union.mean()))).clamp(0.0, 1.0)
        low, high = torch.quantile(shifted, torch.tensor([0.025, 0.975], dtype=torch.float64))
        assert ci.value == point
        assert (ci.low, ci.high) == pytest.approx((float(low), float(high)), abs=1e-12)


def test_paired_bootstrap_resamples_both_arms_with_the_same_draws():
    gen = torch.Generator().manual_seed(2)
    a, b = torch.rand(120, generator=gen), torch.rand(120, generator=gen)
    paired = metrics.paired_bootstrap(a, b, n_samples=300, seed=5)
    diffs = metrics.bootstrap_means(a, 300, 5) - metrics.bootstrap_means(b, 300, 5)
    low, high = torch.quantile(diffs, torch.tensor([0.025, 0.975], dtype=torch.float64))
    assert (paired.low, paired.high) == pytest.approx((float(low), float(high)), abs=1e-12)
    assert paired.delta == pytest.approx(float(a.double().mean() - b.double().mean()))
    assert metrics.paired_bootstrap(a, b, n_samples=300, seed=5) == paired


def test_coverage_cis_bracket_point_and_collapse_for_identical_lists():
    same = torch.tensor([[1, 2]] * 30)
    [ci] = metrics.coverage_cis(same, (2,), n_items=10, n_samples=100)
    assert ci.as_dict() == {
        "value": 0.2,
        "low": 0.2,
        "high": 0.2,
    }
    # every user gets two items of their own: resamples repeat users and lose items, a bias
    # the interval corrects, so it still holds the observed coverage
    distinct = torch.arange(1, 61).view(30, 2)
    [ci] = metrics.coverage_cis(distinct, (2,), n_items=120, n_samples=300)
    assert ci.value == 0.5 and ci.low < 0.5 < ci.high


def test_paired_bootstrap_detects_a_real_difference_only():
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(300, generator=gen)
    noise = torch.rand(300, generator=gen) - 0.5
    better = metrics.paired_bootstrap(base + 0.1, base, n_samples=500)
    assert better.delta == pytest.approx(0.1)
    assert better.p_value == pytest.approx(1 / 501)
    same = metrics.paired_bootstrap(base, base, n_samples=500)
    assert same.delta == 0.0 and same.p_value == 1.0
    noisy = metrics.paired_bootstrap(base + noise * 0.01, base, n_samples=500)
    assert noisy.low < 0 < noisy.high and noisy.p_value > 0.05
    with pytest.raises(ValueError, match="same users"):
        metrics.paired_bootstrap(base, base[:10])


# -------------------------------------------------------------------------------- baselines

SEQS = [np.array([1, 2, 3]), np.array([1, 2, 4]), np.array([2, 3])]


def test_most_popular_scores_training_counts_with_padding_minus_inf():
    scores = MostPopular().fit(SEQS, n_items=4, n_catalogue=5).score(torch.tensor([[0, 1]]))
    assert scores.tolist() == [[NEG_INF, 2.0, 3.0, 2.0, 1.0, 0.0]]


def test_transitions_follow_last_item_then_popularity():
    model = Transitions().fit(SEQS, n_items=4, n_catalogue=5)
    scores = model.score(torch.tensor([[0, 1, 2], [0, 0, 0]]))
    assert scores.shape == (2, 6)
    top = metrics.top_k_items(scores, 4).tolist()
    assert top[0] == [3, 4, 2, 1]  # followers of item 2 first, then the rest by popularity
    assert top[1][0] == 2 and top[1][3] == 4  # nothing to follow: popularity alone
    assert scores[0, 3].item() == pytest.approx(2.0, abs=1e-5)


def test_item_knn_cosine_co_occurrence():
    model = ItemKNN().fit(SEQS, n_items=4, n_catalogue=5)
    scores = model.score(torch.tensor([[0, 0, 1], [1, 2, 0]]))
    assert scores[0, 2].item() == pytest.approx(2 / math.sqrt(6), abs=1e-5)
    assert scores[0, 4].item() == pytest.approx(1 / math.sqrt(2), abs=1e-5)
    assert scores[0, 3].item() == pytest.approx(0.5, abs=1e-5)
    # left padding does not matter; several history items add up
    assert torch.equal(model.score(torch.tensor([[1]])), scores[:1])
    assert scores[1, 3].item() == pytest.approx(0.5 + 2 / math.sqrt(6), abs=1e-5)


def test_item_knn_keeps_only_the_nearest_neighbours():
    model = ItemKNN(neighbors=1).fit(SEQS, n_items=4, n_catalogue=5)
    assert (model.similarity[1] > 0).sum() == 1


def test_ease_columns_solve_the_constrained_ridge_problem():
    rng = np.random.default_rng(0)
    seqs = [rng.choice(np.arange(1, 9), size=rng.integers(2, 6), replace=False) for _ in range(40)]
    model = EASE(l2=3.0).fit(seqs, n_items=8, n_catalogue=8)
    x = np.zeros((len(seqs), 9))
    for row, seq in enumerate(seqs):
        x[row, seq] = 1.0
    weights = model.weights.numpy()
    assert np.allclose(np.diag(weights), 0.0)
    for j in range(1, 9):
        others = [i for i in range(1, 9) if i != j]
        ridge = Ridge(alpha=3.0, fit_intercept=False).fit(x[:, others], x[:, j])
        assert np.allclose(weights[others, j], ridge.coef_, atol=1e-4)


def test_every_baseline_has_the_model_interface():
    models = fit_baselines(SEQS, n_items=4, n_catalogue=6)
    assert list(models) == ["most-popular", "transitions", "item-knn", "ease"]
    for model in models.values():
        scores = model.score(torch.tensor([[0, 0, 1, 2], [0, 0, 0, 6]]))
        assert scores.shape == (2, 7) and scores.dtype == torch.float32
        assert torch.isinf(scores[:, 0]).all() and torch.isfinite(scores[:, 1:]).all()


def test_baseline_fit_rejects_bad_training_data():
    with pytest.raises(ValueError, match="no training interactions"):
        MostPopular().fit([], n_items=3, n_catalogue=3)
    with pytest.raises(ValueError, match="must be in 1..3"):
        MostPopular().fit([np.array([1, 4])], n_items=3, n_catalogue=4)
