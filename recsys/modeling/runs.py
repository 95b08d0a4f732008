"""Trained runs on disk (``models/<dataset>/<run>/``) and loading them back as models.

A checkpoint is self-contained: it holds the run config, the model config and, as buffers, the
frozen text vectors of text and hybrid models or the items' codes of semantic ones, so
:func:`load_trained_run` needs no feature file and reads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recsys.cli import fail
from recsys.config import MODELS_DIR
from recsys.io import read_json, read_yaml

BEST_CKPT = Path("checkpoints") / "best.ckpt"
LAST_CKPT = Path("checkpoints") / "last.ckpt"
MODEL_PREFIX = "model."


@dataclass
class TrainedRun:
    """A trained model (eval mode) with the config it was trained with."""

    model: Any  # a Decoder; typed loosely so importing this module does not import torch
    config: dict[str, Any]
    dataset: str
    run_dir: Path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a training checkpoint safely (tensors and plain values only) onto the CPU."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise fail(f"checkpoint {path} does not exist; train the run first with 'make train'")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise fail(f"checkpoint {path} is corrupt or unreadable ({first}); delete it and retrain")
    if not isinstance(checkpoint, dict) or "recsys" not in checkpoint:
        raise fail(f"checkpoint {path} was not written by recsys.modeling.train; retrain the run")
    return checkpoint


def model_from_checkpoint(checkpoint: dict[str, Any], device: str = "cpu"):
    """Rebuild the decoder of a checkpoint dict, in eval mode."""
    from recsys.modeling.models import ModelConfig, build_model

    state = {
        key[len(MODEL_PREFIX) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(MODEL_PREFIX)
    }
    model = build_model(
        ModelConfig.from_dict(checkpoint["recsys"]["model_config"]),
        state.get("item_features"),
        state.get("item_codes"),
    )
    model.load_state_dict(state)
    return model.to(device).eval()


def load_trained_run(run_dir: Path, checkpoint: str = "best", device: str = "cpu") -> TrainedRun:
    """Load ``run_dir``'s best (or ``last``) checkpoint as a ready-to-score model."""
    run_dir = Path(run_dir)
    if checkpoint not in ("best", "last"):
        raise fail(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    path = run_dir / (BEST_CKPT if checkpoint == "best" else LAST_CKPT)
    ckpt = read_checkpoint(path)
    try:
        model = model_from_checkpoint(ckpt, device)
    except (KeyError, RuntimeError, ValueError) as err:
        raise fail(f"checkpoint {path} does not match this code's model ({err}); retrain the run")
    config = dict(ckpt["recsys"]["config"])
    return TrainedRun(model=model, config=config, dataset=str(config["dataset"]), run_dir=run_dir)


def list_runs(dataset: str, models_dir: Path | None = None) -> list[Path]:
    """Run folders of ``dataset`` that have a best checkpoint, sorted by name."""
    root = Path(models_dir or MODELS_DIR) / dataset
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / BEST_CKPT).is_file())


def best_val_ndcg(run_dir: Path) -> float:
    """The run's best validation NDCG@10 from its ``metrics.json``."""
    metrics = read_json(Path(run_dir) / "metrics.json")
    if "best_val_ndcg@10" not in metrics:
        raise fail(f"{run_dir / 'metrics.json'} has no best_val_ndcg@10; retrain the run")
    return float(metrics["best_val_ndcg@10"])


def saved_config(run_dir: Path) -> dict[str, Any] | None:
    """The resolved config a run folder was trained with; None when it has no config.yaml.

    A corrupt file is an error, never "the config changed": that would delete the checkpoints.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    hint = "fix or delete it, or train with --no-resume to start the run afresh"
    saved = read_yaml(path, hint)
    if not isinstance(saved, dict):
        raise fail(f"{path} is not a mapping of config keys; {hint}")
    return saved


def cold_fraction(run_dir: Path) -> float:
    """The ``cold_items`` fraction a run was trained with, from its config.yaml (0 if absent)."""
    return float((saved_config(run_dir) or {}).get("cold_items") or 0.0)


def is_generative(run_dir: Path) -> bool:
    """Whether a run generates semantic IDs (``item_repr: semantic``) instead of scoring items."""
    return (saved_config(run_dir) or {}).get("item_repr") == "semantic"


def best_run(dataset: str, models_dir: Path | None = None) -> Path:
    """The scoring run of ``dataset`` with the highest best validation NDCG@10.

    Runs trained on the whole catalogue come first: a cold-start run's validation skips the
    held-out items, so its number is not comparable and it should not serve by default.
    Generative runs are left out: they answer at most their beam size of items, so predict and
    the service serve one only when it is named (``--run``).
    """
    root = Path(models_dir or MODELS_DIR) / dataset
    found = list_runs(dataset, models_dir)
    if not found:
        raise fail(f"no trained runs in {root}; run 'make train DATASET={dataset}' first")
    runs = [run for run in found if not is_generative(run)]
    if not runs:
        raise fail(
            f"the runs in {root} are all generative (item_repr semantic), which serve only when "
            f"named: pass --run with one, or train a scoring config, e.g. 'make train "
            f"DATASET={dataset} CONFIGS=sasrec-ce'"
        )
    whole_catalogue = [run for run in runs if cold_fraction(run) == 0.0]
    return max(whole_catalogue or runs, key=best_val_ndcg)
