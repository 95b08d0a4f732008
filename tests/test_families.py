"""The model families side by side: each learns, each keeps its promises (causality, padding,
no peeking at the Cloze targets, known users only), each refuses what it cannot do."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.modeling.lightning import collate_windows
from recsys.modeling.models import items as items_module
from recsys.modeling.models import (
    FAMILIES,
    FAMILY_CLASSES,
    FAMILY_LOSSES,
    BERT4Rec,
    GRU4Rec,
    MatrixFactorization,
    ModelConfig,
    build_model,
)

N_ITEMS, N_USERS = 20, 6


pytestmark = pytest.mark.usefixtures("single_thread")


def make(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    values = dict(
        n_items=N_ITEMS,
        n_catalogue=N_ITEMS,
        n_users=N_USERS,
        family=family,
        max_len=10,
        d_model=16,
        n_layers=1,
        dropout=0.0,
        n_negatives=8,
    )
    values.update(overrides)
    model = build_model(ModelConfig(**values))
    model.set_item_counts(torch.ones(N_ITEMS + 1))
    return model


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Six users, each walking the catalogue with their own stride: a learnable next item."""
    rows = []
    for user in range(N_USERS):
        start, stride = 1 + user, 1 + user % 3
        rows.append([(start + stride * t - 1) % N_ITEMS + 1 for t in range(11)])
    tokens = torch.tensor(rows)
    tokens[0, :3] = 0  # some left padding
    tokens[3, :5] = 0
    return tokens[:, :-1], tokens[:, 1:], torch.arange(1, N_USERS + 1)


def train(model, steps: int = 100, lr: float = 0.01) -> list[float]:
    items, targets, users = batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for _ in range(steps):
        torch.manual_seed(len(losses))
        loss = model.loss(items, targets, users)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


@pytest.mark.parametrize(
    "family, loss",
    [(family, loss) for family in FAMILIES for loss in FAMILY_LOSSES[family]],
)
def test_every_family_learns_with_every_loss_it_takes(family, loss):
    losses = train(make(family, loss=loss, mask_ratio=0.4))
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.1 * abs(first), (first, last)


@pytest.mark.parametrize("family", ["gru4rec", "bert4rec"])
def test_sequence_families_learn_the_next_item(family):
    model = make(family, mask_ratio=0.4)
    train(model, steps=200, lr=0.02)
    items, targets, users = batch()
    scores = model.score(items, users)
    hits = (scores.argmax(dim=1) == targets[:, -1]).float().mean().item()
    assert hits >= 0.5


@pytest.mark.parametrize("family", ["sasrec", "gru4rec", "bert4rec"])
def test_scores_ignore_left_padding(family):
    model = make(family).eval()
    history = torch.tensor([[3, 7, 2]])
    padded = torch.tensor([[0, 0, 0, 3, 7, 2]])
    assert torch.allclose(model.score(history), model.score(padded), atol=1e-5)


def test_gru4rec_is_causal():
    model = make("gru4rec").eval()
    items = torch.tensor([[0, 3, 7, 2, 9]])
    changed = items.clone()
    changed[0, -1] = 11
    before, after = model.encode(items), model.encode(changed)
    assert torch.allclose(before[:, :-1], after[:, :-1], atol=1e-6)
    assert not torch.allclose(before[:, -1], after[:, -1])


def test_bert4rec_never_sees_the_items_it_predicts():
    model: BERT4Rec = make("bert4rec", mask_ratio=0.5).eval()
    window = torch.tensor([[0, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6]])
    torch.manual_seed(3)
    masked = model.cloze(window)
    assert masked.any(dim=1).all() and not masked[window == 0].any()
    table = model.item_table()
    hidden = model._hidden(window, masked, table, last_only=False)
    swapped = window.masked_fill(masked, 19)  # other items behind the masks
    again = model._hidden(swapped, masked, table, last_only=False)
    assert torch.equal(hidden, again)
    # and the states do read the items that are shown
    shown = window.masked_fill(~masked & (window > 0), 19)
    assert not torch.allclose(hidden, model._hidden(shown, masked, table, last_only=False))


def test_bert4rec_trains_on_every_item_of_a_left_padded_window(monkeypatch):
    """A collated window's first item is an input with no target: the Cloze window still
    holds it (it once read the targets alone, and lost every short user's oldest item)."""
    model: BERT4Rec = make("bert4rec")
    batch = collate_windows([(0, np.array([4, 5, 6])), (1, np.array([1, 2, 3, 7, 8]))])
    seen = []
    monkeypatch.setattr(model, "cloze", lambda window: seen.append(window) or window > 0)
    model.loss(batch["items"], batch["targets"])
    assert seen[0].tolist() == [[0, 0, 4, 5, 6], [1, 2, 3, 7, 8]]


