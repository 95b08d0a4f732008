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
from recsys.modeling import metrics
from recsys.modeling.baselines import EASE, MostPopular
from recsys.modeling.candidates import Candidate, load_trained
from recsys.modeling.evaluation_data import usable_ks
from recsys.modeling.metric_summary import per_user
from recsys.modeling.scoring import rank_examples
from recsys.modeling.seed_groups import config_groups, group_names
from recsys.processed import eval_examples, train_pieces

BOOT = 50  # resamples: enough to exercise the intervals, cheap enough for unit tests


def fitted(cls, data):
    return cls().fit(train_pieces(data.events), data.n_items, data.n_catalogue)


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
    small = rank_examples(scorer, examples, data.n_items, batch_size=7, device="cpu")
    assert scorer.max_rows == 7  # never all users x items at once
    whole = rank_examples(fitted(EASE, data), examples, data.n_items, batch_size=1000)
    assert torch.equal(small.ranks, whole.ranks)
    assert torch.equal(small.top_items, whole.top_items)
    assert small.top_items.shape == (len(examples.targets), 50)


def test_ranking_runs_on_one_thread_and_restores_the_setting(data):
    examples = eval_examples(data.events, "test")
    ease = fitted(EASE, data)
    before = torch.get_num_threads()
    one = rank_examples(ease, examples, data.n_items, device="cpu")
    assert torch.get_num_threads() == before
    as_set = rank_examples(ease, examples, data.n_items, device="cpu", cpu_threads=None)
    assert torch.equal(one.ranks, as_set.ranks) and torch.equal(one.top_items, as_set.top_items)
    assert torch.equal(one.sampled_ranks, as_set.sampled_ranks)


def test_history_is_masked_unless_kept(data):
    examples = eval_examples(data.events, "test")
    popular = fitted(MostPopular, data)
    masked = rank_examples(popular, examples, data.n_items, device="cpu")
    kept = rank_examples(popular, examples, data.n_items, keep_history=True, device="cpu")
    assert (kept.ranks >= masked.ranks).all() and (kept.ranks > masked.ranks).any()
    for history, top in zip(examples.histories, masked.top_items.tolist()):
        assert not set(top) & set(history.tolist())


def test_ranks_match_the_trained_runs_own_validation(world, data):
    # training validates with the same metric code; the best epoch's NDCG@10 must reappear here
    candidate = load_trained(world.id_run, DATASET)
    ranked = rank_examples(candidate.scorer, eval_examples(data.events, "valid"), N_ITEMS)
    recorded = read_json(world.id_run / "metrics.json")["best_val_ndcg@10"]
    assert per_user(ranked, "ndcg", 10).double().mean().item() == pytest.approx(recorded, 1e-5)


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
    expected = {f"{m}@{k}" for m in metrics.RANK_METRICS for k in metrics.KS}
    expected |= {f"{m}@{k}" for m in ("coverage", "popularity") for k in metrics.KS}
    expected |= {f"sampled_{m}@{k}" for m, k in metrics.SAMPLED_METRICS}
    for row in report["models"]:
        assert row["kind"] == "baseline" and row["run"] is None and row["n_params"] is None
        for split in ("valid", "test"):
            assert set(row[split]) == expected
            for entry in row[split].values():
                assert entry["low"] <= entry["value"] <= entry["high"]
    test = {m["name"]: m["test"] for m in report["models"]}
    # 60 items leave fewer than 100 negatives to sample: every unseen item is one, so the
    # sampled protocol is the full ranking here
    for row in test.values():
        assert row["sampled_hr@10"] == row["hr@10"] and row["sampled_ndcg@5"] == row["ndcg@5"]
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    assert Candidate("a", "trained", None, item_repr="hybrid").can_score_cold
    assert not Candidate("b", "trained", None, item_repr="id").can_score_cold
    assert not Candidate("c", "baseline", None).can_score_cold
    assert np.array_equal(usable_ks(60), [5, 10, 20, 50])
    assert usable_ks(12) == (5, 10)


# ---------------------------------------------------------------------------------- seeds


@pytest.fixture(scope="module")
def seeded(world, tmp_path_factory):
    """The world's ``tiny-id`` run (seed 42), the same config trained with seed 1, and a copy of
    the seed-42 run under another name (the same config and seed twice)."""
    from recsys.modeling import training

    models = tmp_path_factory.mktemp("seeded") / "models"
    shutil.copytree(world.id_run, models / DATASET / "tiny-id")
    shutil.copytree(world.id_run, models / DATASET / "tiny-id-seed42")
    config = world.processed.parent / "tiny-id.yaml"  # written when the world was trained
    training.train(
        DATASET,
        str(config),
        seed=1,
        processed_root=world.processed,
        models_dir=models,
        progress_bar=False,
        accelerator="cpu",
    )
    return models


