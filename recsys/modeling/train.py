"""``make train``: fit a config on a processed dataset into ``models/<dataset>/<run>/``.

``python -m recsys.modeling.train --dataset ml-100k --config sasrec-ce --set lr=0.002``

A run folder holds ``config.yaml`` (the resolved config), ``checkpoints/{best,last}.ckpt``,
``metrics.json`` and ``logs/metrics.csv``. Running the same resolved config again resumes from
``last.ckpt`` (an interrupted run loses at most one epoch) or, if it finished, does nothing;
a different config starts the run afresh.

``--seeds 42,1,2`` trains one run per seed, one after another, into ``<run>-seed<N>/``: one run
cannot tell two configs apart when the seed alone moves the metric, and evaluation reports the
mean and spread over a config's seeds. ``--logger`` adds TensorBoard or MLflow tracking to the
CSV log (:mod:`recsys.modeling.tracking`).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import typer
import yaml
from loguru import logger

from recsys.cli import fail, run
from recsys.config import CONFIGS_DIR, DEFAULT_DATASET, MODELS_DIR, PROCESSED_DATA_DIR
from recsys.io import ensure_dir, read_json, read_yaml, write_text
from recsys.modeling import distributed, tracking
from recsys.modeling.runs import LAST_CKPT, saved_config
from recsys.options import DatasetOpt, ModelsDirOpt, ProcessedDirOpt

# Idle OpenMP threads sleep instead of spinning: on a shared or busy CPU, spinning threads slow
# every training step. It must be set before torch loads its OpenMP runtime; nothing above
# imports torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)

#: Every config key with its default; a config file or ``--set`` may change values, not add keys.
DEFAULTS: dict[str, Any] = {
    # id | text | hybrid | codes (sums of semantic-ID code rows) | semantic (generates the IDs)
    "item_repr": "id",
    "feature_model": None,  # text-vector model for text/hybrid (None: the features default)
    # item_repr codes or semantic: which semantic IDs of the dataset (a slug under
    # semantic_ids/; None: the default ones of feature_model). semantic: the beams kept when
    # generating (>= 10, the K of validation NDCG@10; evaluation can report K up to it only).
    "semantic_ids": None,
    "beam_size": 20,
    # semantic: the share of the beams kept for items never trained on (TIGER's epsilon for
    # cold start); they take every 1 / cold_share-th place of the list. 0: none.
    "cold_share": 0.0,
    "loss": "ce",  # ce | sampled | bce | bpr
    "sampler": "uniform",  # uniform | popularity | in-batch (loss=sampled)
    "n_negatives": 256,
    "d_model": 64,
    "n_layers": 2,
    "n_heads": 1,
    "d_ff": 0,  # 0: 4 * d_model
    "max_len": 200,
    "dropout": 0.2,
    "attn_dropout": 0.0,
    "positions": "learned",  # learned | sinusoidal
    "position_origin": "start",  # start | end (count back from the most recent item)
    "block": "pre-ln",  # pre-ln (GPT) | sasrec | gated (eSASRec)
    "scale_embeddings": True,
    "use_user": False,
    # token: every training target weighs the same in an epoch, as with unbucketed batches;
    # batch: each (length-bucketed) batch's mean loss weighs the same.
    "loss_weighting": "token",
    "train_windows": "all",  # all | last (the most recent max_len items per user only)
    "lr": 0.001,
    "weight_decay": 0.0,
    "adam_beta2": 0.98,
    "schedule": "cosine",  # cosine | constant (after warmup)
    "warmup_epochs": 1.0,
    "min_lr_ratio": 0.1,
    "grad_clip": 1.0,
    "ema_decay": 0.0,  # > 0: validate and save an exponential moving average of the weights
    "batch_size": 128,
    "max_epochs": 200,
    # Stop when validation NDCG@10 has not improved for this many epochs (the best checkpoint
    # is kept), or after max_minutes of training (0: no time limit), whichever comes first.
    "patience": 20,
    "max_minutes": 0.0,
    "seed": 42,
    "cold_items": 0.0,
    # Draws the cold items; apart from ``seed`` so that every seed of a config (and every
    # config) holds out the same items and their cold-start numbers can be averaged.
    "cold_seed": 0,
    "num_workers": 0,
}
CHOICES = {
    "schedule": ("cosine", "constant"),
    "train_windows": ("all", "last"),
    "loss_weighting": ("batch", "token"),
}
#: Catalogue size above which a config that leaves ``loss`` unset trains with sampled softmax
#: (logQ-corrected, ``n_negatives`` shared negatives) instead of full-softmax ce, whose logits
#: over every item dominate a step there (H&M: 105,542 articles).
LARGE_CATALOGUE = 50_000
MODEL_KEYS = (
    "max_len d_model n_layers n_heads d_ff dropout attn_dropout positions position_origin block "
    "item_repr scale_embeddings use_user loss sampler n_negatives beam_size cold_share"
).split()


# ------------------------------------------------------------------------------------ config
def config_path(name_or_path: str, configs_dir: Path | None = None) -> Path:
    """A config given as a file path or as a name in ``configs/``."""
    folder = Path(configs_dir or CONFIGS_DIR)
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        path = candidate
    else:
        path = folder / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        raise fail(f"config {name_or_path!r} not found ({path}); choose one of {known} or a path")
    return path


def tuned_config_path(name: str, dataset: str, configs_dir: Path | None = None) -> Path | None:
    """``configs/tuned/<dataset>-<name>.yaml``, the config ``make tune`` chose on validation for
    a config named ``name`` (not a path) on ``dataset``, when it exists."""
    if Path(name).suffix in (".yaml", ".yml") or "/" in name:
        return None
    path = Path(configs_dir or CONFIGS_DIR) / "tuned" / f"{dataset}-{name}.yaml"
    return path if path.is_file() else None


def _check_type(key: str, value: Any, source: str) -> Any:
    default = DEFAULTS[key]
    if default is None:
        if value is None or isinstance(value, str):
            return value
        raise fail(f"config key {key!r} in {source} must be a string, got {value!r}")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise fail(f"config key {key!r} in {source} must be true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail(f"config key {key!r} in {source} must be an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise fail(f"config key {key!r} in {source} must be a number, got {value!r}")
    if not isinstance(value, str):
        raise fail(f"config key {key!r} in {source} must be a string, got {value!r}")
    return value


def _merge(config: dict[str, Any], updates: dict[str, Any], source: str) -> None:
    for key, value in updates.items():
        if key not in DEFAULTS:
            remedy = f"known keys: {', '.join(DEFAULTS)}"
            if Path(source).parent.name == "tuned":
                remedy = "it was tuned by an older version; run make tune again or delete it"
            raise fail(f"unknown config key {key!r} in {source}; {remedy}")
        config[key] = _check_type(key, value, source)


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """``["lr=0.002", "item_repr=text"]`` -> values parsed as YAML scalars."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise fail(f"--set expects key=value, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            raise fail(f"--set {pair!r}: the value is not a valid YAML scalar")
    return out


