"""Evaluation: batching, the report contract, trained runs vs baselines, cold start, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from evaluate_helpers import COLD_FRACTION, DATASET, N_ITEMS

from recsys.cli import RecsysError
from recsys.io import read_json
from recsys.modeling import evaluate as E
from recsys.modeling.baselines import EASE, MostPopular
from recsys.processed import eval_examples, train_sequences

BOOT = 50  # resamples: enough to exercise the intervals, cheap enough for unit tests


def fitted(cls, data):
    return cls().fit(list(train_sequences(data.events).values()), data.n_items, data.n_catalogue)


def run_evaluate(world, out, **kwargs):
    options = dict(
        n_bootstrap=BOOT,
        processed_dir=world.processed,
        models_dir=world.models,
        metrics_dir=out,
        device="cpu",
    )
    return E.evaluate(kwargs.pop("dataset", DATASET), **{**options, **kwargs})


class RecordingScorer:
    """Wraps a scorer and remembers the largest score matrix it produced."""

    def __init__(self, inner):
        self.inner = inner
        self.max_rows = 0

    def score(self, item_seq):
        scores = self.inner.score(item_seq)
        self.max_rows = max(self.max_rows, scores.shape[0])
        return scores


# -------------------------------------------------------------------------------- ranking


def test_ranking_does_not_depend_on_batch_size_and_memory_follows_the_batch(data):
    examples = eval_examples(data.events, "test")
    scorer = RecordingScorer(fitted(EASE, data))
    small = E.rank_examples(scorer, examples, data.n_items, batch_size=7, device="cpu")
    assert scorer.max_rows == 7  # never all users x items at once
    whole = E.rank_examples(fitted(EASE, data), examples, data.n_items, batch_size=1000)
    assert torch.equal(small.ranks, whole.ranks)
    assert torch.equal(small.top_items, whole.top_items)
    assert small.top_items.shape == (len(examples.targets), 50)


def test_history_is_masked_unless_kept(data):
    examples = eval_examples(data.events, "test")
    popular = fitted(MostPopular, data)
    masked = E.rank_examples(popular, examples, data.n_items, device="cpu")
    kept = E.rank_examples(popular, examples, data.n_items, keep_history=True, device="cpu")
    assert (kept.ranks >= masked.ranks).all() and (kept.ranks > masked.ranks).any()
    for history, top in zip(examples.histories, masked.top_items.tolist()):
        assert not set(top) & set(history.tolist())


def test_ranks_match_the_trained_runs_own_validation(world, data):
    # training validates with the same metric code; the best epoch's NDCG@10 must reappear here
    candidate = E.load_trained(world.id_run, DATASET)
    ranked = E.rank_examples(candidate.scorer, eval_examples(data.events, "valid"), N_ITEMS)
    recorded = read_json(world.id_run / "metrics.json")["best_val_ndcg@10"]
    assert E.per_user(ranked, "ndcg", 10).double().mean().item() == pytest.approx(recorded, 1e-5)


# --------------------------------------------------------------------------------- report


def test_baselines_only_report_follows_the_contract(world, tmp_path):
    path = run_evaluate(world, tmp_path, baselines_only=True)
    report = json.loads(path.read_text())
    assert report["dataset"] == DATASET and report["split"] == "leave-one-out"
    assert report["n_users"] == 60 and report["n_items"] == N_ITEMS
    assert report["ks"] == [5, 10, 20, 50] and report["history_masked"] is True
    assert report["bootstrap"] == {"samples": BOOT, "confidence": 0.95}
    assert report["significance"] is None and report["cold_start"] is None
    names = [m["name"] for m in report["models"]]
    assert names == ["most-popular", "transitions", "item-knn", "ease"]
    expected = {f"{m}@{k}" for m in E.M.RANK_METRICS for k in E.M.KS}
    expected |= {f"{m}@{k}" for m in ("coverage", "popularity") for k in E.M.KS}
    for row in report["models"]:
        assert row["kind"] == "baseline" and row["run"] is None and row["n_params"] is None
        for split in ("valid", "test"):
            assert set(row[split]) == expected
            for entry in row[split].values():
                assert entry["low"] <= entry["value"] <= entry["high"]
    test = {m["name"]: m["test"] for m in report["models"]}
    # the synthetic users walk a few ids forward: the transition model must see that
    assert test["transitions"]["ndcg@10"]["value"] > 2 * test["most-popular"]["ndcg@10"]["value"]
    assert (
        test["most-popular"]["coverage@10"]["value"] < test["transitions"]["coverage@10"]["value"]
    )
    markdown = path.with_suffix(".md").read_text()
    assert "| transitions | baseline |" in markdown and "## Test (K = 10)" in markdown
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic.json", "synthetic.md"]


def test_trained_runs_are_ranked_and_tested_against_the_best_baseline(world, tmp_path):
    report = read_json(run_evaluate(world, tmp_path))
    rows = {m["name"]: m for m in report["models"]}
    assert "tiny-text-cold0.1" not in rows  # cold-start runs belong to the cold-start table
    trained = rows["tiny-id"]
    assert trained["kind"] == "trained" and trained["item_repr"] == "id"
    assert trained["run"] == str(world.id_run) and trained["n_params"] > 0
    sig = report["significance"]
    best_baseline = max(
        (m for m in report["models"] if m["kind"] == "baseline"),
        key=lambda m: m["valid"]["ndcg@10"]["value"],
    )
    assert (sig["model"], sig["baseline"]) == ("tiny-id", best_baseline["name"])
    assert sig["metric"] == "ndcg@10" and sig["split"] == "test"
    delta = trained["test"]["ndcg@10"]["value"] - best_baseline["test"]["ndcg@10"]["value"]
    assert sig["delta"] == pytest.approx(delta, abs=1e-5)
    assert sig["low"] <= sig["delta"] <= sig["high"] and 0 < sig["p_value"] <= 1
    assert "**Significance**" in (tmp_path / "synthetic.md").read_text()


def test_keep_history_is_recorded(world, tmp_path):
    report = read_json(run_evaluate(world, tmp_path, baselines_only=True, keep_history=True))
    assert report["history_masked"] is False


def test_cold_start_merges_into_the_main_report(world, tmp_path):
    main = read_json(run_evaluate(world, tmp_path))
    merged = read_json(run_evaluate(world, tmp_path, cold_items=COLD_FRACTION))
    assert merged["models"] == main["models"]
    assert merged["significance"] == main["significance"]
    cold = merged["cold_start"]
    assert cold["fraction"] == COLD_FRACTION
    assert cold["n_cold_items"] == round(COLD_FRACTION * N_ITEMS)
    assert 0 < cold["n_test_events"] < 60
    rows = {m["name"]: m for m in cold["models"]}
    assert list(rows) == ["tiny-text-cold0.1", "most-popular", "transitions", "item-knn", "ease"]
    assert rows["tiny-text-cold0.1"]["can_score_cold"] is True
    assert rows["tiny-text-cold0.1"]["item_repr"] == "text"
    for name in ("most-popular", "transitions", "item-knn", "ease"):
        assert rows[name]["can_score_cold"] is False
    # fitted without the cold items, popularity puts every one of them last
    assert rows["most-popular"]["hr@10"]["value"] == 0.0
    assert "## Cold-start items" in (tmp_path / "synthetic.md").read_text()
    again = read_json(run_evaluate(world, tmp_path))  # a main run keeps the cold section
    assert again["cold_start"] == cold


def test_cold_start_without_a_previous_report(world, tmp_path):
    report = read_json(
        run_evaluate(world, tmp_path, cold_items=COLD_FRACTION, baselines_only=True)
    )
    assert report["models"] == [] and report["significance"] is None
    assert len(report["cold_start"]["models"]) == 4


# ------------------------------------------------------------------------------ bad input


def test_no_trained_run_names_the_command(world, tmp_path):
    with pytest.raises(RecsysError, match=r"make train DATASET=synthetic.*--baselines-only"):
        run_evaluate(world, tmp_path, models_dir=tmp_path / "empty")
    with pytest.raises(RecsysError, match=r"cold_items=0.3.*--set cold_items=0.3"):
        run_evaluate(world, tmp_path, cold_items=0.3)


def test_run_trained_on_another_dataset(world, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(world.id_run, models / "other" / "tiny-id")
    with pytest.raises(RecsysError, match="trained on 'synthetic', not 'other'"):
        run_evaluate(world, tmp_path, dataset="other", models_dir=models)


def test_corrupt_checkpoint(world, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(world.id_run, models / DATASET / "tiny-id")
    (models / DATASET / "tiny-id" / "checkpoints" / "best.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(RecsysError, match="corrupt or unreadable"):
        run_evaluate(world, tmp_path, models_dir=models)


def test_missing_processed_data_and_bad_options(world, tmp_path):
    with pytest.raises(RecsysError, match="make data DATASET=nope"):
        run_evaluate(world, tmp_path, dataset="nope")
    with pytest.raises(RecsysError, match="--bootstrap must be >= 0"):
        run_evaluate(world, tmp_path, n_bootstrap=-1)
    with pytest.raises(RecsysError, match="--cold-items must be in"):
        run_evaluate(world, tmp_path, cold_items=1.5, baselines_only=True)
    with pytest.raises(RecsysError, match="--device 'tpu'"):
        run_evaluate(world, tmp_path, device="tpu", baselines_only=True)
    with pytest.raises(RecsysError, match="--batch-size must be >= 1"):
        run_evaluate(world, tmp_path, baselines_only=True, batch_size=0)
    assert not list(tmp_path.glob("*.json"))


def test_cli_prints_one_line_error_and_exits_nonzero(world, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "recsys.modeling.evaluate",
        "--dataset",
        DATASET,
        "--processed-dir",
        str(world.processed),
        "--models-dir",
        str(tmp_path / "no-models"),
        "--output-dir",
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [lines[-1]] and lines[-1].startswith("error: no trained run for 'synthetic'")
    assert not list(tmp_path.glob("*.json"))


def test_candidate_ids_can_score_cold_only_for_text_runs():
    assert E.Candidate("a", "trained", None, item_repr="hybrid").can_score_cold
    assert not E.Candidate("b", "trained", None, item_repr="id").can_score_cold
    assert not E.Candidate("c", "baseline", None).can_score_cold
    assert np.array_equal(E.usable_ks(60), [5, 10, 20, 50])
    assert E.usable_ks(12) == (5, 10)
