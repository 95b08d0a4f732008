"""Training stage: config handling, run folders, checkpoints, resume after kill -9, DDP, errors."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.plugins import MixedPrecision, Precision

from recsys.cli import RecsysError
from recsys.modeling import configs as config_module
from recsys.modeling import training
from recsys.modeling import train as train_stage
from recsys.modeling.lightning import (
    BucketSampler,
    SeqDataModule,
    SeqRecModule,
    SequenceWindows,
    ema_averaging,
)
from recsys.modeling.metrics import ndcg_at_k, target_ranks
from recsys.modeling.runs import best_run, list_runs, load_trained_run
from recsys.modeling.synthetic import write_synthetic_processed
from recsys.processed import EvalExamples, Sequences, eval_examples, left_pad, load_processed

PROJ_ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "d_model": 16,
    "n_layers": 1,
    "n_heads": 1,
    "max_len": 20,
    "batch_size": 16,
    "lr": 0.005,
    "max_epochs": 3,
}


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("processed")
    write_synthetic_processed(root, "syn", n_users=60, n_items=40, n_events=1500, n_cold=4)
    return root


@pytest.fixture()
def configs(tmp_path) -> Path:
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    (folder / "tiny-slow.yaml").write_text(
        yaml.safe_dump({**TINY, "max_epochs": 40, "patience": 5, "ema_decay": 0.9})
    )
    return folder


def run_train(processed: Path, configs: Path, models: Path, **kwargs) -> Path:
    kwargs.setdefault("config", "tiny")
    return training.train(
        "syn",
        processed_root=processed,
        models_dir=models,
        configs_dir=configs,
        progress_bar=False,
        accelerator="cpu",
        **kwargs,
    )


def cli_env(processed: Path, models: Path, configs: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RECSYS_PROCESSED_DATA_DIR=str(processed),
        RECSYS_MODELS_DIR=str(models),
        RECSYS_CONFIGS_DIR=str(configs),
        PYTHONPATH=str(PROJ_ROOT),
    )
    return env


def cli(args: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recsys.modeling.train", "--dataset", "syn", *args],
        env=env,
        cwd=PROJ_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        **kwargs,
    )


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "logs" / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_windows_predict_every_training_item_once():
    sequences = Sequences.of([np.arange(1, 12), np.array([5, 6]), np.array([7])])
    windows = SequenceWindows(sequences, max_len=4)
    targets = []
    for index in range(len(windows)):
        _, tokens = windows[index]
        assert 2 <= len(tokens) <= 5
        targets.extend(tokens[1:].tolist())
    assert sorted(targets) == sorted(list(range(2, 12)) + [6])
    last = SequenceWindows(sequences, max_len=4, last_only=True)
    assert [tokens.tolist() for _, tokens in (last[i] for i in range(len(last)))] == [
        [7, 8, 9, 10, 11],
        [5, 6],
    ]


@pytest.mark.parametrize("max_len", [1, 3, 50])
def test_vectorised_windows_target_each_item_once_within_its_user(max_len):
    rng = np.random.default_rng(max_len)
    lengths = rng.integers(1, 40, size=200)
    offsets = np.r_[0, np.cumsum(lengths)]
    arrays = [np.arange(offsets[u], offsets[u + 1]) + 1 for u in range(len(lengths))]
    windows = SequenceWindows(Sequences.of(arrays, np.arange(len(lengths))), max_len=max_len)
    seen = []
    for index in range(len(windows)):
        user, tokens = windows[index]
        assert 2 <= len(tokens) <= max_len + 1
        assert offsets[user] < tokens[0] and tokens[-1] <= offsets[user + 1]  # its own items
        seen.extend(tokens[1:].tolist())
    firsts = set((offsets[:-1] + 1).tolist())
    assert sorted(seen) == [i for i in range(1, offsets[-1] + 1) if i not in firsts]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You are trying to `self.log")
@pytest.mark.parametrize("weighting", ["batch", "token"])
def test_loss_weighting_sums_an_epoch_as_configured(weighting):
    """Length-bucketed batches hold very different numbers of targets; with ``token`` weighting
    an epoch's summed loss is the plain sum over targets (over the mean batch), as with
    unbucketed batches, instead of each batch's mean counting the same."""
    rng = np.random.default_rng(0)
    sequences = Sequences.of([rng.integers(1, 21, size=n) for n in [3, 4, 30, 45, 5, 60]])
    valid = EvalExamples(np.array([1]), Sequences.of([np.array([1])]), np.array([2]))
    data = SeqDataModule(sequences, valid, 16, 2)
    config = {**config_module.DEFAULTS, "loss_weighting": weighting}
    model_config = {"n_items": 20, "n_catalogue": 20, "max_len": 16, "d_model": 8}
    module = SeqRecModule(config, {**model_config, "dropout": 0.0})
    module._mean_batch_targets = data.mean_batch_targets()
    batches = list(data.train_dataloader())
    assert data.mean_batch_targets() == data.train_set.n_targets() / len(batches)
    returned, target_sums, counts = [], [], []
    with torch.no_grad():
        for index, batch in enumerate(batches):
            returned.append(module.training_step(batch, index).item())
            n_targets = int((batch["targets"] > 0).sum())
            target_sums.append(
                module.model.loss(batch["items"], batch["targets"]).item() * n_targets
            )
            counts.append(n_targets)
    assert len(set(counts)) > 1
    if weighting == "token":
        expected = sum(target_sums) / data.mean_batch_targets()
    else:
        expected = sum(t / n for t, n in zip(target_sums, counts))
    assert sum(returned) == pytest.approx(expected, rel=1e-5)


