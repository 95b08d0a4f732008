"""Config resolution, shared by training, tuning, evaluation and the Run API: the defaults,
a config file (``configs/<name>.yaml`` or a path, or the tuned one of ``configs/tuned/``),
``--set`` overrides and the validation of every key.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from loguru import logger

from recsys.cli import fail
from recsys.config import CONFIGS_DIR
from recsys.io import read_yaml
from recsys.modeling.models.config import ModelConfig

#: The model's sizes, which the data gives: no config file sets them.
DATA_SIZES = ("n_items", "n_catalogue", "feature_dim", "n_users", "code_vocab")
#: The keys that shape the model and its loss: :class:`ModelConfig`'s, documented there.
MODEL_KEYS = tuple(f.name for f in fields(ModelConfig) if f.name not in DATA_SIZES)
#: Every config key with its default; a config file or ``--set`` may change values, not add keys.
DEFAULTS: dict[str, Any] = {
    **{f.name: f.default for f in fields(ModelConfig) if f.name in MODEL_KEYS},
    "feature_model": None,  # text-vector model for text/hybrid (None: the features default)
    # item_repr codes or semantic: which semantic IDs of the dataset (a slug under
    # semantic_ids/; None: the default ones of feature_model).
    "semantic_ids": None,
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
    # Validate every val_every epochs: validation ranks the whole catalogue for every user, a
    # visible share of a short epoch. Patience still counts epochs.
    "val_every": 1,
    # Validate on this many users, a fixed sample (the same for every seed and config), or all
    # of them (0): a generative run's beam search per user is most of its epoch.
    "val_users": 0,
    # Users per validation batch (0: batch_size). Validation holds no activations for a backward
    # pass, so a larger batch costs little memory and saves per-batch work, most of all in a
    # generative run's beam search.
    "val_batch_size": 0,
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


def tuned_file(dataset: str, name: str, configs_dir: Path | None = None) -> Path:
    """``configs/tuned/<dataset>-<name>.yaml``: where what was chosen on ``dataset``'s
    validation split for ``name`` (a training config, or ``baselines``) is kept."""
    return Path(configs_dir or CONFIGS_DIR) / "tuned" / f"{dataset}-{name}.yaml"


def tuned_config_path(name: str, dataset: str, configs_dir: Path | None = None) -> Path | None:
    """The config ``make tune`` chose on validation for a config named ``name`` (not a path) on
    ``dataset`` (:func:`tuned_file`), when it exists."""
    if Path(name).suffix in (".yaml", ".yml") or "/" in name:
        return None
    path = tuned_file(dataset, name, configs_dir)
    return path if path.is_file() else None


def check_type(key: str, value: Any, source: str) -> Any:
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
        if isinstance(value, str):
            try:  # YAML 1.1 reads 1e-6 (no dot) as a string
                return float(value)
            except ValueError:
                pass
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
        config[key] = check_type(key, value, source)


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
    for key in ("lr", "batch_size", "max_epochs", "patience", "val_every"):
        if resolved[key] <= 0:
            raise fail(f"config key {key!r} must be > 0, got {resolved[key]!r}")
    nonnegative = ("weight_decay", "warmup_epochs", "min_lr_ratio", "grad_clip", "num_workers")
    for key in (*nonnegative, "max_minutes", "val_users", "val_batch_size"):
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
            from recsys.modeling.models.losses import CE_CHUNK_BYTES

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
    from recsys.modeling.models import ModelConfig

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


def semantic_ids_slug(config: dict[str, Any]) -> str:
    """The semantic IDs a semantic config reads: its ``semantic_ids``, else the default ones."""
    from recsys.semantic_ids import SemanticIdOptions

    return config["semantic_ids"] or SemanticIdOptions(model=config["feature_model"]).slug
