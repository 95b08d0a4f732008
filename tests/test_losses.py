"""Each loss against a value computed by hand on a 2-row, 3-item example."""

from __future__ import annotations

import math

import pytest
import torch

from recsys.modeling.models import ModelConfig
from recsys.modeling.models.losses import (
    binary_cross_entropy,
    bpr,
    ccl,
    directau,
    draw_negatives,
    full_softmax_loss,
    gbce_beta,
    item_loss,
    sampled_softmax,
)

#: Scores of 2 rows (users or positions) for 3 items; row 0's target is item 0, row 1's item 1.
SCORES = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
TARGETS = torch.tensor([0, 1])
POSITIVE = torch.tensor([1.0, 2.0])
NEGATIVE = torch.tensor([[0.0, -1.0], [0.5, 0.0]])  # each row's other two items
ALL = torch.ones(2, 2, dtype=torch.bool)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_full_softmax_is_cross_entropy_by_hand():
    row0 = -math.log(math.e / (math.e + 1 + math.exp(-1)))
    row1 = -math.log(math.exp(2) / (math.exp(0.5) + math.exp(2) + 1))
    # hidden @ identity table = the scores
    loss = full_softmax_loss(SCORES, TARGETS, torch.eye(3), torch.ones(3, dtype=torch.bool))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert sampled_softmax(POSITIVE, NEGATIVE).item() == pytest.approx((row0 + row1) / 2)


def test_full_softmax_leaves_out_non_candidates():
    candidates = torch.tensor([True, True, False])  # item 2 held out
    row0 = -math.log(math.e / (math.e + 1))
    row1 = -math.log(math.exp(2) / (math.exp(0.5) + math.exp(2)))
    loss = full_softmax_loss(SCORES, TARGETS, torch.eye(3), candidates)
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_bce_sums_its_negatives_and_gbce_scales_the_positive():
    row0 = -(log_sigmoid(1) + log_sigmoid(0) + log_sigmoid(1))
    row1 = -(log_sigmoid(2) + log_sigmoid(-0.5) + log_sigmoid(0))
    assert binary_cross_entropy(POSITIVE, NEGATIVE, ALL).item() == pytest.approx((row0 + row1) / 2)
    beta = 0.3
    row0 = -(beta * log_sigmoid(1) + log_sigmoid(0) + log_sigmoid(1))
    row1 = -(beta * log_sigmoid(2) + log_sigmoid(-0.5) + log_sigmoid(0))
    loss = binary_cross_entropy(POSITIVE, NEGATIVE, ALL, beta)
    assert loss.item() == pytest.approx((row0 + row1) / 2)


def test_gbce_beta_follows_gsasrec():
    # alpha = 2 / (5 - 1) = 0.5; beta = alpha (t (1 - 1 / alpha) + 1 / alpha) = 0.5 (2 - t)
    assert gbce_beta(2, 5, 0.75) == pytest.approx(0.625)
    assert gbce_beta(2, 5, 0.0) == pytest.approx(1.0)  # plain BCE
    assert gbce_beta(2, 5, 1.0) == pytest.approx(0.5)  # beta = alpha


def test_bpr_averages_its_pairs():
    row0 = -(log_sigmoid(1 - 0) + log_sigmoid(1 + 1)) / 2
    row1 = -(log_sigmoid(2 - 0.5) + log_sigmoid(2 - 0)) / 2
    assert bpr(POSITIVE, NEGATIVE, ALL).item() == pytest.approx((row0 + row1) / 2)
    only_first = torch.tensor([[True, False], [True, False]])
    row0, row1 = -log_sigmoid(1), -log_sigmoid(1.5)
    assert bpr(POSITIVE, NEGATIVE, only_first).item() == pytest.approx((row0 + row1) / 2)


def test_ccl_counts_negatives_above_the_margin():
    positive = torch.tensor([0.9, 0.2])
    negative = torch.tensor([[0.85, 0.1], [0.95, -0.3]])
    # row 0: (1 - 0.9) + 2 * (0.05 + 0) / 2 = 0.15; row 1: (1 - 0.2) + 2 * (0.15 + 0) / 2 = 0.95
    loss = ccl(positive, negative, ALL, margin=0.8, negative_weight=2.0)
    assert loss.item() == pytest.approx(0.55)