def test_seeds_of_one_config_are_one_row_with_mean_spread_and_interval(
    world, seeded, data, tmp_path, monkeypatch
):
    logged = {}
    monkeypatch.setattr(
        "recsys.modeling.tracking.log_evaluation",
        lambda run_dir, values: logged.setdefault(run_dir.name, values) is not None,
    )
    report = read_json(run_evaluate(world, tmp_path, models_dir=seeded))
    rows = {m["name"]: m for m in report["models"]}
    assert list(rows) == ["tiny-id", "most-popular", "transitions", "item-knn", "ease"]
    config = rows["tiny-id"]
    assert (config["n_seeds"], config["seeds"]) == (2, [42, 1])
    assert config["runs"] == ["tiny-id", "tiny-id-seed1"]  # the duplicate seed counts once
    assert config["run"] is None and config["kind"] == "trained" and config["n_params"] > 0
    assert all(rows[b]["n_seeds"] is None for b in ("most-popular", "ease"))
    runs = report["per_seed"]
    assert [(r["name"], r["seed"], r["config"]) for r in runs] == [
        ("tiny-id", 42, "tiny-id"),
        ("tiny-id-seed1", 1, "tiny-id"),
    ]
    for split in ("valid", "test"):
        for key, entry in config[split].items():
            values = np.array([r[split][key]["value"] for r in runs])
            assert entry["value"] == pytest.approx(values.mean(), abs=2e-6), key
            assert entry["std"] == pytest.approx(values.std(ddof=1), abs=2e-6), key
            assert (entry["min"], entry["max"]) == pytest.approx((values.min(), values.max()))
            if key.startswith("coverage"):  # a union over users: no mean model to resample
                assert entry["low"] is None and entry["high"] is None
            else:
                assert entry["low"] <= entry["value"] <= entry["high"], key
    assert config["test"]["ndcg@10"]["std"] > 0  # the seed alone changed the model

    # the interval resamples users on their NDCG@10 averaged over the two seeds
    examples = eval_examples(data.events, "test")
    scorers = [load_trained(seeded / DATASET / r["name"], DATASET).scorer for r in runs]
    ranked = [rank_examples(scorer, examples, N_ITEMS) for scorer in scorers]
    mean_model = torch.stack([per_user(r, "ndcg", 10).double() for r in ranked]).mean(0)
    expected = metrics.bootstrap_ci(mean_model, BOOT, 0.95, 0).as_dict()
    low_high = (config["test"]["ndcg@10"]["low"], config["test"]["ndcg@10"]["high"])
    assert low_high == (expected["low"], expected["high"])

    sig = report["significance"]
    best_baseline = max(
        (m for m in report["models"] if m["kind"] == "baseline"),
        key=lambda m: m["valid"]["ndcg@10"]["value"],
    )
    assert (sig["model"], sig["n_seeds"], sig["baseline"]) == ("tiny-id", 2, best_baseline["name"])
    delta = config["test"]["ndcg@10"]["value"] - best_baseline["test"]["ndcg@10"]["value"]
    assert sig["delta"] == pytest.approx(delta, abs=1e-5)

    markdown = (tmp_path / "synthetic.md").read_text()
    assert "| tiny-id | trained | 2 |" in markdown and "| ease | baseline | - |" in markdown
    assert "## Spread across seeds (K = 10)" in markdown and "(mean of 2 seeds)" in markdown
    spread = config["test"]["ndcg@10"]
    assert f"| {spread['std']:.4f} | {spread['min']:.4f}..{spread['max']:.4f} |" in markdown

    # every trained run's metrics go to its own tracking run (when it has one)
    assert sorted(logged) == ["tiny-id", "tiny-id-seed1"]
    assert logged["tiny-id-seed1"]["test_ndcg@10"] == runs[1]["test"]["ndcg@10"]["value"]

    # the figures read the configs' rows: the mean over seeds with the mean model's interval
    from recsys.figures import metric_rows

    table = metric_rows(report, "test", "ndcg@10").set_index("name")
    assert table.loc["tiny-id", "value"] == config["test"]["ndcg@10"]["value"]