def test_validation_batches_hold_val_batch_size_users_or_the_training_batch_size():
    rng = np.random.default_rng(0)
    sequences = Sequences.of([rng.integers(1, 21, size=n) for n in [3, 4, 30, 45, 5, 60]])
    histories = Sequences.of([rng.integers(1, 21, size=n) for n in range(1, 11)])
    valid = EvalExamples(np.arange(10), histories, rng.integers(1, 21, size=10))

    def sizes(data: SeqDataModule) -> tuple[list[int], list[int]]:
        train = [len(b["items"]) for b in data.train_dataloader()]
        return train, [len(b["targets"]) for b in data.val_dataloader()]

    train, val = sizes(SeqDataModule(sequences, valid, 16, 2))
    assert max(train) == 2 and val == [2] * 5
    train, val = sizes(SeqDataModule(sequences, valid, 16, 2, val_batch_size=4))
    assert max(train) == 2 and val == [4, 4, 2]


def test_bucket_sampler_is_seeded_and_splits_ranks_evenly(monkeypatch):
    lengths = np.random.default_rng(0).integers(2, 50, size=103)
    sampler = BucketSampler(lengths, batch_size=8, seed=3)
    sampler.set_epoch(1)
    first = list(sampler)
    assert sorted(first) == list(range(103)) and first == list(sampler)
    sampler.set_epoch(2)
    assert list(sampler) != first
    per_rank = []
    for rank in range(2):
        monkeypatch.setattr("recsys.modeling.lightning._world", lambda rank=rank: (rank, 2))
        per_rank.append(list(sampler))
    assert -(-len(per_rank[0]) // 8) == -(-len(per_rank[1]) // 8)  # DDP needs equal batches
    assert set(per_rank[0]) | set(per_rank[1]) == set(range(103))


@pytest.mark.slow
@pytest.mark.parametrize("ema_decay", [0.0, 0.8])
def test_run_folder_metrics_and_checkpoint_round_trip(processed, configs, tmp_path, ema_decay):
    overrides = {"ema_decay": ema_decay}
    run_dir = run_train(processed, configs, tmp_path / "models", overrides=overrides)
    assert run_dir == tmp_path / "models" / "syn" / "tiny"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["dataset"] == "syn" and saved["d_model"] == 16 and saved["loss"] == "ce"
    rows = csv_rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert {"epoch", "train_loss", "val_loss", "val_ndcg@10", "val_hr@10"} <= set(rows[0])
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    metrics = training.read_json(run_dir / "metrics.json")
    best = max(rows, key=lambda r: float(r["val_ndcg@10"]))
    assert metrics["best_epoch"] == int(best["epoch"]) and metrics["epochs_run"] == 3
    for key in ("seconds_per_epoch", "tokens_per_s", "peak_rss_mb", "n_params", "time_to_best_s"):
        assert metrics[key] > 0
    checkpoint = {
        name: torch.load(run_dir / "checkpoints" / f"{name}.ckpt", weights_only=True)
        for name in ("best", "last")
    }
    if ema_decay:  # the saved weights are the average; the raw ones are kept for resuming
        saved, raw = checkpoint["last"]["state_dict"], checkpoint["last"]["current_model_state"]
        assert not torch.equal(saved["model.item_emb.weight"], raw["model.item_emb.weight"])

    # the loaded best model reproduces the best epoch's validation NDCG@10 exactly
    trained = load_trained_run(run_dir)
    assert trained.dataset == "syn" and not trained.model.training
    valid = eval_examples(load_processed("syn", processed).events, "valid")
    scores = trained.model.score(torch.from_numpy(left_pad(valid.histories, 20)))
    history = torch.from_numpy(left_pad(valid.histories, max(map(len, valid.histories))))
    ranks = target_ranks(scores, torch.from_numpy(valid.targets), history, n_rank=40)
    assert ndcg_at_k(ranks, 10).mean().item() == pytest.approx(metrics["best_val_ndcg@10"])
    again = load_trained_run(run_dir).model.score(torch.from_numpy(left_pad(valid.histories, 20)))
    assert torch.equal(scores, again)
    assert list_runs("syn", tmp_path / "models") == [run_dir]
    assert best_run("syn", tmp_path / "models") == run_dir

    # the same config again is already done; a changed config starts afresh
    mtime = (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    run_train(processed, configs, tmp_path / "models", overrides=overrides)
    assert (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime_ns == mtime
    with pytest.raises(RecsysError, match="differs"):
        changed = {**overrides, "lr": 0.01}
        run_train(processed, configs, tmp_path / "models", overrides=changed, resume=True)
    run_train(processed, configs, tmp_path / "models", overrides=overrides, max_epochs=1)
    assert len(csv_rows(run_dir)) == 1


@pytest.mark.slow
@pytest.mark.parametrize("item_repr", ["text", "hybrid"])
def test_text_models_train_with_features_and_cold_items(
    processed, configs, tmp_path, monkeypatch, item_repr
):
    features = np.random.default_rng(0).normal(size=(45, 8)).astype(np.float32)
    features[0] = 0
    monkeypatch.setattr(training, "load_features", lambda cfg, n, root: features)
    overrides = {"item_repr": item_repr, "cold_items": 0.1, "max_epochs": 1}
    run_dir = run_train(processed, configs, tmp_path / "models", overrides=overrides)
    assert run_dir.name == "tiny-cold0.1"
    model = load_trained_run(run_dir).model
    assert torch.equal(model.item_features, torch.from_numpy(features))  # carried in the ckpt
    assert model.candidate_mask.sum() == 40 - 4  # 10% of 40 items held out of the softmax
    scores = model.score(torch.tensor([[1, 2, 3]]))
    assert scores.shape == (1, 45) and torch.isfinite(scores[0, 1:]).all()


@pytest.mark.slow
def test_kill_9_then_resume_continues_from_last_checkpoint(processed, configs, tmp_path):
    env = cli_env(processed, tmp_path / "models", configs)
    run_dir = tmp_path / "models" / "syn" / "tiny-slow"
    args = ["--config", "tiny-slow", "--accelerator", "cpu"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys.modeling.train", "--dataset", "syn", *args],
        env=env,
        cwd=PROJ_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if (run_dir / "logs" / "metrics.csv").exists() and len(csv_rows(run_dir)) >= 3:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run_dir / "checkpoints" / "last.ckpt").exists(), "no epoch finished before the kill"
    before = csv_rows(run_dir)
    done = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"]
    assert done >= int(before[-1]["epoch"]) - 1, "the kill lost more than one epoch"

    result = cli(args, env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming" in result.stderr
    after = csv_rows(run_dir)
    epochs = [int(r["epoch"]) for r in after]
    assert epochs == list(range(len(after))) and len(after) > done + 1
    # the epochs before the kill are kept as they were, not retrained
    assert after[: done + 1] == [r for r in before if int(r["epoch"]) <= done]


@pytest.mark.slow
def test_last_checkpoint_follows_every_epoch_even_when_validation_does_not_improve(
    processed, configs, tmp_path
):
    # lr this small leaves the float32 weights unchanged, so epoch 0 stays the best
    run_dir = run_train(processed, configs, tmp_path / "models", overrides={"lr": 1e-12})
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert best["epoch"] == 0
    assert last["epoch"] == TINY["max_epochs"] - 1


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_runs_one_epoch(processed, configs, tmp_path):
    env = cli_env(processed, tmp_path / "models", configs)
    args = ["--config", "tiny", "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    result = cli([*args, "--max-epochs", "1"], env)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "models" / "syn" / "tiny"
    assert [r["epoch"] for r in csv_rows(run_dir)] == ["0"]
    assert load_trained_run(run_dir).model.score(torch.tensor([[1, 2]])).shape == (1, 45)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "colour=red"], "unknown config key 'colour'"),
        (["--set", "lr=fast"], "'lr'"),
        (["--set", "item_repr=bert"], "item_repr must be one of"),
        (["--set", "family=bert4rec", "--set", "loss=bpr"], "family bert4rec does not take"),
        (["--set", "family=bert4rec", "--set", "mask_ratio=1.5"], "mask_ratio must be in (0, 1)"),
        (["--set", "family=bert4rec", "--set", "item_repr=semantic"], "needs family sasrec"),
        (["--set", "dropout"], "key=value"),
        (["--set", "family=bert4rec", "--set", "mask_last_share=2"], "mask_last_share must be"),
        (["--set", "negatives=row"], "negatives must be one of batch, position"),
        (["--set", "sampler=in-batch", "--set", "negatives=position"], "needs negatives=batch"),
        (["--config", "nope"], "config 'nope' not found"),
    ],
)
def test_bad_config_is_a_one_line_error(processed, configs, tmp_path, args, message):
    full = ["--config", "tiny", *args] if "--config" not in args else args
    result = cli(full, cli_env(processed, tmp_path / "models", configs))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"batch_size": 0}, "'batch_size' must be > 0"),
        ({"d_model": 30, "n_heads": 4}, "divisible"),
        ({"schedule": "linear"}, "'schedule' must be one of"),
        ({"cold_items": 1.0}, "'cold_items' must be in"),
        ({"ema_decay": 1.0}, "'ema_decay' must be in"),
        ({"loss_weighting": "user"}, "'loss_weighting' must be one of"),
        ({"block": "post-ln"}, "block must be one of"),
        ({"use_user": "yes"}, "true or false"),
        ({"family": "gru4rec", "loss": "hinge"}, "loss must be one of"),
        ({"family": "bert4rec", "mask_ratio": 0.0}, r"mask_ratio must be in \(0, 1\)"),
        ({"filter_alpha": 2.0}, r"filter_alpha must be in \[0, 1\]"),
        ({"family": "gru4rec", "filter_alpha": 0.5}, "not family=gru4rec"),
    ],
)
def test_bad_config_values_are_user_errors(configs, overrides, message):
    with pytest.raises(RecsysError, match=message):
        config_module.resolve_config("tiny", "syn", overrides, configs)


