"""The models an evaluation scores, as candidates: trained runs (a generative one checked against
the semantic IDs of the data) and the baselines.

Baselines are fitted with the settings chosen on validation in
``configs/tuned/<dataset>-baselines.yaml`` where that file exists (``--tune-baselines`` writes it
first, :mod:`recsys.modeling.baseline_tuning`), else with their defaults; the report records
which file and each baseline's settings (``params``). Those too large for the catalogue are
skipped, and the report says why."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger

from recsys.cli import fail
from recsys.config import shown_path
from recsys.modeling.baseline_tuning import (
    GRIDS,
    point_label,
    read_tuned,
    tune_baselines,
    write_tuned,
)
from recsys.modeling.baselines import MAX_DENSE_ITEMS, fit_baselines, too_large
from recsys.modeling.evaluation_data import split_examples
from recsys.modeling.models import COLD_CAPABLE
from recsys.modeling.models.trie import TrieGenerator
from recsys.modeling.scoring import BATCH_SIZE
from recsys.processed import ProcessedData, train_pieces


@dataclass
class Candidate:
    """A model to evaluate and how to describe it in the report."""

    name: str
    kind: str  # "trained" | "baseline"
    scorer: Any
    run: str | None = None
    item_repr: str | None = None
    n_params: int | None = None
    config: dict[str, Any] | None = None
    #: The largest K its metrics can be reported at: a generative run ranks its beams only.
    max_k: int | None = None
    #: A baseline's settings (``{"l2": 500.0}``); None for a trained run (see ``config``).
    params: dict[str, Any] | None = None

    @property
    def can_score_cold(self) -> bool:
        return self.kind == "trained" and self.item_repr in COLD_CAPABLE


def load_trained(
    run_dir: Path,
    dataset: str,
    device: torch.device | str = "cpu",
    processed_root: Path | None = None,
) -> Candidate:
    """A trained run as a candidate; a run of another dataset is a user error."""
    from recsys.modeling.runs import load_trained_run

    trained = load_trained_run(Path(run_dir), device=str(device))
    if trained.dataset != dataset:
        raise fail(
            f"run {run_dir} was trained on {trained.dataset!r}, not {dataset!r}; "
            f"pick a run under models/{dataset}/ or pass --dataset {trained.dataset}"
        )
    model = trained.model
    generative = model.generative
    if generative:
        check_trie(run_dir, trained.config, model, processed_root)
    return Candidate(
        name=Path(run_dir).name,
        kind="trained",
        scorer=model,
        run=str(run_dir),
        item_repr=trained.config.get("item_repr", getattr(model.config, "item_repr", None)),
        n_params=model.n_params(),
        config=trained.config,
        max_k=model.config.beam_size if generative else None,
    )


def check_trie(
    run_dir: Path, config: dict[str, Any], model: TrieGenerator, processed_root: Path | None
) -> None:
    """A generative run may only rank the data whose semantic IDs it was trained on: the same
    code for the same item, else its trie names other items."""
    from recsys.modeling.configs import semantic_ids_slug
    from recsys.semantic_ids import load_semantic_ids

    dataset = config["dataset"]
    ids, _ = load_semantic_ids(dataset, semantic_ids_slug(config), processed_root)
    if not torch.equal(torch.from_numpy(ids), model.item_codes.cpu()):
        raise fail(
            f"run {run_dir} was trained on other semantic IDs than those of {dataset} now "
            f"({semantic_ids_slug(config)}); retrain it with 'make train DATASET={dataset}'"
        )


def trained_candidates(
    dataset: str,
    models_dir: Path | None,
    cold_items: float,
    device: torch.device | str,
    processed_root: Path | None = None,
) -> list[Candidate]:
    """Trained runs of ``dataset`` whose cold-start fraction equals ``cold_items``."""
    from recsys.modeling.runs import cold_fraction, list_runs

    runs = [p for p in list_runs(dataset, models_dir) if cold_fraction(p) == cold_items]
    return [load_trained(p, dataset, device, processed_root) for p in runs]


def baseline_candidates(
    data: ProcessedData,
    cold: np.ndarray | None = None,
    max_dense_items: int = MAX_DENSE_ITEMS,
    settings: dict[str, dict[str, Any]] | None = None,
) -> list[Candidate]:
    """The baselines, fitted on the training split, cut at the cold items as training is, with
    their ``settings`` by name where given (else their defaults); those too large for the
    catalogue (:func:`recsys.modeling.baselines.too_large`) are left out."""
    sequences = train_pieces(data.events, cold)
    fitted = fit_baselines(sequences, data.n_items, data.n_catalogue, max_dense_items, settings)
    return [
        Candidate(name=n, kind="baseline", scorer=b, params=b.settings())
        for n, b in fitted.items()
    ]


def tune_baseline_settings(
    data: ProcessedData,
    max_dense_items: int = MAX_DENSE_ITEMS,
    batch_size: int = BATCH_SIZE,
    device: torch.device | str | None = None,
    configs_dir: Path | None = None,
) -> Path:
    """Choose the tunable baselines' settings on the validation split and store them; returns
    the file. Fitted on the whole training split and scored on every validation user, even for
    a cold-start or sampled evaluation: the file serves every later evaluation of the dataset."""
    skipped = too_large(data.n_items, max_dense_items)
    tuned = tune_baselines(
        train_pieces(data.events),
        split_examples(data, "valid"),
        data.n_items,
        data.n_catalogue,
        [name for name in GRIDS if name not in skipped],
        batch_size=batch_size,
        device=device,
    )
    return write_tuned(data.name, tuned, configs_dir)


def baseline_settings(
    dataset: str, configs_dir: Path | None = None
) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """The stored file (as the report shows it) and the settings chosen on validation, or
    no file and no settings (the defaults); logged either way."""
    path, settings = read_tuned(dataset, configs_dir)
    if path is None:
        logger.info(
            f"baselines: default settings; make tune-baselines DATASET={dataset} chooses them "
            "on validation"
        )
        return None, {}
    shown = "; ".join(f"{name} {point_label(s)}" for name, s in settings.items())
    logger.info(f"baselines: the settings chosen on validation in {path}: {shown}")
    return shown_path(path), settings


def skipped_baselines(n_items: int, max_dense_items: int) -> list[dict[str, str]]:
    """The report's ``skipped`` entries: each baseline too large to fit, with why (logged)."""
    if max_dense_items < 1:
        raise fail(f"--max-dense-items must be >= 1, got {max_dense_items}")
    skipped = [{"name": n, "reason": r} for n, r in too_large(n_items, max_dense_items).items()]
    for entry in skipped:
        logger.warning(f"skipping baseline {entry['name']}: {entry['reason']}")
    return skipped


def cold_seed(trained: list[Candidate]) -> int:
    """The seed that drew the runs' cold items (their config's ``cold_seed``)."""
    from recsys.modeling.configs import DEFAULTS

    default = DEFAULTS["cold_seed"]
    seeds = sorted({int(c.config.get("cold_seed", default)) for c in trained if c.config})
    if len(seeds) > 1:
        raise fail(
            f"the cold-start runs were trained with different cold_seed values {seeds}, so their "
            "cold item sets differ; retrain them with one cold_seed or evaluate them from "
            "separate --models-dir"
        )
    return seeds[0] if seeds else int(default)


def require_trained(candidates: list[Candidate], dataset: str, cold_items: float) -> None:
    if candidates:
        return
    train_hint = f" TRAIN_ARGS='--set cold_items={cold_items}'" if cold_items else ""
    raise fail(
        f"no trained run for {dataset!r}"
        + (f" with cold_items={cold_items}" if cold_items else "")
        + f"; run 'make train DATASET={dataset}{train_hint}' first, "
        "or pass --baselines-only to evaluate the baselines alone"
    )