def test_mf_trains_on_the_targets_of_a_window(monkeypatch):
    """Its pairs are the window's targets: the first item, an input with no target, is left out."""
    model: MatrixFactorization = make("mf")
    batch = collate_windows([(1, np.array([4, 5, 6])), (2, np.array([1, 2, 3, 7, 8]))])
    trained = []

    def spy(config, hidden, targets, *args):
        trained.append(sorted(targets.tolist()))
        return hidden.sum()

    monkeypatch.setattr(items_module, "item_loss", spy)
    model.loss(batch["items"], batch["targets"], batch["users"])
    assert trained == [[2, 3, 5, 6, 7, 8]]


def test_bert4rec_masks_about_its_ratio():
    model: BERT4Rec = make("bert4rec", mask_ratio=0.3)
    window = torch.randint(1, N_ITEMS + 1, (400, 10))
    torch.manual_seed(0)
    assert model.cloze(window).float().mean().item() == pytest.approx(0.3, abs=0.03)


def test_bert4rec_hides_the_last_item_alone_in_its_share_of_windows():
    model: BERT4Rec = make("bert4rec", mask_ratio=0.3, mask_last_share=0.25)
    window = torch.randint(1, N_ITEMS + 1, (2000, 10))
    window[:5, :4] = 0  # left padding does not change which item is the most recent
    torch.manual_seed(0)
    masked = model.cloze(window)
    last_alone = (masked[:, -1] & (masked.sum(dim=1) == 1)).float().mean().item()
    # a quarter by the share, plus the Cloze rows that happen to hide the last item alone
    by_chance = 0.3 * 0.7**9 + 0.7**10
    assert last_alone == pytest.approx(0.25 + 0.75 * by_chance, abs=0.03)
    # the other three quarters hide the Cloze ratio of the earlier items
    assert masked[:, :-1].float().mean().item() == pytest.approx(0.75 * 0.3, abs=0.02)
    everyone = make("bert4rec", mask_ratio=0.3, mask_last_share=1.0).cloze(window)
    assert everyone[:, -1].all() and (everyone.sum(dim=1) == 1).all()


def test_bert4rec_scores_the_mask_after_the_history():
    model: BERT4Rec = make("bert4rec").eval()
    history = torch.tensor([[3, 7, 2]])
    table = model.item_table()
    state = model._hidden(
        torch.tensor([[3, 7, 2, 0]]), torch.tensor([[False, False, False, True]]), table, False
    )[:, -1]
    scores = model.score(history)
    assert torch.allclose(scores[0, 1:], (state @ table.T)[0, 1:], atol=1e-5)


def test_mf_scores_are_the_user_vector_times_the_table():
    model: MatrixFactorization = make("mf").eval()
    users = torch.tensor([2, 5])
    scores = model.score(torch.tensor([[1, 2], [0, 3]]), users)
    expected = model.user_emb(users) @ model.item_table().T
    assert torch.allclose(scores[:, 1:], expected[:, 1:])
    assert torch.equal(scores, model.score(torch.tensor([[9, 9], [9, 9]]), users))  # no order


def test_mf_refuses_a_history_without_a_known_user():
    model = make("mf").eval()
    with pytest.raises(ValueError, match="family mf scores the users it was trained on only"):
        model.score(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="no known user"):
        model.score(torch.tensor([[1, 2]]), torch.tensor([0]))


def test_mf_fold_in_is_the_ridge_fit_of_the_history():
    """The folded-in vector solves [V; sqrt(l2') I] u = [1 for the history, 0 elsewhere; 0]."""
    model: MatrixFactorization = make("mf", fold_in_l2=0.5).eval()
    table = model.item_table().detach()
    rows = table[1:].double().numpy()  # every item is a candidate here
    gram_mean = (rows**2).sum(axis=0).mean()
    history = [3, 7, 12]
    targets = np.zeros(N_ITEMS)
    targets[[item - 1 for item in history]] = 1.0
    system = np.vstack([rows, np.sqrt(0.5 * gram_mean) * np.eye(rows.shape[1])])
    wanted = np.linalg.lstsq(system, np.r_[targets, np.zeros(rows.shape[1])], rcond=None)[0]
    folded = model.fold_in(torch.tensor([[0, *history]]), table, 0.5)
    assert np.allclose(folded[0].double().numpy(), wanted, atol=1e-4)


def test_mf_with_fold_in_scores_any_history():
    model: MatrixFactorization = make("mf", fold_in_l2=1.0).eval()
    assert not model.user_based and not model.reads_users
    scores = model.score(torch.tensor([[0, 4, 9]]))  # no user: a new one
    assert torch.equal(scores, model.score(torch.tensor([[9, 4, 0]])))  # no order, no padding
    assert not torch.allclose(scores, model.score(torch.tensor([[4, 9, 2]])))
    table = model.item_table()
    expected = model.fold_in(torch.tensor([[4, 9]]), table, 1.0) @ table.T
    assert torch.allclose(scores[0, 1:], expected[0, 1:], atol=1e-5)