def test_exponent_numbers_are_numbers(configs):
    """YAML 1.1 reads ``1e-6`` (no dot) as a string; a float key takes it as the number."""
    overrides = config_module.parse_sets(["weight_decay=1e-6"])
    config = config_module.resolve_config("tiny", "syn", overrides, configs)
    assert config["weight_decay"] == 1e-6
    with pytest.raises(RecsysError, match="'weight_decay' .* must be a number"):
        config_module.resolve_config("tiny", "syn", {"weight_decay": "tiny"}, configs)


def test_bad_config_file_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("d_model: [1, 2\n")
    with pytest.raises(RecsysError, match="not valid YAML"):
        config_module.resolve_config(str(bad), "syn")
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(RecsysError, match="mapping"):
        config_module.resolve_config(str(bad), "syn")


def test_missing_inputs_name_the_make_target(processed, configs, tmp_path):
    with pytest.raises(RecsysError, match="make data DATASET=other"):
        training.train(
            "other", "tiny", processed_root=processed, models_dir=tmp_path, configs_dir=configs
        )
    with pytest.raises(RecsysError, match="make features DATASET=syn"):
        run_train(processed, configs, tmp_path / "models", overrides={"item_repr": "text"})


def test_corrupt_checkpoint_is_a_user_error(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "best.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(RecsysError, match="corrupt"):
        load_trained_run(run_dir)
    with pytest.raises(RecsysError, match="does not exist"):
        load_trained_run(tmp_path / "missing")
    with pytest.raises(RecsysError, match="make train"):
        best_run("syn", tmp_path)


def test_shipped_configs_resolve():
    for path in sorted((PROJ_ROOT / "configs").glob("*.yaml")):
        config = config_module.resolve_config(str(path), "ml-100k")
        assert config["config_name"] == path.stem


def test_shipped_tuned_configs_resolve_for_their_dataset():
    """Each tuned model file resolves for its own dataset, which validates its values as a model
    would take them (a hand edit such as the low-pass filter's keys is checked against max_len)."""
    tuned = [
        p for p in (PROJ_ROOT / "configs" / "tuned").glob("*.yaml") if "baselines" not in p.stem
    ]
    assert tuned
    for path in sorted(tuned):
        dataset = yaml.safe_load(path.read_text())["dataset"]
        assert config_module.resolve_config(str(path), dataset)["dataset"] == dataset


def test_best_run_prefers_runs_trained_on_the_whole_catalogue(tmp_path):
    def fake_run(name: str, val_ndcg: float, cold_items: float) -> Path:
        run_dir = tmp_path / "syn" / name
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "checkpoints" / "best.ckpt").write_bytes(b"")
        (run_dir / "metrics.json").write_text(f'{{"best_val_ndcg@10": {val_ndcg}}}')
        (run_dir / "config.yaml").write_text(yaml.safe_dump({"cold_items": cold_items}))
        return run_dir

    cold = fake_run("sasrec-ce-cold0.1", 0.30, 0.1)
    assert best_run("syn", tmp_path) == cold  # the only run serves
    whole = fake_run("sasrec-ce", 0.20, 0.0)
    fake_run("gpt-text", 0.10, 0.0)
    assert best_run("syn", tmp_path) == whole


