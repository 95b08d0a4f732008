"""Large catalogues: dense baselines skipped with the reason, a seeded sample of users, batches
that shrink to a score budget, and sampled softmax as the training default on many items.

Limits are set low here instead of building large data."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from evaluate_helpers import COLD_FRACTION, DATASET, N_COLD_CATALOGUE, N_ITEMS
from loguru import logger
from test_evaluate import run_evaluate

from recsys import devices
from recsys.cli import RecsysError
from recsys.io import read_json
from recsys.modeling import evaluation
from recsys.modeling import metrics
from recsys.modeling import scoring
from recsys.modeling import configs as config_module
from recsys.modeling import training
from recsys.modeling.baselines import (
    EASE,
    MAX_DENSE_ITEMS,
    MostPopular,
    fit_baselines,
    too_large,
)
from recsys.modeling.candidates import load_trained
from recsys.modeling.evaluation_data import user_sample
from recsys.modeling.metric_summary import per_user
from recsys.modeling.synthetic import write_synthetic_processed
from recsys.processed import eval_examples, train_pieces

BOOT = 20


@pytest.fixture
def logged():
    seen: list[str] = []
    handler = logger.add(lambda message: seen.append(str(message)), level="INFO")
    yield seen
    logger.remove(handler)


# ------------------------------------------------------------------------- dense baselines


@pytest.mark.slow
def test_ease_is_skipped_above_the_dense_limit_and_the_report_says_why(world, tmp_path, logged):
    report = read_json(run_evaluate(world, tmp_path, baselines_only=True, max_dense_items=50))
    assert [m["name"] for m in report["models"]] == ["most-popular", "transitions", "item-knn"]
    [skipped] = report["skipped"]
    assert skipped["name"] == "ease"
    assert f"{N_ITEMS} items are more than --max-dense-items 50" in skipped["reason"]
    assert "GB of float32" in skipped["reason"]
    assert any("skipping baseline ease" in line and "WARNING" in line for line in logged)
    markdown = (tmp_path / f"{DATASET}.md").read_text()
    assert "**Skipped baseline ease**: 60 items are more than --max-dense-items 50" in markdown
    # at the limit it fits, and nothing is skipped
    full = read_json(run_evaluate(world, tmp_path, baselines_only=True, max_dense_items=N_ITEMS))
    assert full["skipped"] == [] and full["models"][-1]["name"] == "ease"
    assert "Skipped baseline" not in (tmp_path / f"{DATASET}.md").read_text()


def test_only_the_dense_baseline_is_too_large(data):
    assert too_large(N_ITEMS, N_ITEMS) == {}
    assert list(too_large(105_542)) == ["ease"] and MAX_DENSE_ITEMS < 105_542
    assert "44.6 GB" in too_large(105_542)["ease"]  # H&M's articles, float32
    sequences = train_pieces(data.events)
    fitted = fit_baselines(sequences, data.n_items, data.n_catalogue, max_dense_items=10)
    assert list(fitted) == ["most-popular", "transitions", "item-knn"]


# ------------------------------------------------------------------------------ user sample


def test_sample_users_scores_the_same_seeded_users_for_every_model_and_split(
    world, data, tmp_path, monkeypatch
):
    calls = []
    ranked = evaluation.rank_examples

    def recording(scorer, examples, n_items, **kwargs):
        calls.append((type(scorer).__name__, examples.users.copy()))
        return ranked(scorer, examples, n_items, **kwargs)

    monkeypatch.setattr(evaluation, "rank_examples", recording)
    report = read_json(run_evaluate(world, tmp_path, sample_users=20, seed=3))
    assert report["n_users"] == 20
    assert report["user_sample"] == {"n_users": 20, "of": 60, "seed": 3}
    assert [m["name"] for m in report["models"]][:2] == ["tiny-id", "most-popular"]
    assert len(calls) == 2 * 5  # valid and test for the trained run and four baselines
    sample = np.sort(calls[0][1])
    assert len(np.unique(sample)) == 20
    for _, users in calls:  # leave-one-out: every sampled user has one valid and one test event
        assert np.array_equal(np.sort(users), sample)
    assert {name for name, _ in calls} >= {"EASE", "MostPopular"}
    assert report["significance"]["model"] == "tiny-id"
    markdown = (tmp_path / f"{DATASET}.md").read_text()
    assert markdown.splitlines()[2].startswith("20 test users, 60 items")
    assert "**A sample**: 20 of the 60 test users, drawn with seed 3" in markdown

    again, other = user_sample(data, 20, seed=3), user_sample(data, 20, seed=4)
    assert np.array_equal(again.users, sample) and not np.array_equal(other.users, sample)


def test_sample_metrics_are_the_means_over_the_sampled_users(world, data, tmp_path):
    report = read_json(
        run_evaluate(world, tmp_path, baselines_only=True, sample_users=15, max_dense_items=1)
    )
    sample = user_sample(data, 15, seed=0)
    examples = eval_examples(data.events, "test")
    test = examples.take(np.isin(examples.users, sample.users))
    assert len(test.targets) == 15
    sequences = train_pieces(data.events)
    popular = MostPopular().fit(sequences, data.n_items, data.n_catalogue)
    ranks = scoring.rank_examples(popular, test, data.n_items, device="cpu")
    row = next(m for m in report["models"] if m["name"] == "most-popular")
    for metric in ("ndcg", "hr"):
        expected = per_user(ranks, metric, 10).double().mean().item()
        assert row["test"][f"{metric}@10"]["value"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.slow
def test_cold_start_scores_the_sampled_users_too(world, tmp_path):
    main = read_json(run_evaluate(world, tmp_path, max_dense_items=1))
    cold = read_json(run_evaluate(world, tmp_path, cold_items=COLD_FRACTION, sample_users=40))
    assert cold["user_sample"] is None and cold["skipped"] == main["skipped"]  # the main header
    section = cold["cold_start"]
    assert section["user_sample"] == {"n_users": 40, "of": 60, "seed": 0}
    full = read_json(run_evaluate(world, tmp_path / "all", cold_items=COLD_FRACTION))
    assert 0 < section["n_test_events"] < full["cold_start"]["n_test_events"]
    assert section["skipped"] == []  # EASE fits by default
    markdown = (tmp_path / f"{DATASET}.md").read_text()
    cold_part = markdown.split("## Cold-start items")[1]
    assert "**A sample**: 40 of the 60 test users" in cold_part
    assert "**Skipped baseline ease**" in markdown.split("## Cold-start items")[0]


def test_more_sampled_users_than_there_are_means_all(world, tmp_path):
    report = read_json(run_evaluate(world, tmp_path, baselines_only=True, sample_users=1000))
    assert report["n_users"] == 60 and report["user_sample"] is None
    assert "**A sample**" not in (tmp_path / f"{DATASET}.md").read_text()


@pytest.mark.parametrize("value", [0, -3])
def test_bad_sample_sizes_are_user_errors(world, tmp_path, value):
    with pytest.raises(RecsysError, match=f"--sample-users must be >= 1 .*got {value}"):
        run_evaluate(world, tmp_path, baselines_only=True, sample_users=value)
    with pytest.raises(RecsysError, match="--max-dense-items must be >= 1"):
        run_evaluate(world, tmp_path, baselines_only=True, max_dense_items=value)
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.slow
def test_cli_bad_sample_size_is_one_line(world, tmp_path):
    cmd = [sys.executable, "-m", "recsys.modeling.evaluate", "--dataset", DATASET]
    cmd += ["--processed-dir", str(world.processed), "--output-dir", str(tmp_path)]
    proc = subprocess.run([*cmd, "--baselines-only", "--sample-users", "0"], capture_output=True)
    lines = [line for line in proc.stderr.decode().splitlines() if line.strip()]
    assert proc.returncode == 1
    assert lines == [
        "error: --sample-users must be >= 1 (leave it out to evaluate every user), " "got 0"
    ]


# ----------------------------------------------------------------------- score budget


class Recording:
    """A baseline that remembers the largest batch it scored (and keeps its catalogue size)."""

    def __init__(self, inner):
        self.inner, self.n_catalogue, self.max_rows = inner, inner.n_catalogue, 0

    def score(self, item_seq):
        self.max_rows = max(self.max_rows, len(item_seq))
        return self.inner.score(item_seq)


def test_batches_shrink_to_the_score_budget_with_the_same_ranks(data, logged):
    examples = eval_examples(data.events, "test")
    ease = EASE().fit(train_pieces(data.events), data.n_items, data.n_catalogue)
    columns = data.n_catalogue + 1
    assert scoring.score_columns(ease, data.n_items) == columns == N_ITEMS + N_COLD_CATALOGUE + 1
    small = Recording(ease)
    budget = 4 * columns * 10  # ten users' float32 scores
    shrunk = scoring.rank_examples(
        small, examples, data.n_items, batch_size=64, score_budget=budget
    )
    assert small.max_rows == 10
    assert any("scoring 10 users per batch instead of 64" in line for line in logged)
    whole = Recording(ease)
    full = scoring.rank_examples(whole, examples, data.n_items, batch_size=64)
    assert whole.max_rows == 60  # the default budget holds every user of this catalogue
    assert torch.equal(shrunk.ranks, full.ranks) and torch.equal(shrunk.top_items, full.top_items)
    assert torch.equal(shrunk.sampled_ranks, full.sampled_ranks)


def test_ranks_are_counted_in_blocks_of_rows_with_the_same_result(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 20, (37, 301), generator=gen).float()  # many ties
    targets = torch.randint(1, 301, (37,), generator=gen)
    exclude = torch.randint(0, 301, (37, 12), generator=gen)
    whole = metrics.rank_batch(scores, targets, 10, exclude)
    monkeypatch.setattr(metrics, "COUNT_BLOCK", 5 * 301 + 7)  # blocks of 5 rows, the last short
    blocks = metrics.rank_batch(scores, targets, 10, exclude)
    assert torch.equal(blocks.ranks, whole.ranks)
    assert torch.equal(whole.ranks, metrics.target_ranks(scores, targets, exclude).squeeze(1))


@pytest.mark.parametrize("n_items, n", [(300, 100), (30, 100), (60, 20)])
def test_negatives_from_pairs_are_those_of_the_padded_matrix(n_items, n):
    exclude = torch.randint(0, n_items + 10, (50, 25), generator=torch.Generator().manual_seed(0))
    rows, cols = np.nonzero(exclude.numpy())
    shuffled = np.random.default_rng(0).permutation(len(rows))  # the pairs come in any order
    items = exclude.numpy()[rows, cols]
    pairs = metrics.sample_negatives_excluding(
        rows[shuffled], items[shuffled], 50, n_items, n, seed=3
    )
    assert torch.equal(pairs, metrics.sample_negatives(exclude, n_items, n, seed=3))


def test_split_negatives_need_no_padded_histories(data):
    examples = eval_examples(data.events, "test")
    longest = max(len(h) for h in examples.histories)
    padded = np.concatenate([examples.histories.padded(longest), examples.targets[:, None]], 1)
    for n in (20, 100):  # rejection draws, and every allowed item of this small catalogue
        expected = metrics.sample_negatives(torch.from_numpy(padded), data.n_items, n, seed=5)
        assert torch.equal(scoring.split_negatives(examples, data.n_items, n, 5), expected)


def test_fitting_batch_size_at_hm_scale():
    hm = 105_542 + 1
    assert scoring.fitting_batch_size(scoring.BATCH_SIZE, hm) == scoring.BATCH_SIZE
    assert scoring.fitting_batch_size(4096, hm) == 635  # 635 x 105,543 x 4 B <= 256 MiB
    assert 635 * hm * 4 <= scoring.SCORE_BUDGET < 636 * hm * 4
    assert scoring.fitting_batch_size(8, 10**9) == 1
    with pytest.raises(RecsysError, match="--batch-size must be >= 1"):
        scoring.fitting_batch_size(0, hm)


def test_trained_runs_know_their_score_width(world):
    model = load_trained(world.id_run, DATASET).scorer
    assert scoring.score_columns(model, N_ITEMS) == N_ITEMS + N_COLD_CATALOGUE + 1


def test_one_device_rule():
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.resolve_device("auto") == devices.default_device()
    for name in ("tpu", "mps"):
        with pytest.raises(RecsysError, match=f"--device '{name}' is not a device"):
            devices.resolve_device(name)


# --------------------------------------------------------------------- training loss


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale-processed")
    write_synthetic_processed(root, "syn", n_users=40, n_items=30, n_events=600)
    return root


def write_config(folder, **values):
    tiny = {"d_model": 8, "n_layers": 1, "max_len": 10, "batch_size": 32, "max_epochs": 1}
    (folder / "tiny.yaml").write_text(yaml.safe_dump({**tiny, **values}))
    return folder


@pytest.mark.slow
def test_many_items_default_to_sampled_softmax_with_a_log_line(
    processed, tmp_path, monkeypatch, logged
):
    monkeypatch.setattr(config_module, "LARGE_CATALOGUE", 20)
    configs = write_config(tmp_path)
    run_dir = training.train(
        "syn",
        "tiny",
        processed_root=processed,
        models_dir=tmp_path / "models",
        configs_dir=configs,
        progress_bar=False,
        accelerator="cpu",
    )
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["loss"] == "sampled" and saved["n_negatives"] == 256
    lines = [line for line in logged if "loss sampled" in line]
    assert len(lines) == 1
    assert "(logQ correction, 256 negatives) instead of full softmax ce" in lines[0]
    assert "30 items, more than 20" in lines[0] and "--set loss=ce keeps ce" in lines[0]


@pytest.mark.parametrize(
    "in_file, overrides, expected",
    [
        ({"loss": "ce"}, {}, "ce"),  # the config file names it
        ({}, {"loss": "bce"}, "bce"),  # so does --set
        ({"item_repr": "semantic"}, {}, "ce"),  # a generative run predicts codes
    ],
)
def test_an_explicit_loss_is_kept_on_many_items(
    tmp_path, monkeypatch, logged, in_file, overrides, expected
):
    monkeypatch.setattr(config_module, "LARGE_CATALOGUE", 20)
    configs = write_config(tmp_path, **in_file)
    cfg = config_module.resolve_config("tiny", "syn", overrides, configs, n_catalogue=30)
    assert cfg["loss"] == expected
    [line] = [line for line in logged if "loss " in line]
    assert f"loss {expected}" in line and "30 items, more than 20" in line
    # full softmax on a large catalogue says that it goes through the targets in chunks
    assert ("target rows at a time" in line) == (in_file == {"loss": "ce"})


def test_small_catalogues_keep_full_softmax_silently(processed, tmp_path, logged):
    configs = write_config(tmp_path)
    assert training.catalogue_size("syn", processed) == 30
    assert training.catalogue_size("missing", processed) is None
    cfg = config_module.resolve_config("tiny", "syn", None, configs, n_catalogue=30)
    assert cfg["loss"] == "ce" and not [line for line in logged if "loss" in line]
