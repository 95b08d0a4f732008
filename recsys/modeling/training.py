"""Training library: a resolved config fitted into a run folder, which ``make train``
(:mod:`recsys.modeling.train`) and the tuner (:mod:`recsys.modeling.tuning`) both call.

A run folder holds ``config.yaml`` (the resolved config), ``checkpoints/{best,last}.ckpt``,
``metrics.json`` and ``logs/metrics.csv``; a TIGER run also the quantiser of its semantic IDs
(``quantiser.npz`` and ``quantiser.json``, :func:`recsys.semantic_ids.store_run_quantiser`).
Running the same resolved config again resumes from ``last.ckpt`` (an interrupted run loses at
most one epoch) or, if it finished, does nothing; a different config starts the run afresh.
``--logger`` adds TensorBoard or MLflow tracking to the CSV log (:mod:`recsys.modeling.tracking`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from loguru import logger

from recsys.cli import fail
from recsys.cpu_load import choose_omp_wait_policy
from recsys.config import MODELS_DIR
from recsys.io import ensure_dir, read_json, write_text
from recsys.modeling import distributed, tracking
from recsys.modeling.configs import (
    MODEL_KEYS,
    default_run_name,
    resolve_config,
    semantic_ids_slug,
    tuned_config_path,
)
from recsys.modeling.runs import LAST_CKPT, saved_config

# On a busy CPU idle OpenMP threads sleep instead of spinning (see recsys.cpu_load). It must be
# chosen before torch loads its OpenMP runtime; nothing above imports torch.
OMP_WAIT_POLICY = choose_omp_wait_policy()
#: Draws the users of ``val_users``; fixed, so every seed and config validates on the same ones.
VAL_SAMPLE_SEED = 0


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

    from recsys.modeling.models import CODE_REPRS
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
    if 0 < config["val_users"] < len(valid.targets):
        rows = np.random.default_rng(VAL_SAMPLE_SEED).choice(
            len(valid.targets), config["val_users"], replace=False
        )
        valid = valid.take(np.sort(rows))
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


def training_config(
    config: str,
    dataset: str,
    overrides: dict[str, Any] | None = None,
    tuned: bool = True,
    configs_dir: Path | None = None,
    processed_root: Path | None = None,
) -> dict[str, Any]:
    """The resolved config that :func:`train` trains: ``configs/tuned/<dataset>-<name>.yaml``
    where ``make tune`` wrote one (``tuned=False``: ``configs/<name>.yaml``), with the loss the
    dataset's catalogue size picks where the config leaves it unset."""
    tuned_path = tuned_config_path(config, dataset, configs_dir) if tuned else None
    if tuned_path is not None:
        logger.info(f"{config}: the config tuned on {dataset}, {tuned_path} (--no-tuned: without)")
    return resolve_config(
        str(tuned_path or config),
        dataset,
        overrides,
        configs_dir,
        catalogue_size(dataset, processed_root),
    )


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
    cfg = training_config(config, dataset, overrides, tuned, configs_dir, processed_root)
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
        if cfg["item_repr"] == "semantic":  # so that the service can give new items codes
            from recsys.semantic_ids import store_run_quantiser

            store_run_quantiser(run_dir, dataset, semantic_ids_slug(cfg), processed_root)
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
        val_batch_size=cfg["val_batch_size"],
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
    # Under DDP, Lightning advises syncing epoch-level logs; ours are summed over the ranks
    # before they are logged (on_validation_epoch_end), so the advice, once per metric, is moot.
    warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
    pl.seed_everything(cfg["seed"], workers=True, verbose=False)
    if OMP_WAIT_POLICY:
        logger.info(
            "other processes keep the CPU busy: OpenMP threads sleep between steps "
            f"(OMP_WAIT_POLICY={OMP_WAIT_POLICY}; set it yourself to choose)"
        )
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
        # Lightning counts patience in validations.
        EarlyStopping(
            monitor=METRIC, mode="max", patience=math.ceil(cfg["patience"] / cfg["val_every"])
        ),
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
        check_val_every_n_epoch=cfg["val_every"],
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