@pytest.mark.slow
def test_corrupt_run_config_fails_and_deletes_nothing(processed, configs, tmp_path):
    models = tmp_path / "models"
    run_dir = run_train(processed, configs, models, max_epochs=1)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    for text, message in [("d_model: [16\n", "is not valid YAML"), ("- 1\n", "is not a mapping")]:
        (run_dir / "config.yaml").write_text(text)
        files = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
        for resume in (None, True):
            with pytest.raises(RecsysError, match=rf"config.yaml {message}.*--no-resume"):
                run_train(processed, configs, models, max_epochs=1, resume=resume)
        assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == files
    # the way out the message names: --no-resume starts the run afresh
    run_train(processed, configs, models, max_epochs=1, resume=False)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["config_name"] == "tiny"


@pytest.mark.slow
def test_seeds_train_one_run_each_that_resume_on_their_own(processed, configs, tmp_path):
    models = tmp_path / "models"
    options = dict(
        processed_root=processed,
        models_dir=models,
        configs_dir=configs,
        progress_bar=False,
        accelerator="cpu",
        max_epochs=1,
    )
    runs = training.train_seeds("syn", "tiny", [42, 7], **options)
    assert [r.name for r in runs] == ["tiny-seed42", "tiny-seed7"]
    for run_dir, seed in zip(runs, (42, 7)):
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert (saved["seed"], saved["config_name"]) == (seed, "tiny")
    weights = [load_trained_run(r).model.item_emb.weight for r in runs]
    assert not torch.equal(*weights)
    kept = (runs[0] / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    shutil.rmtree(runs[1])
    assert training.train_seeds("syn", "tiny", [42, 7], **options) == runs
    assert (runs[0] / "checkpoints" / "last.ckpt").stat().st_mtime_ns == kept  # done: skipped
    assert (runs[1] / "checkpoints" / "last.ckpt").is_file()  # retrained on its own
    assert not (models / "syn" / "tiny").exists()  # no seeds: the plain name, as before
    with pytest.raises(RecsysError, match="both set the seed"):
        training.train_seeds("syn", "tiny", [1], overrides={"seed": 3}, **options)


@pytest.mark.parametrize(
    "text, message",
    [("a,b", "integers"), ("", "integers"), ("1,,2", "integers"), ("3,1,3", "repeats")],
)
def test_bad_seeds_are_user_errors(text, message):
    with pytest.raises(RecsysError, match=f"--seeds expects.*{message}"):
        train_stage.parse_seeds(text)


def test_parse_seeds_keeps_the_order():
    assert train_stage.parse_seeds("42, 1,2") == [42, 1, 2]
    with pytest.raises(RecsysError, match=r"2\*\*32"):
        train_stage.parse_seeds("-1")


@pytest.mark.slow
def test_bad_seeds_and_logger_on_the_command_line_are_one_line(processed, configs, tmp_path):
    env = cli_env(processed, tmp_path / "models", configs)
    for args, message in [
        (["--seeds", "a,b"], "--seeds expects"),
        (["--logger", "wandb"], "--logger must be one of"),
    ]:
        result = cli(["--config", "tiny", *args], env)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "models").exists()


