"""Generative retrieval over semantic IDs (TIGER): the decoder, its trie and beam search, and a
tiny run through train and evaluate, with the bad inputs the stages must refuse in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recsys.cli import RecsysError
from recsys.io import read_json, write_json
from recsys.modeling import evaluate as E
from recsys.modeling import configs as config_module
from recsys.modeling import training
from recsys.modeling.candidates import load_trained
from recsys.arrays import length_groups
from recsys.modeling.models import BLOCKS, ModelConfig, SemanticDecoder, T5Generator, build_model
from recsys.modeling.runs import load_trained_run
from recsys.modeling.synthetic import write_synthetic_processed
from recsys.processed import cold_item_set
from recsys.semantic_ids import (
    SemanticIdOptions,
    build_semantic_ids,
    disambiguate,
    load_run_quantiser,
    semantic_id_paths,
)
from tests.test_semantic_ids import N_CLUSTERS, PER_CLUSTER, clusters, write_dataset

N_ITEMS = 40
VOCAB = (4, 4, 8)  # two code levels and the collision digit


def unique_codes(n_items: int = N_ITEMS, seed: int = 0) -> torch.Tensor:
    """[n_items + 1, 3] unique IDs made the way the product makes them (row 0: padding)."""
    codes = np.random.default_rng(seed).integers(0, VOCAB[0], size=(n_items, 2))
    ids, stats = disambiguate(codes)
    assert stats["largest_collision_group"] <= VOCAB[2]
    return torch.from_numpy(np.vstack([np.full((1, 3), -1), ids]))


def tiny_config(n_items: int = N_ITEMS, **overrides) -> ModelConfig:
    values = dict(max_len=6, d_model=16, n_heads=2, n_layers=2, dropout=0.0)
    values |= {"item_repr": "semantic", "code_vocab": VOCAB, **overrides}
    return ModelConfig(n_items=n_items, n_catalogue=n_items, **values)


def tiny_decoder(block: str = "pre-ln", n_items: int = N_ITEMS, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = tiny_config(n_items, block=block, **overrides)
    return SemanticDecoder(config, unique_codes(n_items, seed)).eval()


def train_briefly(model: SemanticDecoder, item_seq: torch.Tensor, steps: int = 30) -> None:
    """A few steps on the windows, so the decoder is not near-uniform."""
    targets = torch.roll(item_seq, -1, dims=1)[:, :-1]
    inputs = item_seq[:, :-1]
    targets = targets.masked_fill(inputs == 0, 0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model.loss(inputs, targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()


HISTORIES = torch.tensor([[0, 0, 0, 3, 5, 7], [1, 2, 3, 4, 9, 11], [0, 0, 0, 0, 0, 8]])


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS)
def test_beam_over_the_whole_catalogue_equals_exhaustive_scoring(block: str) -> None:
    """Beam search with the KV cache finds every item with its exact sequence log-probability,
    the one a full teacher-forced pass gives."""
    model = tiny_decoder(block)
    train_briefly(model, HISTORIES)
    items, log_probs = model.generate(HISTORIES, beam_size=N_ITEMS)
    for row, history in enumerate(HISTORIES):
        every = torch.arange(1, N_ITEMS + 1)
        exhaustive = model.item_log_probs(history.expand(N_ITEMS, -1), every)
        assert sorted(items[row].tolist()) == every.tolist()
        found = dict(zip(items[row].tolist(), log_probs[row].tolist()))
        torch.testing.assert_close(
            torch.tensor([found[i] for i in every.tolist()]), exhaustive, atol=1e-4, rtol=1e-4
        )
        assert torch.all(log_probs[row][:-1] >= log_probs[row][1:])  # best first
    # the probabilities of all code tuples sum to one, so those of the items cannot exceed it
    assert torch.all(log_probs.exp().sum(dim=1) <= 1.0 + 1e-5)


def test_the_trie_yields_real_items_only() -> None:
    """Codes that spell no item are never generated, however likely the decoder finds them."""
    model = tiny_decoder(n_items=12)
    real = {tuple(row) for row in model.item_codes[1:].tolist()}
    assert len(real) < VOCAB[0] * VOCAB[1] * VOCAB[2]  # some tuples name no item
    items, log_probs = model.generate(HISTORIES.clamp(max=12), beam_size=12)
    assert set(items.flatten().tolist()) <= set(range(1, 13))
    for row in items:
        assert len(set(row.tolist())) == len(row)  # each item once
        assert {tuple(model.item_codes[i].tolist()) for i in row} <= real


@pytest.mark.slow
def test_history_items_never_come_back_even_beyond_the_context() -> None:
    model = tiny_decoder(beam_size=N_ITEMS)
    train_briefly(model, HISTORIES)
    long_history = torch.arange(1, 16)[None, :]  # 15 items; the decoder reads the last 6
    items, _ = model.generate(long_history[:, -6:], beam_size=N_ITEMS, exclude=long_history)
    left = set(range(16, N_ITEMS + 1))
    assert set(items[0][items[0] > 0].tolist()) == left  # all the others, and only those
    assert (items[0] == -1).sum() == N_ITEMS - len(left)  # spare beams are marked empty
    scores = model.score(long_history[:, -6:], exclude=long_history)
    assert torch.isinf(scores[0, 1:16]).all() and torch.isfinite(scores[0, 16:]).all()


def test_allowed_items_are_pruned_from_the_trie_not_filtered_afterwards() -> None:
    """A filter keeps every beam on allowed items: as many as the beams come back, best first,
    each at the log-probability it has without the filter (exactly the allowed order when the
    beams cover them all)."""
    model = tiny_decoder()
    train_briefly(model, HISTORIES)
    allowed = torch.zeros(N_ITEMS + 1, dtype=torch.bool)
    allowed[[2, 9, 17, 23, 31, 38]] = True
    everything, all_log_probs = model.generate(HISTORIES, beam_size=N_ITEMS)
    exact, _ = model.generate(HISTORIES, beam_size=N_ITEMS, exclude=HISTORIES, allowed=allowed)
    items, log_probs = model.generate(HISTORIES, beam_size=4, exclude=HISTORIES, allowed=allowed)
    for row, history in enumerate(HISTORIES):
        left = [i for i in everything[row].tolist() if allowed[i] and i not in history.tolist()]
        assert exact[row].tolist() == left + [-1] * (N_ITEMS - len(left))
        assert len(set(items[row].tolist())) == 4 and set(items[row].tolist()) <= set(left)
        unfiltered = dict(zip(everything[row].tolist(), all_log_probs[row].tolist()))
        expected = torch.tensor([unfiltered[i] for i in items[row].tolist()])
        torch.testing.assert_close(log_probs[row], expected)
        assert torch.all(log_probs[row][:-1] >= log_probs[row][1:])
    per_row = torch.zeros(len(HISTORIES), N_ITEMS + 1, dtype=torch.bool)
    per_row[0, 5], per_row[1, [6, 7]], per_row[2, 8] = True, True, True
    items, _ = model.generate(HISTORIES, beam_size=2, allowed=per_row)
    assert items[0].tolist() == [5, -1] and sorted(items[1].tolist()) == [6, 7]
    assert items[2].tolist() == [8, -1]


def test_added_items_enter_the_trie_at_once() -> None:
    model = tiny_decoder()
    train_briefly(model, HISTORIES)
    a, b = model.item_codes[1, :2].tolist()
    digit = int((model.item_codes[:, :2] == torch.tensor([a, b])).all(1).sum())  # the next one
    added = model.add_items(torch.tensor([[a, b, digit]]))
    assert added.tolist() == [N_ITEMS + 1] and model.item_table().shape[0] == N_ITEMS + 2
    only = torch.zeros(N_ITEMS + 2, dtype=torch.bool)
    only[N_ITEMS + 1] = True
    items, log_probs = model.generate(HISTORIES, beam_size=3, allowed=only)
    assert items[:, 0].tolist() == [N_ITEMS + 1] * 3 and (items[:, 1:] == -1).all()
    expected = model.item_log_probs(HISTORIES, torch.full((3,), N_ITEMS + 1))
    torch.testing.assert_close(log_probs[:, 0], expected, atol=1e-5, rtol=1e-5)
    everything, _ = model.generate(HISTORIES, beam_size=N_ITEMS + 1)
    assert (everything == N_ITEMS + 1).any(dim=1).all()  # and among all the others too
    with pytest.raises(ValueError, match="must differ"):
        model.add_items(model.item_codes[3:4])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.add_items(torch.tensor([[0, 0, VOCAB[2]]]))


@pytest.mark.slow
def test_loss_trains_and_scores_depend_on_history() -> None:
    model = tiny_decoder()
    targets = torch.roll(HISTORIES, -1, dims=1)[:, :-1].masked_fill(HISTORIES[:, :-1] == 0, 0)
    before = model.loss(HISTORIES[:, :-1], targets).item()
    train_briefly(model, HISTORIES, steps=60)
    assert model.loss(HISTORIES[:, :-1], targets).item() < before / 2
    first, second = model.score(HISTORIES[:1]), model.score(HISTORIES[1:2])
    assert not torch.equal(first, second)


@pytest.mark.slow
def test_left_padding_does_not_change_what_is_generated() -> None:
    model = tiny_decoder()
    train_briefly(model, HISTORIES)
    short = torch.tensor([[3, 5, 7]])
    padded = torch.tensor([[0, 0, 0, 3, 5, 7]])
    a, la = model.generate(short, 10)
    b, lb = model.generate(padded, 10)
    assert torch.equal(a, b)
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)


def test_bad_semantic_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="code_vocab"):
        ModelConfig(n_items=3, n_catalogue=3, item_repr="semantic")
    with pytest.raises(ValueError, match="loss=ce"):
        ModelConfig(n_items=3, n_catalogue=3, item_repr="semantic", code_vocab=(2,), loss="bce")
    config = ModelConfig(n_items=3, n_catalogue=3, item_repr="semantic", code_vocab=(2, 2))
    with pytest.raises(ValueError, match="needs the items' semantic IDs"):
        build_model(config)
    with pytest.raises(ValueError, match="shape"):
        SemanticDecoder(config, torch.zeros(3, 2, dtype=torch.long))
    outside = torch.tensor([[-1, -1], [0, 0], [0, 1], [5, 0]])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        SemanticDecoder(config, outside)


# --------------------------------------------------------------------------- train, evaluate
DATASET = "toy"
TINY_TIGER = {
    "item_repr": "semantic",
    "semantic_ids": None,
    "d_model": 16,
    "n_layers": 1,
    "n_heads": 2,
    "max_len": 10,
    "max_epochs": 2,
    "batch_size": 64,
    "dropout": 0.0,
    "beam_size": 10,
}
COLD = 0.2
FAST_IDS = SemanticIdOptions(method="rqkmeans", levels=2, codebook_size=8, kmeans_iters=20)


@pytest.fixture(scope="module")
def tiger_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Processed synthetic data with text vectors and semantic IDs, and two trained TIGER runs:
    on every item, and with a fifth of them held out (cold)."""
    root = tmp_path_factory.mktemp("tiger")
    processed, models = root / "processed", root / "models"
    n_items = N_CLUSTERS * PER_CLUSTER
    write_synthetic_processed(processed, DATASET, n_users=50, n_items=n_items, n_events=1200)
    write_dataset(processed)  # its items, with clustered text vectors as their features
    build_semantic_ids(DATASET, FAST_IDS, processed_root=processed)
    for cold in (0.0, COLD):
        training.train(
            DATASET,
            write_config(root, {**TINY_TIGER, "semantic_ids": FAST_IDS.slug, "cold_items": cold}),
            processed_root=processed,
            models_dir=models,
            progress_bar=False,
        )
    return processed, models