def resolve_config(
    config: str,
    dataset: str,
    overrides: dict[str, Any] | None = None,
    configs_dir: Path | None = None,
    n_catalogue: int | None = None,
) -> dict[str, Any]:
    """Defaults, then the config file, then overrides; validated, with ``dataset`` added.

    ``n_catalogue`` (the dataset's items, when known) picks the loss of a config that leaves it
    unset, and logs it: see :func:`catalogue_loss`."""
    path = config_path(config, configs_dir)
    loaded = read_yaml(path, "fix it") or {}
    if not isinstance(loaded, dict):
        raise fail(f"config {path} must be a mapping of key: value, got {type(loaded).__name__}")
    # A tuned config names the dataset it was tuned on, and its runs keep the base config's name.
    tuned_for = loaded.pop("dataset", dataset)
    name = path.stem.removeprefix(f"{tuned_for}-") if path.parent.name == "tuned" else path.stem
    if tuned_for != dataset:
        raise fail(
            f"config {path} was tuned on {tuned_for}, not {dataset}; use {dataset}'s own "
            f"(make tune DATASET={dataset} TUNE_CONFIG={name}) or configs/{name}.yaml"
        )
    resolved = dict(DEFAULTS)
    _merge(resolved, loaded, str(path))
    _merge(resolved, overrides or {}, "--set")
    if n_catalogue is not None:
        explicit = "loss" in loaded or "loss" in (overrides or {})
        resolved["loss"] = catalogue_loss(resolved, n_catalogue, explicit)
    for key, allowed in CHOICES.items():
        if resolved[key] not in allowed:
            raise fail(
                f"config key {key!r} must be one of {', '.join(allowed)}, got {resolved[key]!r}"
            )
    for key in ("lr", "batch_size", "max_epochs", "patience"):
        if resolved[key] <= 0:
            raise fail(f"config key {key!r} must be > 0, got {resolved[key]!r}")
    nonnegative = ("weight_decay", "warmup_epochs", "min_lr_ratio", "grad_clip", "num_workers")
    for key in (*nonnegative, "max_minutes"):
        if resolved[key] < 0:
            raise fail(f"config key {key!r} must be >= 0, got {resolved[key]!r}")
    for key in ("cold_items", "ema_decay", "cold_share"):
        if not 0.0 <= resolved[key] < 1.0:
            raise fail(f"config key {key!r} must be in [0, 1), got {resolved[key]!r}")
    if resolved["item_repr"] == "semantic" and resolved["beam_size"] < 10:
        raise fail(
            f"config key 'beam_size' is {resolved['beam_size']}, smaller than the K of validation "
            "NDCG@10; use a beam of at least 10"
        )
    _check_model_keys(resolved)
    return {"dataset": dataset, "config_name": name, **resolved}