def test_loggers_are_csv_unless_asked_and_a_missing_package_fails_first(tmp_path, monkeypatch):
    from lightning.pytorch.loggers import CSVLogger

    from recsys.modeling import tracking

    loggers = tracking.make_loggers("csv", tmp_path, {"dataset": "syn"}, resume=False)
    assert [type(lg) for lg in loggers] == [CSVLogger]
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RecsysError, match="tensorboard is not installed"):
        tracking.check_logger("tensorboard")
    with pytest.raises(RecsysError, match="mlflow is not installed"):
        tracking.check_logger("mlflow")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")  # inside mlflow's store
def test_mlflow_tracks_params_epochs_artifacts_and_evaluation(
    processed, configs, tmp_path, monkeypatch
):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from recsys.modeling import tracking

    uri = f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}"
    (tmp_path / "tracking").mkdir()
    monkeypatch.setenv("RECSYS_MLFLOW_URI", uri)
    run_dir = run_train(processed, configs, tmp_path / "models", max_epochs=2, tracker="mlflow")
    stored = training.read_json(run_dir / tracking.RUN_FILE)
    assert stored["tracking_uri"] == uri
    client = MlflowClient(uri)
    run = client.get_run(stored["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "syn"
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.005" and run.data.params["seed"] == "42"
    assert run.data.params["config_name"] == "tiny"
    history = client.get_metric_history(run.info.run_id, "val_ndcg_at_10")
    epochs = [float(r["val_ndcg@10"]) for r in csv_rows(run_dir)]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(epochs)
    for name in ("train_loss", "val_loss", "val_hr_at_10"):
        assert len(client.get_metric_history(run.info.run_id, name)) == 2, name
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    artifacts |= {a.path for a in client.list_artifacts(run.info.run_id, "logs")}
    assert {"config.yaml", "metrics.json", "logs/metrics.csv"} <= artifacts
    assert list((tmp_path / "tracking" / "mlruns" / "syn").rglob("metrics.csv"))

    # a resumed run continues its tracking run; a fresh one gets its own
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    resumed = tracking.make_loggers("mlflow", run_dir, saved, resume=True)[-1]
    assert resumed.run_id == run.info.run_id
    assert tracking.make_loggers("mlflow", run_dir, saved, resume=False)[-1]._run_id is None

    assert tracking.log_evaluation(run_dir, {"test_ndcg@10": 0.25, "valid_hr@10": 0.5})
    metrics = client.get_run(run.info.run_id).data.metrics
    assert (metrics["test_ndcg_at_10"], metrics["valid_hr_at_10"]) == (0.25, 0.5)
    # a fresh start forgets the old tracking run; an untracked run logs nothing
    run_train(processed, configs, tmp_path / "models", max_epochs=1)
    assert not (run_dir / tracking.RUN_FILE).exists()
    assert not tracking.log_evaluation(run_dir, {"test_ndcg@10": 0.25})


def tiny_module(configs: Path, **overrides) -> SeqRecModule:
    cfg = config_module.resolve_config("tiny", "syn", overrides, configs)
    sizes = {"n_items": 10, "n_catalogue": 10, "n_users": 3, "feature_dim": 0}
    return SeqRecModule(cfg, {**{k: cfg[k] for k in config_module.MODEL_KEYS}, **sizes})


def test_ema_callback_is_the_exponential_average_of_the_weights(configs):
    module = tiny_module(configs)
    callback = ema_averaging(0.8)
    callback.setup(None, module, "fit")
    start = [p.detach().clone() for p in module.parameters()]
    callback._average_model.update_parameters(module)  # the first update copies the weights
    with torch.no_grad():
        for param in module.parameters():
            param.add_(1.0)
    callback._average_model.update_parameters(module)
    for average, first in zip(callback._average_model.module.parameters(), start):
        assert torch.allclose(average, first + 0.2, atol=1e-6)


@pytest.mark.parametrize("mixed", [False, True])
def test_adamw_is_fused_where_lightning_allows_clipping_with_it(configs, mixed):
    module = tiny_module(configs)
    plugin = MixedPrecision("bf16-mixed", "cpu") if mixed else Precision()
    module.trainer = SimpleNamespace(
        precision_plugin=plugin, estimated_stepping_batches=10, max_epochs=2
    )
    optimizer = module.configure_optimizers()["optimizer"]
    assert optimizer.defaults["fused"] is (None if mixed else True)
    assert optimizer.defaults["foreach"] is (True if mixed else None)


@pytest.mark.slow
def test_bf16_mixed_precision_trains_with_gradient_clipping(processed, configs, tmp_path):
    run_dir = run_train(processed, configs, tmp_path / "models", precision="bf16-mixed")
    rows = csv_rows(run_dir)
    assert len(rows) == 3 and all(np.isfinite(float(r["train_loss"])) for r in rows)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])