def write_config(folder: Path, values: dict) -> str:
    path = folder / "tiger-tiny.yaml"
    path.write_text("\n".join(f"{k}: {'null' if v is None else v}" for k, v in values.items()))
    return str(path)


@pytest.mark.slow
def test_tiger_trains_resumes_and_carries_its_codes(tiger_world, tmp_path, capfd) -> None:
    processed, models = tiger_world
    run_dir = models / DATASET / "tiger-tiny"
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["finished"] and metrics["epochs_run"] == 2
    assert metrics["item_repr"] == "semantic" and metrics["best_val_hr@10"] > 0
    trained = load_trained_run(run_dir)
    ids = np.load(semantic_id_paths(DATASET, FAST_IDS.slug, processed)[0])
    features, _ = clusters()
    assert isinstance(trained.model, SemanticDecoder)
    assert torch.equal(trained.model.item_codes, torch.from_numpy(ids))
    # with the quantiser that made those IDs, checked against them
    stored = load_run_quantiser(run_dir, trained.model.config.code_vocab, ids)
    assert stored is not None and np.array_equal(stored.quantiser.encode(features), ids[1:, :-1])
    # a run stopped before it finished resumes from last.ckpt, codes and all
    summary = read_json(run_dir / "metrics.json")
    write_json({**summary, "finished": False}, run_dir / "metrics.json")
    rows_before = (run_dir / "logs" / "metrics.csv").read_text()
    capfd.readouterr()
    training.train(
        DATASET,
        write_config(tmp_path, {**TINY_TIGER, "semantic_ids": FAST_IDS.slug}),
        run_name="tiger-tiny",
        processed_root=processed,
        models_dir=models,
        progress_bar=False,
    )
    assert "resuming tiger-tiny" in capfd.readouterr().err
    assert (run_dir / "logs" / "metrics.csv").read_text() == rows_before
    assert read_json(run_dir / "metrics.json")["finished"]