def test_mf_decays_its_embeddings():
    groups = make("mf").param_groups(0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1


def test_gru_weights_decay_and_embeddings_do_not():
    model: GRU4Rec = make("gru4rec")
    decay, no_decay = model.param_groups(0.1)
    decayed = {id(p) for p in decay["params"]}
    assert id(model.gru.weight_hh_l0) in decayed and id(model.out.weight) in decayed
    assert id(model.item_emb.weight) not in decayed


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"family": "bert4rec", "loss": "bpr"}, "family bert4rec does not take loss=bpr"),
        ({"family": "bert4rec", "mask_ratio": 0.0}, r"mask_ratio must be in \(0, 1\)"),
        ({"family": "bert4rec", "mask_ratio": 1.0}, r"mask_ratio must be in \(0, 1\)"),
        ({"family": "bert4rec", "mask_last_share": 1.5}, r"mask_last_share must be in \[0, 1\]"),
        (
            {"family": "bert4rec", "item_repr": "semantic", "code_vocab": (4, 4)},
            "item_repr=semantic .* needs family sasrec, got bert4rec",
        ),
        ({"family": "mf", "n_users": 0}, "family mf needs n_users >= 1"),
        ({"family": "mf", "fold_in_l2": -1.0}, "fold_in_l2 must be >= 0"),
        ({"family": "transformer"}, "family must be one of"),
        ({"loss": "hinge"}, "loss must be one of"),
    ],
)
def test_what_a_family_cannot_do_is_one_line(overrides, message):
    values = dict(n_items=N_ITEMS, n_catalogue=N_ITEMS, n_users=N_USERS)
    with pytest.raises(ValueError, match=message) as error:
        ModelConfig(**{**values, **overrides})
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------- through the product's path
@pytest.fixture(scope="module")
def family_world(tmp_path_factory):
    """One tiny run per family, trained by the training stage's library on synthetic data."""
    import yaml

    from recsys.modeling import training
    from recsys.modeling.synthetic import write_synthetic_processed

    root = tmp_path_factory.mktemp("families")
    processed, models, configs = root / "processed", root / "models", root / "configs"
    write_synthetic_processed(processed, "syn", n_users=50, n_items=30, n_events=1000)
    configs.mkdir()
    tiny = {"d_model": 16, "n_layers": 1, "max_len": 12, "batch_size": 16, "max_epochs": 2}
    runs = {}
    for family in FAMILIES:
        (configs / f"{family}.yaml").write_text(yaml.safe_dump({**tiny, "family": family}))
    folded = {**tiny, "family": "mf", "fold_in_l2": 1.0}
    (configs / "mf-fold-in.yaml").write_text(yaml.safe_dump(folded))
    for name in [*FAMILIES, "mf-fold-in"]:
        runs[name] = training.train(
            "syn",
            name,
            processed_root=processed,
            models_dir=models,
            configs_dir=configs,
            progress_bar=False,
            accelerator="cpu",
        )
    return processed, runs


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_validates_and_serves(family_world, family):
    from recsys.api.loading import load_run
    from recsys.io import read_json
    from recsys.modeling.runs import load_trained_run

    processed, runs = family_world
    metrics = read_json(runs[family] / "metrics.json")
    assert metrics["epochs_run"] == 2 and 0 <= metrics["best_val_ndcg@10"] <= 1
    trained = load_trained_run(runs[family])
    assert isinstance(trained.model, FAMILY_CLASSES[family])
    served = load_run(runs[family], processed_dir=processed)
    user = next(iter(served.users))
    picks = served.recommend(user_id=user, k=5)
    assert len(picks) == 5 and picks["score"].is_monotonic_decreasing


@pytest.mark.slow
def test_mf_run_refuses_an_ad_hoc_history_in_one_line(family_world):
    from recsys.api.run import Unsupported
    from recsys.api.loading import load_run

    processed, runs = family_world
    served = load_run(runs["mf"], processed_dir=processed)
    with pytest.raises(Unsupported, match="family mf: it recommends for the users it trained on"):
        served.recommend(items=[next(iter(served.catalogue.by_id))], k=5)


@pytest.mark.slow
def test_mf_run_that_folds_in_recommends_for_an_ad_hoc_history(family_world):
    from recsys.api.loading import load_run

    processed, runs = family_world
    served = load_run(runs["mf-fold-in"], processed_dir=processed)
    items = list(served.catalogue.by_id)[:3]
    picks = served.recommend(items=items, k=5)
    assert len(picks) == 5 and picks["score"].is_monotonic_decreasing
    assert not set(picks["item_id"].astype(str)) & {str(item) for item in items}


@pytest.mark.slow
def test_predict_on_an_mf_run_refuses_ad_hoc_items_in_one_line(family_world):
    import os
    import subprocess
    import sys
    from pathlib import Path

    processed, runs = family_world
    env = dict(os.environ, RECSYS_PROCESSED_DATA_DIR=str(processed))
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "recsys.modeling.predict", "--dataset", "syn"]
    command += ["--run", str(runs["mf"]), "--items", "1,2"]
    result = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "is family mf: it recommends for the users it trained on" in lines[0]
    )