@pytest.mark.parametrize("native", [False, True])
def test_bf16_on_a_cpu_without_it_falls_back_to_float32_with_a_logged_line(native, monkeypatch):
    from loguru import logger

    from recsys import devices

    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING")
    try:
        asked = devices.training_precision("bf16-mixed", "cpu")
        default = devices.training_precision(None, "cpu")
        kept = devices.training_precision("32-true", "cpu")
    finally:
        logger.remove(sink)
    assert kept == "32-true"
    assert (asked, default) == (("bf16-mixed",) * 2 if native else ("32-true",) * 2)
    assert len(lines) == (0 if native else 1)
    if not native:
        assert "no native bf16" in lines[0] and "32-true" in lines[0]


@pytest.mark.slow
def test_a_run_records_the_precision_it_trained_in(processed, configs, tmp_path, monkeypatch):
    from recsys import devices

    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)
    run_dir = run_train(processed, configs, tmp_path / "models", precision="bf16-mixed")
    assert training.read_json(run_dir / "metrics.json")["precision"] == "32-true"


@pytest.mark.slow
def test_max_minutes_stops_training_before_max_epochs(processed, configs, tmp_path):
    """A time budget ends the run early, finished, with its best checkpoint kept."""
    slow = {"max_epochs": 200, "patience": 200, "max_minutes": 0.01}
    started = time.perf_counter()
    run_dir = run_train(processed, configs, tmp_path / "models", overrides=slow)
    assert time.perf_counter() - started < 60
    metrics = training.read_json(run_dir / "metrics.json")
    assert metrics["finished"] and 1 <= metrics["epochs_run"] < 200
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()