def test_evaluate_ranks_tiger_beside_the_others_up_to_its_beam(tiger_world, tmp_path) -> None:
    processed, models = tiger_world
    report = read_json(
        E.evaluate(
            DATASET,
            n_bootstrap=50,
            processed_dir=processed,
            models_dir=models,
            metrics_dir=tmp_path,
            device="cpu",
        )
    )
    row = next(m for m in report["models"] if m["item_repr"] == "semantic")
    assert row["max_k"] == TINY_TIGER["beam_size"]
    assert row["test"]["ndcg@10"]["value"] is not None
    assert row["test"]["hr@20"]["value"] is None and row["test"]["coverage@50"]["value"] is None
    baseline = next(m for m in report["models"] if m["kind"] == "baseline")
    assert baseline["test"]["hr@20"]["value"] is not None
    markdown = (tmp_path / f"{DATASET}.md").read_text()
    assert "beam size 10" in markdown and "| - |" in markdown
    # no scoring run here, so there is no generative-vs-scoring test; the baseline one stands
    assert report["generative"] is None and report["significance"]["model"] == row["name"]


def test_a_run_whose_ids_changed_is_refused(tiger_world, tmp_path) -> None:
    processed, models = tiger_world
    copy = tmp_path / "processed"
    import shutil

    shutil.copytree(processed, copy)
    npy = semantic_id_paths(DATASET, FAST_IDS.slug, copy)[0]
    ids = np.load(npy)
    ids[[1, 2]] = ids[[2, 1]]  # two items swap codes: same file shape, another trie
    np.save(npy, ids)
    with pytest.raises(RecsysError, match="other semantic IDs"):
        load_trained(models / DATASET / "tiger-tiny", DATASET, processed_root=copy)


