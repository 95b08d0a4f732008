"""The cold-start protocol: training sequences cut at the held-out items (for trained runs and
baselines alike), validation and test histories that keep them, and hybrid runs that rank them
by their text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from recsys.modeling import configs as config_module

from recsys.modeling import training
from recsys.modeling.candidates import Candidate, baseline_candidates
from recsys.modeling.evaluation import evaluate_cold
from recsys.modeling.lightning import SequenceWindows
from recsys.modeling.models import ModelConfig, SeqRecModel
from recsys.modeling.runs import load_trained_run
from recsys.modeling.synthetic import write_synthetic_processed
from recsys.processed import (
    TRAIN,
    VALID,
    Sequences,
    cold_item_set,
    eval_examples,
    load_processed,
    train_pieces,
    user_sequences,
)

DATASET, N_ITEMS, N_EXTRA, FRACTION, SEED = "cold", 40, 3, 0.2, 7


@pytest.fixture(scope="module")
def processed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cold-start") / "processed"
    write_synthetic_processed(root, DATASET, n_users=50, n_items=N_ITEMS, n_cold=N_EXTRA)
    return root


@pytest.fixture(scope="module")
def cold() -> np.ndarray:
    return cold_item_set(N_ITEMS, FRACTION, SEED)


def config(**overrides) -> dict:
    return {
        **config_module.DEFAULTS,
        "dataset": DATASET,
        "config_name": "test",
        "cold_items": FRACTION,
        "cold_seed": SEED,
        "seed": SEED + 1,
        **overrides,
    }


def pairs(seq: np.ndarray) -> set[tuple[int, int]]:
    return set(zip(seq[:-1].tolist(), seq[1:].tolist()))


def listed(sequences: Sequences) -> list[tuple[int, list[int]]]:
    return [(int(u), s.tolist()) for u, s in zip(sequences.users, sequences)]


def test_sequences_are_cut_at_removed_items_never_joined() -> None:
    sequences = {
        1: [1, 2, 9, 3, 4],
        2: [9, 5],
        3: [5, 9, 9, 6],
        4: [9],
        5: [6, 7, 8],  # 8 is user 5's valid item: training ends before it
    }
    events = pd.DataFrame(
        [(u, item) for u, seq in sequences.items() for item in seq],
        columns=["user_idx", "item_idx"],
    )
    events["split"] = np.where(events["item_idx"] == 8, VALID, TRAIN)
    pieces = train_pieces(events, np.array([9]))
    assert listed(pieces) == [(1, [1, 2]), (1, [3, 4]), (2, [5]), (3, [5]), (3, [6]), (5, [6, 7])]
    whole = {u: [i for i in seq if i != 8] for u, seq in sequences.items()}
    assert listed(train_pieces(events)) == list(whole.items())
    assert listed(train_pieces(events, np.array([], dtype=np.int64))) == list(whole.items())
    assert pieces.flat(skip_first=True).tolist() == [2, 4, 7]  # the next-item targets
    assert pieces.flat(skip_last=True).tolist() == [1, 3, 6]  # their inputs
    windows = SequenceWindows(pieces, max_len=8)
    assert sorted(windows[i][1].tolist() for i in range(len(windows))) == [[1, 2], [3, 4], [6, 7]]
    assert windows.n_targets() == 3  # one-item pieces predict nothing


def test_training_inputs_follow_the_cut_sequences_and_validation_keeps_cold_items(
    processed: Path, cold: np.ndarray
) -> None:
    inputs = training.build_inputs(config(), processed)
    data = load_processed(DATASET, processed)
    original = user_sequences(data.events[data.events["split"] == TRAIN])
    pieces = list(zip(inputs["sequences"].users.tolist(), inputs["sequences"]))
    assert np.array_equal(inputs["cold"], cold) and len(cold) == round(FRACTION * N_ITEMS)
    assert not any(np.isin(seq, cold).any() for _, seq in pieces)
    real = {u: pairs(seq) for u, seq in original.items()}
    assert all(pairs(seq) <= real[u] for u, seq in pieces)  # no invented transition
    assert len({u for u, _ in pieces}) < len(pieces)  # some users were cut in several pieces
    warm_events = sum(int((~np.isin(seq, cold)).sum()) for seq in original.values())
    assert sum(len(seq) for _, seq in pieces) == warm_events
    counts = np.zeros(data.n_catalogue + 1)
    for _, seq in pieces:
        np.add.at(counts, seq[1:], 1.0)
    assert np.array_equal(inputs["counts"].numpy(), counts) and not counts[cold].any()
    valid = eval_examples(data.events, "valid")
    keep = ~np.isin(valid.targets, cold)
    assert np.array_equal(inputs["valid"].targets, valid.targets[keep])
    histories = [h for h, k in zip(valid.histories, keep) if k]
    assert all(np.array_equal(a, b) for a, b in zip(inputs["valid"].histories, histories))
    assert any(np.isin(h, cold).any() for h in inputs["valid"].histories)
    whole = training.build_inputs(config(cold_items=0.0), processed)["sequences"]
    assert listed(whole) == [(u, s.tolist()) for u, s in original.items()]


def test_baselines_learn_from_the_same_cut_sequences(processed: Path, cold: np.ndarray) -> None:
    data = load_processed(DATASET, processed)
    baselines = {c.name: c.scorer for c in baseline_candidates(data, cold)}
    pieces = train_pieces(data.events, cold)
    expected = np.zeros((data.n_catalogue + 1,) * 2)
    for seq in pieces:
        np.add.at(expected, (seq[:-1], seq[1:]), 1.0)
    assert np.array_equal(baselines["transitions"].counts.toarray(), expected)
    assert not baselines["most-popular"].popularity[cold].any()
    history = torch.tensor([[0, 1, int(cold[0]), 2, int(cold[1])]])
    for name, scorer in baselines.items():
        scores = scorer.score(history)
        assert torch.isfinite(scores[0, 1:]).all(), name


class Recorder:
    """A scorer that keeps every input it is given."""

    def __init__(self, n_rows: int) -> None:
        self.n_rows, self.inputs = n_rows, []

    def score(self, item_seq: torch.Tensor) -> torch.Tensor:
        self.inputs.append(item_seq.clone())
        return torch.linspace(0.0, 1.0, self.n_rows).expand(len(item_seq), -1).clone()


def test_every_model_reads_the_same_histories_with_the_cold_items(
    processed: Path, cold: np.ndarray
) -> None:
    data = load_processed(DATASET, processed)
    n_rows = data.n_catalogue + 1
    first, second = Recorder(n_rows), Recorder(n_rows)
    id_model = SeqRecModel(ModelConfig(n_items=N_ITEMS, n_catalogue=data.n_catalogue)).eval()
    candidates = [
        Candidate("first", "trained", first, item_repr="text"),
        Candidate("second", "trained", second, item_repr="id"),
        Candidate("id", "trained", id_model, item_repr="id"),
        *baseline_candidates(data, cold),
    ]
    section = evaluate_cold(data, candidates, cold, FRACTION, n_bootstrap=0, device="cpu")
    assert len(section["models"]) == len(candidates)
    seen = torch.cat([batch.flatten() for batch in first.inputs])
    assert len(first.inputs) == len(second.inputs)
    assert all(torch.equal(a, b) for a, b in zip(first.inputs, second.inputs))
    assert np.isin(seen.numpy(), cold).any()  # the cold items are in the histories
    test = eval_examples(data.events, "test")
    longest = max(len(h) for h, t in zip(test.histories, test.targets) if t in set(cold))
    assert max(batch.shape[1] for batch in first.inputs) == longest  # whole, not stripped
    assert all(0.0 <= row["hr@10"]["value"] <= 1.0 for row in section["models"])


@pytest.mark.slow
def test_a_trained_hybrid_run_ranks_cold_items_by_their_text(
    processed: Path, cold: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    features = np.random.default_rng(0).normal(size=(N_ITEMS + N_EXTRA + 1, 8))
    features = features.astype(np.float32)
    features[0] = 0.0
    monkeypatch.setattr(training, "load_features", lambda *args, **kwargs: features)
    path = tmp_path / "hybrid.yaml"
    path.write_text(
        f"item_repr: hybrid\nd_model: 16\nn_layers: 1\nmax_len: 20\nmax_epochs: 1\n"
        f"batch_size: 64\ncold_items: {FRACTION}\ncold_seed: {SEED}\n"
    )
    run_dir = training.train(
        DATASET, str(path), processed_root=processed, models_dir=tmp_path, progress_bar=False
    )
    model = load_trained_run(run_dir).model
    assert not model.id_trained[torch.as_tensor(cold)].any()
    with torch.no_grad():
        table, text = model.item_table(), model.text_proj(model.item_features)
    assert torch.equal(table[cold], text[cold])
    warm = int(np.setdiff1d(np.arange(1, N_ITEMS + 1), cold)[0])
    assert model.id_trained[warm] and not torch.equal(table[warm], text[warm])


def test_seeds_of_one_config_hold_out_the_same_cold_items() -> None:
    from recsys.cli import RecsysError
    from recsys.modeling.candidates import cold_seed

    def run(**config) -> Candidate:
        return Candidate(name="r", kind="trained", scorer=None, config=config)

    assert cold_seed([run(seed=42, cold_seed=5), run(seed=1, cold_seed=5)]) == 5
    assert cold_seed([run(seed=42), run(seed=1)]) == config_module.DEFAULTS["cold_seed"]
    with pytest.raises(RecsysError, match="different cold_seed values"):
        cold_seed([run(seed=42, cold_seed=0), run(seed=42, cold_seed=1)])