def test_one_seed_configs_keep_their_run_row(world, tmp_path):
    report = read_json(run_evaluate(world, tmp_path))
    row = next(m for m in report["models"] if m["name"] == "tiny-id")
    assert (row["n_seeds"], row["seeds"], row["runs"]) == (1, [42], ["tiny-id"])
    assert "std" not in row["test"]["ndcg@10"]
    assert [r["name"] for r in report["per_seed"]] == ["tiny-id"]
    assert {k: v for k, v in report["per_seed"][0].items() if k not in ("config", "seed")} == {
        k: v for k, v in row.items() if k not in ("n_seeds", "seeds", "runs", "config_name")
    }
    assert "## Spread across seeds" not in (tmp_path / "synthetic.md").read_text()


def test_runs_group_by_everything_but_the_seed_and_keep_unique_names():
    def run(name, **config):
        return Candidate(name, "trained", None, config={"lr": 0.001, "seed": 42, **config})

    candidates = [
        run("a", seed=42),
        run("a-seed1", seed=1),
        run("a-copy", seed=42),  # same config and seed as "a": counted once
        run("b", lr=0.01),
        Candidate("ease", "baseline", None),
    ]
    groups = config_groups(candidates)
    assert [[c.name for c in g] for g in groups] == [["a", "a-seed1"], ["b"], ["ease"]]
    assert group_names(groups) == ["a", "b", "ease"]
    clash = [[run("x-seed1"), run("x-seed2", seed=2)], [run("x", lr=0.1)]]
    assert group_names(clash) == ["x-seed1+x-seed2", "x"]
    mixed = [[run("p-seed1"), run("q-seed2", seed=2)]]
    assert group_names(mixed) == ["p-seed1+q-seed2"]


def test_every_other_trained_config_is_tested_against_sasrec_ce():
    import torch

    from recsys.modeling.significance import against_reference

    def row(name, kind, config_name, valid):
        return {
            "name": name,
            "kind": kind,
            "config_name": config_name,
            "n_seeds": 3 if kind == "trained" else None,
            "valid": {"ndcg@10": {"value": valid}},
        }

    rows = [
        row("sasrec-ce", "trained", "sasrec-ce", 0.11),
        row("gru4rec", "trained", "gru4rec", 0.12),
        row("mf-bpr", "trained", "mf-bpr", 0.05),
        row("ease", "baseline", None, 0.08),
    ]
    generator = torch.Generator().manual_seed(0)
    values = {r["name"]: torch.rand(200, generator=generator, dtype=torch.float64) for r in rows}
    tests = against_reference(rows, values, n_bootstrap=200, seed=0)
    assert [(t["model"], t["baseline"]) for t in tests] == [
        ("gru4rec", "sasrec-ce"),
        ("mf-bpr", "sasrec-ce"),
    ]
    for test in tests:
        delta = (values[test["model"]] - values["sasrec-ce"]).mean().item()
        assert test["delta"] == pytest.approx(delta) and test["low"] <= delta <= test["high"]
    assert against_reference(rows[1:], values, n_bootstrap=200, seed=0) == []


def test_an_evaluation_ranks_on_every_thread_only_on_an_idle_machine(monkeypatch):
    from recsys import cpu_load
    from recsys.modeling import scoring

    monkeypatch.setattr(cpu_load.psutil, "cpu_count", lambda: 2)
    monkeypatch.setattr(cpu_load.psutil, "cpu_percent", lambda interval: 10.0)
    assert scoring.ranking_threads() is None  # torch's own setting: every core
    monkeypatch.setattr(cpu_load.psutil, "cpu_percent", lambda interval: 60.0)
    assert scoring.ranking_threads() == 1


def test_ranks_are_the_same_on_one_thread_and_on_two():
    from recsys.modeling.models import ModelConfig, SeqRecModel
    from recsys.processed import EvalExamples, Sequences

    torch.manual_seed(0)
    n_items = 3000
    model = SeqRecModel(ModelConfig(n_items=n_items, n_catalogue=n_items, max_len=20)).eval()
    rng = np.random.default_rng(0)
    histories = Sequences.of(
        [rng.integers(1, n_items + 1, size=n) for n in rng.integers(1, 30, 300)]
    )
    examples = EvalExamples(np.arange(300), histories, rng.integers(1, n_items + 1, size=300))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = rank_examples(model, examples, n_items, cpu_threads=1)
        two = rank_examples(model, examples, n_items, cpu_threads=None)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one.ranks, two.ranks)
    assert torch.equal(one.top_items, two.top_items)