def test_semantic_config_errors_are_one_line(tiger_world, tmp_path) -> None:
    processed, _ = tiger_world
    with pytest.raises(RecsysError, match="beam of at least 10"):
        config_module.resolve_config(
            write_config(tmp_path, {**TINY_TIGER, "beam_size": 5}), DATASET
        )
    missing = write_config(tmp_path, {**TINY_TIGER, "semantic_ids": "rqvae-9x9-nothing"})
    with pytest.raises(RecsysError, match="rqvae-9x9-nothing.*make features"):
        training.train(
            DATASET,
            missing,
            processed_root=processed,
            models_dir=tmp_path / "models",
            progress_bar=False,
        )
    assert not (tmp_path / "models" / DATASET).exists()


def test_a_generative_run_serves_when_named_and_defaults_skip_it(tiger_world) -> None:
    from recsys.api.generative import GenerativeRun
    from recsys.api.loading import load_run as load_for_serving
    from recsys.modeling.runs import best_run

    processed, models = tiger_world
    run_dir = models / DATASET / "tiger-tiny"
    served = load_for_serving(run_dir, processed_dir=processed)
    assert isinstance(served, GenerativeRun) and served.accepts_new_items
    with pytest.raises(RecsysError, match="all generative.*pass --run.*CONFIGS=sasrec-ce"):
        best_run(DATASET, models)  # the only runs here are generative


