"""Tuning: search-space checks, the study database, pruning, the tuned config, kill -9 resume."""

from __future__ import annotations

import dataclasses

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from recsys import report
from recsys.cli import RecsysError
from recsys.config import shown_path
from recsys.modeling import configs as config_module
from recsys.modeling import training
from recsys.modeling import search_space, study_storage, tuning
from recsys.modeling.synthetic import write_synthetic_processed

PROJ_ROOT = Path(__file__).resolve().parents[1]
DATASET = "syn"
TINY = {
    "d_model": 16,
    "n_layers": 1,
    "max_len": 20,
    "batch_size": 64,
    "dropout": 0.0,
    "max_epochs": 2,
    "patience": 50,
}
SPACE = "lr: {low: 1.0e-5, high: 1.0e-2, log: true}\n"
pytestmark = pytest.mark.filterwarnings(
    "ignore::optuna.exceptions.ExperimentalWarning",
    "ignore:Checkpoint directory .* exists and is not empty",  # a resumed trial
)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Processed synthetic data, a tiny base config and its search space."""
    root = tmp_path_factory.mktemp("tune")
    write_synthetic_processed(root / "processed", DATASET, n_users=60, n_items=40, n_events=1500)
    configs = root / "configs"
    (configs / "search").mkdir(parents=True)
    (configs / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    (configs / "search" / "tiny.yaml").write_text(SPACE)
    return {"root": root, "processed": root / "processed", "configs": configs}


def folders(world: dict[str, Path], name: str) -> dict[str, Path]:
    """Output folders of one test, so tests do not share studies."""
    base = world["root"] / name
    return {
        "models_dir": base / "models",
        "configs_dir": world["configs"],
        "tuning_dir": base / "tuning",
        "figures_dir": base / "figures",
    }


def run_tune(world: dict[str, Path], setup: tuning.TuneSetup) -> dict:
    return tuning.tune(setup, accelerator="cpu", processed_root=world["processed"])


# ---------------------------------------------------------------------------- search space
def test_the_shipped_search_spaces_fit_their_configs():
    for path in sorted((PROJ_ROOT / "configs" / "search").glob("*.yaml")):
        space = search_space.load_space(
            path, path.stem, "ml-100k", configs_dir=PROJ_ROOT / "configs"
        )
        keys = {spec.key for spec in space}
        family = config_module.resolve_config(path.stem, "ml-100k", {})["family"]
        # mf has no blocks and no dropout: its embeddings' L2 is what it has to tune
        sequence_keys = {"lr", "dropout", "d_model", "n_layers", "batch_size"}
        assert ({"lr", "weight_decay"} if family == "mf" else sequence_keys) <= keys, path
    # narrow/<config>.yaml: a part of a config's space, fixing the rest with the tuner's --set
    for path in sorted((PROJ_ROOT / "configs" / "search" / "narrow").glob("*.yaml")):
        assert search_space.load_space(
            path, path.stem, "ml-100k", configs_dir=PROJ_ROOT / "configs"
        )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("nope: {low: 1, high: 2}", "key 'nope': not a config key"),
        ("lr: {low: 0.001, high: 0.01, scale: log}", "key 'lr': unknown field 'scale'"),
        ("lr: {low: 0.01, high: 0.001}", "key 'lr': empty range, low 0.01 >= high 0.001"),
        ("n_layers: {low: 2, high: 2}", "key 'n_layers': empty range"),
        ("d_model: {choices: []}", "key 'd_model': choices must be a non-empty list"),
        ("d_model: {choices: [32, 32]}", "repeat a value"),
        ("lr: {low: fast, high: 0.01}", "'lr' in search space .* must be a number"),
        ("n_layers: {low: 1.5, high: 3}", "'n_layers' in search space .* must be an integer"),
        ("d_model: {choices: [32, big]}", "'d_model' in search space .* must be an integer"),
        ("block: {choices: [pre-ln, gpt2]}", "key 'block': the value 'gpt2' is not allowed"),
        ("schedule: {choices: [cosine, linear]}", "the value 'linear' is not allowed"),
        ("dropout: {low: 0.1, high: 1.0}", "the value 1.0 is not allowed"),
        ("block: {low: 1, high: 2}", "key 'block': block is not a number"),
        ("lr: {low: 0.0, high: 0.01, log: true}", "log: true needs low > 0"),
        ("lr: {low: 0.001, high: 0.01, log: yes please}", "log must be true or false"),
        ("lr: {low: 0.001}", "a range needs both low and high"),
        ("lr: {choices: [0.001], low: 0.1}", "choices cannot have low"),
        ("lr: [0.001, 0.01]", "expected a mapping"),
        ("max_epochs: {low: 1, high: 3}", "also fixed by --set or --max-epochs"),
        ("", "must map config keys to ranges"),
    ],
)
def test_a_bad_search_space_is_one_line_naming_file_and_key(world, tmp_path, text, expected):
    path = tmp_path / "space.yaml"
    path.write_text(text + "\n")
    with pytest.raises(RecsysError) as caught:
        search_space.load_space(path, "tiny", DATASET, {"max_epochs": 2}, world["configs"])
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert re.search(expected, message), message


def test_a_range_written_with_an_exponent_and_no_dot_is_a_number(world, tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("lr: {low: 1e-4, high: 1.0e-2, log: true}\n")
    (spec,) = search_space.load_space(path, "tiny", DATASET, {}, world["configs"])
    assert (spec.low, spec.high) == (1e-4, 1e-2)


def test_a_missing_search_space_says_how_to_get_one(world, tmp_path):
    with pytest.raises(RecsysError, match="search space .*none.yaml does not exist.*--space"):
        tuning.prepare(
            DATASET, "tiny", 1, space_file=tmp_path / "none.yaml", **folders(world, "x")
        )


def test_the_recorded_command_names_a_search_space_given_by_path(world):
    dirs = folders(world, "command")
    setup = tuning.prepare(DATASET, "tiny", 3, overrides={"max_len": 8}, **dirs)
    assert "--space" not in setup.command and "--set max_len=8" in setup.command
    space = world["root"] / "narrow.yaml"
    space.write_text("lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n")
    narrow = tuning.prepare(DATASET, "tiny", 3, space_file=space, **dirs)
    assert f"--space {shown_path(space)}" in narrow.command


# ---------------------------------------------------------------------------------- study
@pytest.mark.slow
def test_a_study_of_another_dataset_or_config_is_refused(world):
    dirs = folders(world, "refused")
    setup = tuning.prepare(DATASET, "tiny", 1, **dirs)
    study_storage.open_study(setup.db, setup.name, setup.attrs)
    other_db = dirs["models_dir"] / "other" / "tuning" / "tiny.db"
    other_db.parent.mkdir(parents=True)
    other_db.write_bytes(setup.db.read_bytes())
    write_synthetic_processed(world["processed"], "other", n_users=60, n_items=40, n_events=1500)
    elsewhere = tuning.prepare("other", "tiny", 1, **dirs)
    with pytest.raises(RecsysError, match="another dataset \\('syn', not 'other'\\)"):
        run_tune(world, elsewhere)

    (world["configs"] / "tiny2.yaml").write_text(yaml.safe_dump(TINY))
    (world["configs"] / "search" / "tiny2.yaml").write_text(SPACE)
    renamed = tuning.prepare(DATASET, "tiny2", 1, study_name="tiny", **dirs)
    with pytest.raises(RecsysError, match="another base config \\('tiny', not 'tiny2'\\)"):
        run_tune(world, renamed)
    shorter = tuning.prepare(DATASET, "tiny", 1, max_epochs=1, **dirs)
    with pytest.raises(RecsysError, match="another base config values"):
        run_tune(world, shorter)
    space = world["root"] / "wider.yaml"
    space.write_text("lr: {low: 1.0e-6, high: 1.0e-2, log: true}\n")
    wider = tuning.prepare(DATASET, "tiny", 1, space_file=space, **dirs)
    with pytest.raises(RecsysError, match="another search space file contents"):
        run_tune(world, wider)

    os.replace(setup.db, setup.db.with_name("moved.db"))
    moved = tuning.prepare(DATASET, "tiny", 1, study_name="moved", **dirs)
    with pytest.raises(RecsysError, match="holds the study 'tiny', not 'moved'"):
        run_tune(world, moved)
    setup.db.write_text("not a database, just text " * 100)
    with pytest.raises(RecsysError, match="tiny.db is not a readable study database"):
        run_tune(world, setup)
    with pytest.raises(RecsysError, match="--study 'a b'"):
        tuning.prepare(DATASET, "tiny", 1, study_name="a b", **dirs)


# ----------------------------------------------------------------- pruning, tuned config
@pytest.fixture(scope="module")
def pruned(world) -> tuple[tuning.TuneSetup, dict, dict[str, Path]]:
    """Two queued trials, a good and a far worse learning rate, with a pruner that may stop
    any trial after the first finished one, from the first epoch on."""
    dirs = folders(world, "pruned")
    settings = tuning.SearchSettings(prune_after=1, prune_warmup=0)
    setup = tuning.prepare(DATASET, "tiny", 2, settings=settings, **dirs)
    study, _ = study_storage.open_study(setup.db, setup.name, setup.attrs)
    study.enqueue_trial({"lr": 1.0e-2})
    study.enqueue_trial({"lr": 1.0e-5})
    return setup, run_tune(world, setup), dirs


def test_a_worse_trial_is_pruned_and_the_best_becomes_a_config(world, pruned):
    setup, summary, dirs = pruned
    good, bad = summary["trials"]
    assert (good["state"], bad["state"]) == ("complete", "pruned")
    assert good["epochs"] == TINY["max_epochs"] and bad["epochs"] == 1
    assert bad["best_reported"] < good["value"]
    assert summary["best"]["number"] == 0 and summary["best"]["value"] == good["value"]
    assert summary["importances"] is None and "at least 2 complete" in summary["importance_note"]

    tuned = world["configs"] / "tuned" / f"{DATASET}-tiny.yaml"
    assert setup.tuned_path == tuned
    assert f"trial 0,\n# validation NDCG@10 {good['value']:.4f}." in tuned.read_text()
    assert config_module.config_path("tuned/syn-tiny", world["configs"]) == tuned
    resolved = config_module.resolve_config("tuned/syn-tiny", DATASET, None, world["configs"])
    trial_dir = dirs["models_dir"] / DATASET / "tuning" / "tiny" / "trial-0"
    trained = yaml.safe_load((trial_dir / "config.yaml").read_text())
    assert {**resolved, "config_name": "tiny"} == trained
    assert resolved["lr"] == 1.0e-2

    assert json.loads(setup.json_path.read_text()) == summary
    figure = dirs["figures_dir"] / DATASET / "tuning-tiny-history"
    assert figure.with_suffix(".png").stat().st_size > 0 and figure.with_suffix(".svg").exists()
    again = run_tune(world, setup)
    assert len(again["trials"]) == 2  # the study already holds its 2 finished trials


def test_train_by_name_uses_the_config_tuned_on_the_dataset(world, pruned, tmp_path):
    """make train CONFIGS=tiny trains configs/tuned/syn-tiny.yaml into the run 'tiny'; with
    --no-tuned, configs/tiny.yaml. A tuned file for another dataset or with a key that no
    longer exists ends in one line naming the file."""
    setup, _, dirs = pruned
    assert yaml.safe_load(setup.tuned_path.read_text())["dataset"] == DATASET
    kwargs = dict(
        processed_root=world["processed"],
        models_dir=tmp_path / "models",
        configs_dir=world["configs"],
        progress_bar=False,
        accelerator="cpu",
        max_epochs=1,
    )
    run_dir = training.train(DATASET, "tiny", **kwargs)
    assert run_dir.name == "tiny"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["lr"] == 1.0e-2
    plain = training.train(DATASET, "tiny", tuned=False, run_name="plain", **kwargs)
    base = config_module.resolve_config("tiny", DATASET, None, world["configs"])
    assert base["lr"] != 1.0e-2
    assert yaml.safe_load((plain / "config.yaml").read_text())["lr"] == base["lr"]

    other = world["configs"] / "tuned" / "ml-100k-tiny.yaml"
    other.write_text(
        setup.tuned_path.read_text().replace(f"dataset: {DATASET}", "dataset: ml-100k")
    )
    with pytest.raises(RecsysError, match=r"ml-100k-tiny.yaml was tuned on ml-100k, not syn"):
        config_module.resolve_config("tuned/ml-100k-tiny", DATASET, None, world["configs"])
    other.write_text(setup.tuned_path.read_text() + "old_key: 1\n")
    with pytest.raises(RecsysError, match=r"unknown config key 'old_key' in .*ml-100k-tiny.yaml"):
        config_module.resolve_config("tuned/ml-100k-tiny", DATASET, None, world["configs"])
    other.unlink()


@pytest.mark.slow
def test_first_sets_the_first_trial_of_a_new_study_only(world):
    """--first lr=... is trial 0 (a known recipe is always a candidate); a key outside the
    search space, or a value of the wrong type, is one line before any trial."""
    setup = tuning.prepare(DATASET, "tiny", 1, study_name="first", **folders(world, "first"))
    for bad, message in (({"dropout": 0.5}, "--first dropout: not a key"), ({"lr": "x"}, "lr")):
        with pytest.raises(RecsysError, match=message):
            tuning.tune(setup, accelerator="cpu", processed_root=world["processed"], first=bad)
    assert (
        not setup.db.exists()
        or not study_storage.open_study(setup.db, setup.name, setup.attrs)[0].get_trials()
    )
    summary = tuning.tune(
        setup, accelerator="cpu", processed_root=world["processed"], first={"lr": 0.004}
    )
    assert [t["params"]["lr"] for t in summary["trials"]] == [0.004]
    setup = dataclasses.replace(setup, trials=2)  # a study with trials takes no first trial
    summary = tuning.tune(
        setup, accelerator="cpu", processed_root=world["processed"], first={"lr": 0.004}
    )
    assert len(summary["trials"]) == 2 and summary["trials"][1]["params"]["lr"] != 0.004


def test_the_tuning_page_shows_the_study_or_says_there_is_none(world, pruned, tmp_path):
    setup, summary, dirs = pruned
    collected = report.collect(
        DATASET,
        metrics_dir=tmp_path / "metrics",
        figures_dir=dirs["figures_dir"],
        models_dir=dirs["models_dir"],
        processed_dir=world["processed"],
        configs_dir=world["configs"],
        tuning_dir=dirs["tuning_dir"],
    )
    empty = report.collect("nothing", tuning_dir=tmp_path / "none")
    page = report.render_pages([collected, empty])["tuning"]
    good, bad = summary["trials"]
    assert f"| 0 | complete | {good['value']:.4f} | 2 | — | 0.01 |" in page
    assert f"| 1 | pruned | {bad['best_reported']:.4f} | 1 | — | 1e-05 |" in page
    assert "figures/syn/tuning-tiny-history.png" in page
    assert "No tuning study for nothing yet" in page and "make tune DATASET=nothing" in page

    report.make_report(
        [DATASET],
        metrics_dir=tmp_path / "metrics",
        figures_dir=dirs["figures_dir"],
        models_dir=dirs["models_dir"],
        processed_dir=world["processed"],
        docs_dir=tmp_path / "docs",
        site_dir=tmp_path / "site",
        configs_dir=world["configs"],
        tuning_dir=dirs["tuning_dir"],
        bench_dir=tmp_path / "bench",
    )
    html = (tmp_path / "site" / "tuning.html").read_text()
    assert 'src="figures/syn/tuning-tiny-history.png"' in html
    (dirs["tuning_dir"] / DATASET / "broken.json").write_text('{"study": "broken"}')
    with pytest.raises(RecsysError, match="broken.json is not a tuning summary"):
        report.collect(DATASET, tuning_dir=dirs["tuning_dir"])


# -------------------------------------------------------------------------------- kill -9
@pytest.mark.slow
def test_a_killed_tuner_resumes_and_finishes_its_trials(world, monkeypatch):
    dirs = folders(world, "killed")
    env = dict(
        os.environ,
        RECSYS_PROCESSED_DATA_DIR=str(world["processed"]),
        RECSYS_MODELS_DIR=str(dirs["models_dir"]),
        RECSYS_CONFIGS_DIR=str(world["configs"]),
        RECSYS_TUNING_DIR=str(dirs["tuning_dir"]),
        RECSYS_FIGURES_DIR=str(dirs["figures_dir"]),
        PYTHONPATH=str(PROJ_ROOT),
        OMP_NUM_THREADS="1",
    )
    args = ["--dataset", DATASET, "--config", "tiny", "--trials", "2", "--max-epochs", "8"]
    trial_0 = dirs["models_dir"] / DATASET / "tuning" / "tiny" / "trial-0"
    log = dirs["models_dir"].parent / "tuner.log"
    log.parent.mkdir(parents=True)
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "recsys.modeling.tune", *args, "--accelerator", "cpu"],
            env=env,
            cwd=PROJ_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        deadline = time.monotonic() + 120
        while not (trial_0 / "checkpoints" / "last.ckpt").exists():
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the tuner never checkpointed its first epoch"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    setup = tuning.prepare(DATASET, "tiny", 2, max_epochs=8, **dirs)
    study, _ = study_storage.open_study(setup.db, setup.name, setup.attrs)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.RUNNING]

    plans, fit = [], training.fit

    def spy(cfg, inputs, run_dir, resume, *args, **kwargs):
        plans.append((run_dir.name, resume))
        return fit(cfg, inputs, run_dir, resume, *args, **kwargs)

    monkeypatch.setattr(training, "fit", spy)
    summary = run_tune(world, setup)
    states = [t["state"] for t in summary["trials"]]
    assert states == ["fail", "complete", "complete"]
    assert summary["trials"][1]["retry_of"] == 0
    assert plans == [("trial-0", True), ("trial-2", False)]  # the retry resumed from last.ckpt
    epochs = [row.split(",")[0] for row in (trial_0 / "logs" / "metrics.csv").read_text().split()]
    assert epochs[1:] == [str(e) for e in range(8)]
    assert not (trial_0.parent / "trial-1").exists()
    figure = dirs["figures_dir"] / DATASET / "tuning-tiny-importance.png"
    if len({row["value"] for row in summary["trials"] if row["state"] == "complete"}) == 1:
        # Two learning rates near the range's 1e-5 can both leave the tiny model where it
        # started: with equal values fANOVA has no variance to share out, and says so.
        assert summary["importances"] is None
        assert "zero total variance" in summary["importance_note"]
        assert not figure.exists()
    else:
        assert set(summary["importances"]) == {"lr"}
        assert figure.stat().st_size > 0


def test_tuners_started_together_seed_their_samplers_apart():
    here, there = (
        study_storage.sampler_seed(0, 0, worker) for worker in ("node1:100", "node1:101")
    )
    assert here != there
    assert (
        study_storage.sampler_seed(0, 0, "node1:100") == here
    )  # given its worker, a seed is repeatable
    assert study_storage.sampler_seed(0, 4, "node1:100") != here  # a resumed tuner does not replay
    assert study_storage.sampler_seed(1, 0, "node1:100") != here
    assert study_storage.worker_name().endswith(f":{os.getpid()}")