def catalogue_loss(resolved: dict[str, Any], n_catalogue: int, explicit: bool) -> str:
    """The loss on ``n_catalogue`` items: above :data:`LARGE_CATALOGUE`, ``sampled`` where the
    config and ``--set`` left ``loss`` unset, saying in one line which loss and why."""
    loss = resolved["loss"]
    if n_catalogue <= LARGE_CATALOGUE:
        return loss
    large = f"{n_catalogue} items, more than {LARGE_CATALOGUE}"
    if explicit:
        how = ""
        if loss == "ce":
            from recsys.modeling.model import CE_CHUNK_BYTES

            rows = max(1, CE_CHUNK_BYTES // (4 * (n_catalogue + 1)))
            how = f"; the full softmax goes {rows} target rows at a time, never all scores at once"
        logger.info(
            f"loss {loss}, as the config sets it ({large}, where sampled is the default){how}"
        )
        return loss
    if resolved["item_repr"] == "semantic":
        logger.info(f"loss {loss}: a semantic-ID decoder predicts codes, not its {large}")
        return loss
    logger.info(
        f"loss sampled (logQ correction, {resolved['n_negatives']} negatives) instead of full "
        f"softmax {loss}: {large}; --set loss={loss} keeps {loss}"
    )
    return "sampled"


def _check_model_keys(resolved: dict[str, Any]) -> None:
    """Let the model config validate its keys now, with placeholder data sizes."""
    from recsys.modeling.model import ModelConfig

    try:
        ModelConfig(
            n_items=1,
            n_catalogue=1,
            n_users=1,
            feature_dim=1,
            code_vocab=(1,),
            **{k: resolved[k] for k in MODEL_KEYS},
        )
    except ValueError as err:
        raise fail(f"bad config value: {err}")


def default_run_name(config: dict[str, Any]) -> str:
    name = config["config_name"]
    return f"{name}-cold{config['cold_items']:g}" if config["cold_items"] > 0 else name


def parse_seeds(text: str) -> list[int]:
    """``"42,1,2"`` -> ``[42, 1, 2]``: distinct seeds in ``[0, 2**32)``, in the order given."""
    usage = "--seeds expects distinct comma-separated integers such as 42,1,2"
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise fail(f"{usage}, got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise fail(f"{usage}; {text!r} repeats a seed")
    if any(not 0 <= seed < 2**32 for seed in seeds):
        raise fail(f"{usage} in [0, 2**32), got {text!r}")
    return seeds


# -------------------------------------------------------------------------------------- data
def catalogue_size(dataset: str, processed_root: Path | None = None) -> int | None:
    """The dataset's ``n_catalogue`` from its stats, before the data loads; None when it is not
    processed (:func:`build_inputs` then says how to make it)."""
    from recsys.processed import STATS_FILE, processed_dir

    stats = processed_dir(dataset, processed_root) / STATS_FILE
    return int(read_json(stats)["n_catalogue"]) if stats.is_file() else None


def build_inputs(config: dict[str, Any], processed_root: Path | None = None) -> dict[str, Any]:
    """Sequences, validation examples, features and counts for one dataset and config.

    Cold items leave training by cutting each sequence where they were (see
    :func:`recsys.processed.train_pieces`), so a user may have several pieces. Validation
    follows the evaluation protocol: histories keep every item the user met, cold ones included,
    and only examples with a warm target count. Only the three event columns that sequences need
    are read, and every sequence is a slice of one array.
    """
    import numpy as np
    import torch

    from recsys.modeling.model import CODE_REPRS
    from recsys.processed import (
        cold_item_set,
        eval_examples,
        load_stats,
        read_events,
        train_pieces,
    )

    dataset = config["dataset"]
    events = read_events(dataset, processed_root)
    stats = load_stats(dataset, processed_root)
    n_items, n_catalogue = int(stats["n_items"]), int(stats["n_catalogue"])
    cold = cold_item_set(n_items, config["cold_items"], config["cold_seed"])
    sequences = train_pieces(events, cold)
    valid = eval_examples(events, "valid")
    valid = valid.take(~np.isin(valid.targets, cold))
    counts = np.bincount(sequences.flat(skip_first=True), minlength=n_catalogue + 1)
    features = codes = None
    code_vocab: list[int] = []
    if config["item_repr"] in CODE_REPRS:
        ids, code_vocab = load_codes(config, n_catalogue, processed_root)
        codes = torch.from_numpy(ids)
    elif config["item_repr"] != "id":
        features = torch.from_numpy(load_features(config, n_catalogue, processed_root))
    model_config = {
        **{k: config[k] for k in MODEL_KEYS},
        "n_items": n_items,
        "n_catalogue": n_catalogue,
        "n_users": int(stats["n_users"]),
        "feature_dim": 0 if features is None else int(features.shape[1]),
        "code_vocab": code_vocab,
    }
    return {
        "sequences": sequences,
        "valid": valid,
        "features": features,
        "codes": codes,
        "counts": torch.from_numpy(counts.astype(np.float64)),
        "cold": cold,
        "model_config": model_config,
    }


def load_features(config: dict[str, Any], n_catalogue: int, processed_root: Path | None):
    """The frozen text vectors of the config's feature model, checked against the catalogue."""
    dataset = config["dataset"]
    try:
        from recsys.text_features import load_item_features
    except ImportError:
        raise fail(
            f"item_repr={config['item_repr']} needs text features but recsys.text_features is not "
            f"available; run 'make features DATASET={dataset}'"
        )
    features = load_item_features(dataset, config["feature_model"], processed_root)
    if features.ndim != 2 or features.shape[0] != n_catalogue + 1:
        raise fail(
            f"text features for {dataset} have shape {features.shape}, expected "
            f"({n_catalogue + 1}, dim); run 'make features DATASET={dataset}' again"
        )
    return features.astype("float32", copy=False)


def semantic_ids_slug(config: dict[str, Any]) -> str:
    """The semantic IDs a semantic config reads: its ``semantic_ids``, else the default ones."""
    from recsys.semantic_ids import SemanticIdOptions

    return config["semantic_ids"] or SemanticIdOptions(model=config["feature_model"]).slug


def load_codes(
    config: dict[str, Any], n_catalogue: int, processed_root: Path | None
) -> tuple[Any, list[int]]:
    """The items' semantic IDs int64 [n_catalogue + 1, L + 1] (row 0 = -1), checked against the
    feature file they came from, and the vocabulary size of each of their L + 1 levels."""
    from recsys.semantic_ids import load_semantic_ids

    dataset = config["dataset"]
    ids, manifest = load_semantic_ids(dataset, semantic_ids_slug(config), processed_root)
    if len(ids) != n_catalogue + 1:
        raise fail(
            f"the semantic IDs of {dataset} have {len(ids) - 1} items but the processed data "
            f"{n_catalogue}; run 'make features DATASET={dataset}' again"
        )
    vocab = [int(manifest["codebook_size"])] * int(manifest["levels"])
    return ids, vocab + [int(manifest["largest_collision_group"])]


# ------------------------------------------------------------------------------------- train
def _start_fresh(run_dir: Path) -> None:
    for name in ("checkpoints", "logs"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in ("metrics.json", tracking.RUN_FILE):
        (run_dir / name).unlink(missing_ok=True)


def plan_resume(run_dir: Path, config: dict[str, Any], resume: bool | None) -> str:
    """``fresh``, ``resume`` or ``done`` for this run folder and resolved config.

    Global rank 0 alone calls it (:func:`recsys.modeling.distributed.agree_on_plan`).
    """
    saved = None if resume is False else saved_config(run_dir)
    has_last = (run_dir / LAST_CKPT).is_file()
    same = saved == config
    if resume is False or not has_last:
        if resume is True:
            raise fail(f"--resume: {run_dir / LAST_CKPT} does not exist; train without --resume")
        return "fresh"
    if not same:
        if resume is True:
            changed = sorted(k for k in config if (saved or {}).get(k) != config[k])
            raise fail(
                f"--resume: the config differs from {run_dir / 'config.yaml'} in {changed}; "
                "use --no-resume to start again or another --run-name"
            )
        logger.warning(f"config changed since {run_dir} was trained; starting the run afresh")
        return "fresh"
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file() and read_json(metrics_file).get("finished") and resume is None:
        return "done"
    return "resume"


def train(
    dataset: str,
    config: str,
    overrides: dict[str, Any] | None = None,
    resume: bool | None = None,
    devices: str = "auto",
    strategy: str = "auto",
    precision: str | None = None,
    max_epochs: int | None = None,
    run_name: str | None = None,
    accelerator: str = "auto",
    num_nodes: int = 1,
    processed_root: Path | None = None,
    models_dir: Path | None = None,
    configs_dir: Path | None = None,
    progress_bar: bool | None = None,
    callbacks: list[Any] | None = None,
    seed: int | None = None,
    tracker: str = "csv",
    tuned: bool = True,
) -> Path:
    """Train one config on one dataset; returns the run folder.

    A config given by name trains as ``configs/tuned/<dataset>-<name>.yaml`` where ``make tune``
    wrote one (``tuned=False``: as ``configs/<name>.yaml``).

    ``callbacks`` are extra Lightning callbacks (the tuner's pruning callback, for one).
    ``seed`` sets the config's seed and names the run ``<run>-seed<N>`` (one run of several
    seeds); ``tracker`` is the ``--logger``: csv, tensorboard or mlflow. ``devices`` counts the
    devices of one node; ``num_nodes`` the nodes of a torchrun or SLURM job.
    """
    if num_nodes < 1:
        raise fail(f"--num-nodes must be at least 1, got {num_nodes}")
    overrides = dict(overrides or {})
    if max_epochs is not None:
        overrides["max_epochs"] = max_epochs
    if seed is not None:
        if "seed" in overrides:
            raise fail("--seeds and --set seed=... both set the seed; use one of them")
        overrides["seed"] = seed
    tracking.check_logger(tracker)
    tuned_path = tuned_config_path(config, dataset, configs_dir) if tuned else None
    if tuned_path is not None:
        logger.info(f"{config}: the config tuned on {dataset}, {tuned_path} (--no-tuned: without)")
    cfg = resolve_config(
        str(tuned_path or config),
        dataset,
        overrides,
        configs_dir,
        catalogue_size(dataset, processed_root),
    )
    name = run_name or default_run_name(cfg)
    if seed is not None:
        name = f"{name}-seed{seed}"
    run_dir = Path(models_dir or MODELS_DIR) / dataset / name
    plan = distributed.agree_on_plan(run_dir, lambda: plan_resume(run_dir, cfg, resume))
    if plan == "done":
        logger.info(f"{run_dir} is already trained with this config; --no-resume retrains it")
        return run_dir
    inputs = build_inputs(cfg, processed_root)
    if distributed.is_global_zero():
        ensure_dir(run_dir)
        if plan == "fresh":
            _start_fresh(run_dir)
        write_text(yaml.safe_dump(cfg, sort_keys=False), run_dir / "config.yaml")
    hardware = {
        "accelerator": accelerator,
        "devices": _parse_devices(devices),
        "strategy": strategy,
        "num_nodes": num_nodes,
        "precision": precision,
    }
    fit(cfg, inputs, run_dir, plan == "resume", hardware, progress_bar, callbacks, tracker)
    return run_dir


def train_seeds(dataset: str, config: str, seeds: list[int], **kwargs: Any) -> list[Path]:
    """One run per seed, one after another; each resumes or is skipped on its own."""
    return [train(dataset, config, seed=seed, **kwargs) for seed in seeds]


def _parse_devices(devices: str) -> Any:
    if devices == "auto":
        return "auto"
    try:
        return int(devices)
    except ValueError:
        return devices  # e.g. "0,1" or "[0, 1]": Lightning parses GPU lists


def lightning_parts(cfg: dict[str, Any], inputs: dict[str, Any]) -> tuple[Any, Any]:
    """The LightningModule and DataModule of a resolved config and its :func:`build_inputs`."""
    from recsys.modeling.lightning import SeqDataModule, SeqRecModule

    module = SeqRecModule(
        cfg,
        inputs["model_config"],
        inputs["features"],
        inputs["counts"],
        inputs["cold"],
        inputs["codes"],
    )
    data = SeqDataModule(
        inputs["sequences"],
        inputs["valid"],
        max_len=cfg["max_len"],
        batch_size=cfg["batch_size"],
        seed=cfg["seed"],
        num_workers=cfg["num_workers"],
        last_window_only=cfg["train_windows"] == "last",
    )
    return module, data


def fit(
    cfg: dict[str, Any],
    inputs: dict[str, Any],
    run_dir: Path,
    resume: bool,
    hardware: dict[str, Any],
    progress_bar: bool | None,
    extra_callbacks: list[Any] | None = None,
    tracker: str = "csv",
) -> None:
    """Build the Lightning objects and run ``Trainer.fit`` (resuming from last.ckpt if asked)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar

    from recsys.devices import training_precision
    from recsys.modeling.lightning import (
        METRIC,
        AtomicCheckpointIO,
        RunRecorder,
        ema_averaging,
    )

    # Lightning's info lines and known-harmless warnings drown the one-line-per-epoch log.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    pl.seed_everything(cfg["seed"], workers=True, verbose=False)
    precision = training_precision(hardware["precision"], hardware["accelerator"])
    hardware = {**hardware, "precision": precision}
    module, data = lightning_parts(cfg, inputs)
    if progress_bar is None:
        progress_bar = sys.stderr.isatty() and not os.environ.get("CI")
    # Two checkpoints: the best on the validation metric, and the latest epoch for resuming.
    # (Lightning's save_last only rewrites last.ckpt when the monitored metric improves.)
    checkpoints = {"filename": "best", "monitor": METRIC, "mode": "max"}, {"filename": "last"}
    callbacks: list[pl.Callback] = [
        *(
            ModelCheckpoint(
                dirpath=run_dir / "checkpoints",
                save_top_k=1,
                auto_insert_metric_name=False,
                enable_version_counter=False,
                **kwargs,
            )
            for kwargs in checkpoints
        ),
        EarlyStopping(monitor=METRIC, mode="max", patience=cfg["patience"]),
        RunRecorder(
            run_dir,
            module.model.n_params(),
            {
                "dataset": cfg["dataset"],
                "run": run_dir.name,
                "item_repr": cfg["item_repr"],
                "precision": hardware["precision"],
            },
        ),
    ]
    if cfg["ema_decay"] > 0:
        # Validation, checkpoints and the final weights use the average; resuming restores both.
        callbacks.append(ema_averaging(cfg["ema_decay"]))
    callbacks.extend(extra_callbacks or [])
    if progress_bar:
        callbacks.append(RichProgressBar())
    loggers = tracking.make_loggers(tracker, run_dir, cfg, resume)
    if distributed.is_global_zero():
        tracking.start(loggers, run_dir, cfg)
    trainer = pl.Trainer(
        max_epochs=cfg["max_epochs"],
        max_time=timedelta(minutes=cfg["max_minutes"]) if cfg["max_minutes"] else None,
        **hardware,
        callbacks=callbacks,
        logger=loggers,
        gradient_clip_val=cfg["grad_clip"] or None,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, len(data.train_set) // cfg["batch_size"])),
        default_root_dir=run_dir,
    )
    ckpt_path = run_dir / LAST_CKPT if resume else None
    if ckpt_path:
        logger.info(f"resuming {run_dir.name} from {ckpt_path}")
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    if trainer.is_global_zero:
        tracking.finish(loggers, run_dir)


@app.command()
def main(
    dataset: DatasetOpt = DEFAULT_DATASET,
    config: str = typer.Option(..., help="Config name in configs/ or a YAML path."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: --set lr=0.002."),
    resume: bool | None = typer.Option(
        None,
        "--resume/--no-resume",
        help="Resume from last.ckpt (default: when it was trained with the same config).",
    ),
    devices: str = typer.Option("auto", help="Devices per node: auto, a count or a GPU list."),
    strategy: str = typer.Option("auto", help="Lightning strategy: auto, ddp, ..."),
    precision: str | None = typer.Option(
        None,
        help="Lightning precision (default: bf16-mixed on a GPU or a CPU with native bf16, "
        "else 32-true).",
    ),
    max_epochs: int | None = typer.Option(None, help="Override the config's max_epochs."),
    run_name: str | None = typer.Option(None, help="Run folder name (default: config name)."),
    accelerator: str = typer.Option("auto", help="Lightning accelerator: auto, cpu, gpu."),
    num_nodes: int = typer.Option(
        1, help="Nodes of a torchrun or SLURM job (--devices per node)."
    ),
    seeds: str | None = typer.Option(
        None, help="One run per seed, e.g. 42,1,2, into RUN-seedN/ (default: the config's seed)."
    ),
    logger_: str = typer.Option(
        "csv", "--logger", help="Tracker: csv; tensorboard or mlflow also track the run there."
    ),
    tuned: bool = typer.Option(
        True,
        "--tuned/--no-tuned",
        help="Train configs/tuned/DATASET-CONFIG.yaml, the config tuned on DATASET, where "
        "it exists (--no-tuned: configs/CONFIG.yaml).",
    ),
    processed_dir: ProcessedDirOpt = PROCESSED_DATA_DIR,
    models_dir: ModelsDirOpt = MODELS_DIR,
) -> None:
    """Train CONFIG on DATASET into models/DATASET/RUN/ (one run per seed with --seeds)."""
    from recsys.processed import require_processed

    require_processed(dataset, processed_dir)
    options = dict(
        overrides=parse_sets(set_),
        resume=resume,
        devices=devices,
        strategy=strategy,
        precision=precision,
        max_epochs=max_epochs,
        run_name=run_name,
        accelerator=accelerator,
        num_nodes=num_nodes,
        tracker=logger_,
        tuned=tuned,
        processed_root=processed_dir,
        models_dir=models_dir,
    )
    if seeds is None:
        run_dirs = [train(dataset, config, **options)]
    else:
        run_dirs = train_seeds(dataset, config, parse_seeds(seeds), **options)
    for run_dir in run_dirs:
        logger.info(f"run folder: {run_dir}")


if __name__ == "__main__":
    run(app)