def test_item_table_sums_each_items_code_embeddings() -> None:
    model = tiny_decoder()
    table = model.item_table()
    assert table.shape == (N_ITEMS + 1, 16) and torch.all(table[0] == 0)
    codes = model.item_codes[5] + model.level_offsets
    torch.testing.assert_close(table[5], model.token_emb.weight[codes].sum(dim=0))


def test_cold_items_enter_the_trie_and_can_be_generated(tiger_world, tmp_path) -> None:
    """Held out of training, cold items still have IDs from their text, so TIGER generates them."""
    processed, models = tiger_world
    cold_run = load_trained_run(models / DATASET / f"tiger-tiny-cold{COLD:g}")
    n_items = cold_run.model.config.n_items
    cold = set(cold_item_set(n_items, COLD, 0).tolist())
    history = torch.tensor([[1, 2, 3]])
    items, _ = cold_run.model.generate(history, beam_size=n_items, exclude=history)
    generated = set(items[0].tolist()) - {-1}  # three spare beams: the history is pruned
    assert cold - {1, 2, 3} <= generated == set(range(4, n_items + 1))
    report = read_json(
        E.evaluate(
            DATASET,
            cold_items=COLD,
            n_bootstrap=20,
            processed_dir=processed,
            models_dir=models,
            metrics_dir=tmp_path,
            device="cpu",
        )
    )
    row = next(m for m in report["cold_start"]["models"] if m["item_repr"] == "semantic")
    assert row["can_score_cold"] is True and row["hr@10"]["value"] is not None
    assert report["cold_start"]["n_cold_items"] == round(COLD * cold_run.model.config.n_items)