def test_max_minutes_must_not_be_negative(processed, configs, tmp_path):
    with pytest.raises(RecsysError, match="max_minutes"):
        run_train(processed, configs, tmp_path / "models", overrides={"max_minutes": -1})


def test_val_every_validates_every_other_epoch_and_counts_every_epochs_time(
    processed, configs, tmp_path
):
    run_dir = run_train(
        processed, configs, tmp_path / "models", overrides={"val_every": 2, "max_epochs": 4}
    )
    rows = csv_rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 3]
    metrics = training.read_json(run_dir / "metrics.json")
    assert metrics["epochs_run"] == 4 and metrics["best_epoch"] in (1, 3)
    # the unvalidated epochs' time is in the total: more than the validated epochs alone
    assert metrics["total_time_s"] > sum(float(r["epoch_s"]) for r in rows)
    with pytest.raises(RecsysError, match="val_every"):
        run_train(processed, configs, tmp_path / "models", overrides={"val_every": 0})


def test_val_users_validates_on_the_same_fixed_sample_for_every_seed(processed):
    base = config_module.resolve_config("sasrec-ce", "syn", {"max_len": 20})
    every = training.build_inputs({**base, "val_users": 0}, processed)["valid"]
    samples = [
        training.build_inputs({**base, "val_users": 10, "seed": seed}, processed)["valid"]
        for seed in (1, 2)
    ]
    assert len(samples[0].targets) == 10 < len(every.targets)
    assert np.array_equal(samples[0].users, samples[1].users)  # fixed, whatever the seed
    assert set(samples[0].users) <= set(every.users)
    assert np.all(np.diff(samples[0].users) > 0)  # kept in the data's order
    with pytest.raises(RecsysError, match="'val_users' must be >= 0"):
        config_module.resolve_config("sasrec-ce", "syn", {"val_users": -1})
    with pytest.raises(RecsysError, match="'val_batch_size' must be >= 0"):
        config_module.resolve_config("sasrec-ce", "syn", {"val_batch_size": -1})


def test_openmp_threads_sleep_only_when_other_processes_keep_the_cpu_busy(monkeypatch):
    import sys

    from recsys import cpu_load

    monkeypatch.setattr(cpu_load.psutil, "cpu_count", lambda: 2)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delitem(sys.modules, "torch")  # as before torch loads; restored afterwards
    monkeypatch.setattr(cpu_load.psutil, "cpu_percent", lambda interval: 10.0)
    assert cpu_load.choose_omp_wait_policy() is None and "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setattr(cpu_load.psutil, "cpu_percent", lambda interval: 60.0)
    assert cpu_load.choose_omp_wait_policy() == "PASSIVE"
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's own choice stands
    assert cpu_load.choose_omp_wait_policy() is None and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