def test_directau_is_alignment_plus_uniformity():
    queries = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # unit vectors after normalising
    items = torch.tensor([[1.0, 0.0], [5.0, 0.0]])
    # alignment: (0 + |(0, 1) - (1, 0)|^2) / 2 = 1; uniformity: queries log exp(-2 * 2) = -4,
    # items (the same point twice) log exp(0) = 0
    assert directau(queries, items, gamma=1.0).item() == pytest.approx(1.0 + (-4.0 + 0.0) / 2)
    assert directau(queries, items, gamma=0.5).item() == pytest.approx(0.0, abs=1e-6)


def test_negatives_that_are_the_target_do_not_count():
    config = ModelConfig(n_items=3, n_catalogue=3, loss="bpr", n_negatives=64)
    table = torch.eye(4)
    hidden = torch.tensor([[0.0, 5.0, 0.0, 0.0]])  # scores item 1 at 5, the others at 0
    candidates = torch.tensor([False, True, True, True])
    torch.manual_seed(0)
    loss = item_loss(config, hidden, torch.tensor([1]), table, candidates, torch.ones(4))
    assert loss.item() == pytest.approx(-log_sigmoid(5.0), rel=1e-5)  # never 5 - 5


@pytest.mark.parametrize("sampler", ["uniform", "popularity", "in-batch"])
def test_samplers_draw_candidates_with_their_log_q(sampler):
    candidates = torch.tensor([False, True, True, True, False])
    counts = torch.tensor([0.0, 6.0, 3.0, 1.0, 0.0])
    torch.manual_seed(0)
    pool, log_q = draw_negatives(sampler, 500, torch.tensor([1, 2]), candidates, counts)
    assert candidates[pool].all()
    expected = (
        {"uniform": 500 / 3, "popularity": 500 * 0.6}[sampler] if sampler != "in-batch" else None
    )
    if expected is not None:
        assert log_q[1].exp().item() == pytest.approx(expected)
    else:  # item 1 is in the batch: expected once, plus its uniform draws
        assert log_q[1].exp().item() == pytest.approx(1 - 0.4**2 + 500 / 3, rel=1e-5)


@pytest.mark.parametrize("loss", ["bce", "bpr", "sampled"])
def test_per_position_negatives_give_each_row_its_own_draws(loss):
    """negatives=position: each row is scored against its own n_negatives draws, by the same
    loss as its row would get from a pool of just those draws."""
    n_items, k = 6, 3
    table = torch.randn(n_items + 1, 4)
    hidden = torch.randn(5, 4)
    targets = torch.tensor([1, 2, 3, 4, 5])
    candidates = torch.ones(n_items + 1, dtype=torch.bool)
    candidates[0] = False
    counts = torch.ones(n_items + 1)
    config = ModelConfig(
        n_items=n_items, n_catalogue=n_items, loss=loss, negatives="position", n_negatives=k
    )
    torch.manual_seed(7)
    loss_value = item_loss(config, hidden, targets, table, candidates, counts)
    torch.manual_seed(7)
    pool, log_q = draw_negatives("uniform", len(targets) * k, targets, candidates, counts)
    rows = pool.view(len(targets), k)
    assert len({tuple(r) for r in rows.tolist()}) > 1  # the rows do not share one pool
    by_row = []
    for row in range(len(targets)):
        positive = (hidden[row] * table[targets[row]]).sum()[None]
        negative = (table[rows[row]] @ hidden[row])[None]
        valid = rows[row][None] != targets[row]
        if loss == "bce":
            by_row.append(binary_cross_entropy(positive, negative, valid))
        elif loss == "bpr":
            by_row.append(bpr(positive, negative, valid))
        else:
            shifted = (negative - log_q[rows[row]]).masked_fill(~valid, float("-inf"))
            by_row.append(sampled_softmax(positive - log_q[targets[row]], shifted))
    assert loss_value.item() == pytest.approx(torch.stack(by_row).mean().item(), rel=1e-5)


def test_in_batch_negatives_need_a_shared_pool():
    with pytest.raises(ValueError, match="sampler=in-batch .* needs negatives=batch"):
        ModelConfig(n_items=3, n_catalogue=3, loss="bpr", sampler="in-batch", negatives="position")