# ------------------------------------------------------------------- gpt-semantic (codes)
@pytest.mark.slow
def test_a_codes_table_is_the_sum_of_code_rows_and_trains() -> None:
    from recsys.modeling.models import SeqRecModel

    torch.manual_seed(0)
    config = tiny_config(item_repr="codes")
    model = SeqRecModel(config, item_codes=unique_codes())
    table = model.item_table()
    assert table.shape == (N_ITEMS + 1, 16) and torch.all(table[0] == 0)
    rows = model.item_codes[7] + model.level_offsets
    torch.testing.assert_close(table[7], model.code_emb.weight[rows].sum(dim=0))
    assert model.code_emb.weight.numel() == sum(VOCAB) * 16  # no row per item
    targets = torch.roll(HISTORIES, -1, dims=1)[:, :-1].masked_fill(HISTORIES[:, :-1] == 0, 0)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.loss(HISTORIES[:, :-1], targets).item()
    for _ in range(40):
        loss = model.loss(HISTORIES[:, :-1], targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < first / 2
    with pytest.raises(ValueError, match="needs the items' semantic IDs"):
        SeqRecModel(config)


@pytest.mark.slow
def test_gpt_semantic_serves_and_is_paired_with_tiger(tiger_world, tmp_path) -> None:
    import shutil

    from recsys.api.run import Unsupported
    from recsys.api.loading import load_run as load_for_serving

    processed, models = tiger_world
    local = tmp_path / "models"
    shutil.copytree(models / DATASET / "tiger-tiny", local / DATASET / "tiger-tiny")
    config = {**TINY_TIGER, "item_repr": "codes", "semantic_ids": FAST_IDS.slug}
    codes_config = tmp_path / "gpt-semantic-tiny.yaml"
    codes_config.write_text("\n".join(f"{k}: {v}" for k, v in config.items() if k != "beam_size"))
    run_dir = training.train(
        DATASET,
        str(codes_config),
        processed_root=processed,
        models_dir=local,
        progress_bar=False,
    )
    report = read_json(
        E.evaluate(
            DATASET,
            n_bootstrap=20,
            processed_dir=processed,
            models_dir=local,
            metrics_dir=tmp_path,
            device="cpu",
        )
    )
    assert report["generative"]["model"] == "tiger-tiny"
    assert report["generative"]["baseline"] == "gpt-semantic-tiny"  # the best scoring config
    served = load_for_serving(run_dir, processed_dir=processed)
    picks = served.recommend(items=[1, 2, 3], k=5)
    assert len(picks) == 5 and not {"1", "2", "3"} & set(picks["item_id"])
    with pytest.raises(Unsupported, match="only by retraining"):
        served.add_items([{"item_id": "new", "title": "a new item"}])


@pytest.mark.slow
@pytest.mark.parametrize("ranking", ["beam", "rescored", "dense"])
def test_cold_share_places_untrained_items_at_their_share_of_the_list(ranking: str) -> None:
    """Under every ranking: re-sorting by the dense head used to push them all out."""
    dense = {} if ranking == "beam" else {"dense_weight": 1.0, "ranking": ranking}
    model = tiny_decoder(cold_share=0.25, **dense)
    counts = torch.ones(N_ITEMS + 1)
    untrained = [5, 6, 7, 8, 9, 10]
    counts[untrained] = 0
    model.set_item_counts(counts)
    train_briefly(model, HISTORIES)
    items, _ = model.generate(HISTORIES, beam_size=8, exclude=HISTORIES)
    for row, history in zip(items, HISTORIES):
        picks = row.tolist()
        assert len(set(picks)) == 8 and not set(picks) & set(history.tolist())
        assert [i for i, item in enumerate(picks) if item in untrained] == [3, 7]  # every 4th
    with pytest.raises(ValueError, match="cold_share"):
        tiny_decoder(cold_share=1.0)


@pytest.mark.parametrize("beam_size", [2, 3, 5, 10, 20, 37])
@pytest.mark.parametrize("cold_share", [0.01, 0.1, 0.28, 0.5, 0.6, 0.99])
def test_cold_places_are_distinct_and_their_count_is_the_share(beam_size, cold_share) -> None:
    from recsys.modeling.models.trie import cold_places

    places = cold_places(beam_size, cold_share)
    n_cold = int(places.sum())
    assert places.shape == (beam_size,) and places.dtype == torch.bool
    # as many distinct places as cold beams (the old placement lost some to collisions)
    assert n_cold == min(beam_size - 1, max(1, round(beam_size * cold_share)))
    assert 1 <= n_cold < beam_size  # at least one place each for trained and cold items
    assert places[-1]  # the list ends on a cold item: each share's stretch ends in one
    gaps = torch.diff(torch.nonzero(places).flatten())
    assert len(gaps) == 0 or gaps.max() - gaps.min() <= 1  # spread evenly


@pytest.mark.parametrize("beam_size, cold_share", [(20, 0.28), (10, 0.6), (5, 0.9), (3, 0.5)])
def test_generate_fills_every_place_for_shares_that_crashed(beam_size, cold_share) -> None:
    model = tiny_decoder(cold_share=cold_share)
    counts = torch.ones(N_ITEMS + 1)
    counts[[5, 6, 7, 8, 9, 10, 11, 12, 13, 14]] = 0
    model.set_item_counts(counts)
    items, scores = model.generate(HISTORIES, beam_size=beam_size, exclude=HISTORIES)
    assert items.shape == scores.shape == (len(HISTORIES), beam_size)
    for row in items:
        picks = [i for i in row.tolist() if i > 0]
        assert len(set(picks)) == len(picks) == beam_size


# --------------------------------------------------------------------- the T5 generator
def tiny_t5(n_items: int = N_ITEMS, seed: int = 0, **overrides) -> T5Generator:
    torch.manual_seed(seed)
    config = tiny_config(n_items, generator="t5", **overrides)
    return T5Generator(config, unique_codes(n_items, seed)).eval()


@pytest.mark.slow
def test_t5_learns_and_its_beam_finds_every_item_at_its_exact_log_probability() -> None:
    model = tiny_t5()
    targets = torch.roll(HISTORIES, -1, dims=1)[:, :-1].masked_fill(HISTORIES[:, :-1] == 0, 0)
    first = model.loss(HISTORIES[:, :-1], targets).item()
    train_briefly(model, HISTORIES, steps=40)
    assert model.loss(HISTORIES[:, :-1], targets).item() < first / 2
    items, log_probs = model.generate(HISTORIES, beam_size=N_ITEMS)
    every = torch.arange(1, N_ITEMS + 1)
    for row, history in enumerate(HISTORIES):
        exhaustive = model.item_log_probs(history.expand(N_ITEMS, -1), every)
        assert sorted(items[row].tolist()) == every.tolist()
        found = dict(zip(items[row].tolist(), log_probs[row].tolist()))
        torch.testing.assert_close(
            torch.tensor([found[i] for i in every.tolist()]), exhaustive, atol=1e-4, rtol=1e-4
        )
    scores = model.score(HISTORIES, exclude=HISTORIES)
    assert torch.isinf(scores[0, [3, 5, 7]]).all()  # the history is pruned


def test_t5_trains_on_every_position_with_the_history_before_it() -> None:
    """A training example's encoder input is the history up to its position, so changing an
    item after a position cannot change that position's loss term."""
    model = tiny_t5()
    inputs = torch.tensor([[0, 1, 2, 3]])
    early = torch.tensor([[0, 2, 0, 0]])  # only position 1 trains: history (1), target 2
    changed = torch.tensor([[0, 1, 9, 9]])
    assert model.loss(inputs, early).item() == pytest.approx(model.loss(changed, early).item())


def test_t5_loss_over_length_groups_is_the_mean_over_examples_encoded_alone() -> None:
    """Grouping examples by history length and cutting each group's padding changes no term."""
    model = tiny_t5()
    inputs = torch.tensor([[0, 0, 4, 1, 2, 3, 5, 6], [0, 0, 0, 0, 0, 0, 7, 2]])
    targets = torch.tensor([[0, 0, 1, 2, 3, 5, 6, 8], [0, 0, 0, 0, 0, 0, 2, 9]])
    alone = []
    for row, end in (targets > 0).nonzero().tolist():
        history = inputs[row, : end + 1]
        history = history[history > 0]
        only_last = torch.zeros_like(history)
        only_last[-1] = targets[row, end]
        alone.append(model.loss(history[None], only_last[None]))
    assert len(alone) == 8
    torch.testing.assert_close(model.loss(inputs, targets), torch.stack(alone).mean())


def test_length_groups_cover_every_row_once_and_pad_at_most_twofold() -> None:
    lengths = np.array([7, 1, 20, 2, 3, 16, 9, 1, 4])
    groups = length_groups(lengths, growth=2.0)
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(lengths)))
    for group in groups:
        assert lengths[group].max() <= 2 * lengths[group].min()


def test_t5_is_semantic_only() -> None:
    with pytest.raises(ValueError, match="generator=t5 generates semantic IDs"):
        ModelConfig(n_items=5, n_catalogue=5, generator="t5")
    assert isinstance(
        build_model(tiny_config(generator="t5"), item_codes=unique_codes()), T5Generator
    )


def test_a_t5_run_trains_and_recommends_through_the_run_api(tiger_world, tmp_path) -> None:
    from recsys.api.loading import load_run as load_for_serving

    processed, _ = tiger_world
    config = {**TINY_TIGER, "semantic_ids": FAST_IDS.slug, "generator": "t5", "max_epochs": 1}
    run_dir = training.train(
        DATASET,
        write_config(tmp_path, config),
        run_name="tiger-t5-tiny",
        processed_root=processed,
        models_dir=tmp_path / "models",
        progress_bar=False,
    )
    assert isinstance(load_trained_run(run_dir).model, T5Generator)
    served = load_for_serving(run_dir, processed_dir=processed)
    picks = served.recommend(items=["1", "2", "3"], k=5)
    assert len(picks) == 5 and not {"1", "2", "3"} & set(picks["item_id"])
    assert picks["score"].is_monotonic_decreasing  # log-probabilities, best first


# ------------------------------------------------------------------- the dense head
@pytest.mark.parametrize("ranking", ["rescored", "dense"])
def test_dense_head_trains_and_ranks_open_items_only(ranking) -> None:
    model = tiny_decoder(dense_weight=1.0, ranking=ranking)
    counts = torch.ones(N_ITEMS + 1)
    counts[[5, 6]] = 0  # never trained: the beam does not spell them, the dense side can
    model.set_item_counts(counts)
    targets = torch.roll(HISTORIES, -1, dims=1)[:, :-1].masked_fill(HISTORIES[:, :-1] == 0, 0)
    first = model.loss(HISTORIES[:, :-1], targets).item()
    plain = tiny_decoder().loss(HISTORIES[:, :-1], targets).item()
    assert first > plain  # the dense loss is added to the codes' loss
    train_briefly(model, HISTORIES)
    allowed = torch.ones(N_ITEMS + 1, dtype=torch.bool)
    allowed[[10, 11]] = False
    items, scores = model.generate(HISTORIES, beam_size=8, exclude=HISTORIES, allowed=allowed)
    assert items.shape == scores.shape == (len(HISTORIES), 8)
    for row, history in zip(items, HISTORIES):
        picks = row.tolist()
        assert len(set(picks)) == 8 and min(picks) >= 1
        assert not set(picks) & (set(history.tolist()) | {10, 11})
    assert torch.all(scores[:, :-1] >= scores[:, 1:])
    state = model._start(HISTORIES)
    dense = model.dense_log_probs(state, HISTORIES, allowed)
    torch.testing.assert_close(dense.exp().sum(dim=1), torch.ones(len(HISTORIES)))
    assert torch.isfinite(dense[:, 6]).all()  # an untrained item is rankable by the dense side
    assert torch.isinf(dense[:, [0, 10, 11]]).all() and torch.isinf(dense[0, [3, 5, 7]]).all()
    if ranking == "dense":  # the list is the dense head's best open items
        torch.testing.assert_close(scores, dense.topk(8, dim=1).values)


def test_rescoring_adds_the_beam_log_probability_to_the_dense_one() -> None:
    model = tiny_decoder(dense_weight=1.0, ranking="rescored", beam_size=N_ITEMS)
    train_briefly(model, HISTORIES)
    items, scores = model.generate(HISTORIES, beam_size=N_ITEMS)
    dense = model.dense_log_probs(model._start(HISTORIES), None, None)
    every = torch.arange(1, N_ITEMS + 1)
    for row, history in enumerate(HISTORIES):  # the beam holds every item: nothing is bounded
        exact = model.item_log_probs(history.expand(N_ITEMS, -1), every) + dense[row, 1:]
        found = dict(zip(items[row].tolist(), scores[row].tolist()))
        torch.testing.assert_close(
            torch.tensor([found[i] for i in every.tolist()]), exact, atol=1e-4, rtol=1e-4
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"ranking": "rescored"}, "ranking=rescored reads the dense head"),
        ({"dense_weight": 1.0, "generator": "t5"}, "generator=t5 has none"),
        ({"dense_weight": -1.0}, "dense_weight must be >= 0"),
        ({"ranking": "best"}, "ranking must be one of"),
    ],
)
def test_bad_dense_settings_are_one_line(overrides, message) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)
