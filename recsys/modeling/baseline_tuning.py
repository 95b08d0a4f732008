"""The baselines' settings, chosen on validation, so the paired test meets tuned baselines.

A trained model gets its hyper-parameters chosen on validation (``make tune``); a baseline left at
fixed defaults would make the paired test of the best model against the best baseline flatter
the model. :func:`tune_baselines` scores each tunable baseline's grid (:data:`GRIDS`) on the
validation split only, ranked exactly as evaluation ranks (full ranking over items
``1..n_items``, history masked), and keeps the setting with the best NDCG@10. The choice is
stored per dataset in ``configs/tuned/<dataset>-baselines.yaml`` (:func:`write_tuned`), which
evaluation fits the baselines with (:func:`read_tuned`); the file names its dataset, and one for
another dataset or with an unknown baseline or key is a one-line error naming it.
"""

from __future__ import annotations

import inspect
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from loguru import logger

from recsys.cli import fail
from recsys.io import read_yaml, write_text
from recsys.modeling import metrics
from recsys.modeling.configs import tuned_file
from recsys.modeling.baselines import BASELINES, Baseline
from recsys.modeling.scoring import BATCH_SIZE, rank_examples
from recsys.processed import EvalExamples, Sequences

#: The metric a setting is chosen by, on the validation split.
METRIC = "ndcg@10"
#: Each tunable baseline's grid: every value tried of each of its tunable arguments.
GRIDS: dict[str, dict[str, tuple[float | int, ...]]] = {
    "ease": {"l2": (1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)},
    "item-knn": {"neighbors": (10, 20, 50, 100, 200, 500)},
}
#: The key of a stored baseline that holds every grid point's validation NDCG@10.
SCORES_KEY = f"validation_{METRIC}"


@dataclass(frozen=True)
class TunedBaseline:
    """One baseline's grid on validation: the chosen setting and every point's NDCG@10."""

    name: str
    chosen: dict[str, Any]
    scores: list[tuple[dict[str, Any], float]]


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, e.g. ``[{"l2": 1.0}, {"l2": 10.0}, ...]``."""
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def point_label(setting: Mapping[str, Any]) -> str:
    """A grid point as the stored file names it: ``l2=250.0``."""
    return ", ".join(f"{key}={value}" for key, value in setting.items())


def validation_ndcg(
    scorer: Baseline,
    valid: EvalExamples,
    n_items: int,
    batch_size: int = BATCH_SIZE,
    device: torch.device | str | None = None,
) -> float:
    """Mean NDCG@10 of ``scorer`` on the validation examples, ranked as evaluation ranks them."""
    name, _, k = METRIC.partition("@")
    ranked = rank_examples(
        scorer, valid, n_items, k_max=int(k), batch_size=batch_size, device=device, n_negatives=0
    )
    return float(metrics.RANK_METRICS[name](ranked.ranks, int(k)).double().mean())


def tune_baselines(
    sequences: Sequences,
    valid: EvalExamples,
    n_items: int,
    n_catalogue: int,
    names: Sequence[str] = tuple(GRIDS),
    *,
    batch_size: int = BATCH_SIZE,
    device: torch.device | str | None = None,
) -> dict[str, TunedBaseline]:
    """Each named baseline fitted on ``sequences`` with every point of its grid and scored on
    ``valid`` (the validation examples; test is never passed in), keeping the best point (the
    first of equals)."""
    tuned = {}
    for name in names:
        points = grid_points(GRIDS[name])
        fits = BASELINES[name].fit_grid(sequences, n_items, n_catalogue, points)
        scores = []
        start = time.perf_counter()
        for setting in points:
            # next() before scoring, and no name kept: one fitted model is alive at a time
            value = validation_ndcg(next(fits), valid, n_items, batch_size, device)
            scores.append((setting, value))
            logger.info(f"{name} {point_label(setting)}: validation {METRIC} {value:.4f}")
        chosen = max(scores, key=lambda point: point[1])[0]
        logger.info(
            f"{name}: {point_label(chosen)} chosen on validation "
            f"({len(points)} settings in {time.perf_counter() - start:.1f} s)"
        )
        tuned[name] = TunedBaseline(name, chosen, scores)
    return tuned


# ----------------------------------------------------------------------------- the file


def tuned_path(dataset: str, configs_dir: Path | None = None) -> Path:
    """``configs/tuned/<dataset>-baselines.yaml``."""
    return tuned_file(dataset, "baselines", configs_dir)


def tune_command(dataset: str) -> str:
    """The command that (re)writes the file, for its header."""
    return f"python -m recsys.modeling.evaluate --dataset {dataset} --tune-baselines"


def write_tuned(
    dataset: str, tuned: Mapping[str, TunedBaseline], configs_dir: Path | None = None
) -> Path:
    """Store the chosen settings, with every grid point's validation NDCG@10, atomically."""
    header = [
        f"GENERATED by `{tune_command(dataset)}` (make tune-baselines DATASET={dataset}); "
        "edits are overwritten.",
        f"Each baseline's setting is the point of its grid with the best validation {METRIC}",
        "(full ranking, history masked; the test split is not read). make evaluate fits the",
        f"baselines with it; {SCORES_KEY} holds every grid point's score.",
    ]
    body: dict[str, Any] = {"dataset": dataset}
    for name, result in tuned.items():
        scores = {point_label(setting): round(value, 6) for setting, value in result.scores}
        body[name] = {**result.chosen, SCORES_KEY: scores}
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(body, sort_keys=False)
    path = write_text(text, tuned_path(dataset, configs_dir))
    logger.info(f"wrote the baselines' settings chosen on validation to {path}")
    return path


def read_tuned(
    dataset: str, configs_dir: Path | None = None
) -> tuple[Path | None, dict[str, dict[str, Any]]]:
    """The stored file and its settings by baseline (``{"ease": {"l2": 250.0}}``); no file and
    no settings when ``dataset`` has none. A file of another dataset, or one naming an unknown
    baseline or key or holding a bad value, is a one-line error naming it."""
    path = tuned_path(dataset, configs_dir)
    if not path.is_file():
        return None, {}
    remedy = f"run make tune-baselines DATASET={dataset} again or delete it"
    loaded = read_yaml(path, remedy)
    if not isinstance(loaded, dict):
        raise fail(f"{path} must be a mapping of baseline: settings; {remedy}")
    if "dataset" not in loaded:
        raise fail(f"{path} lacks the dataset it was tuned on (dataset: {dataset}); {remedy}")
    tuned_for = loaded.pop("dataset")
    if tuned_for != dataset:
        raise fail(
            f"{path} holds the baselines' settings of {tuned_for!r}, not {dataset!r}; {remedy}"
        )
    settings = {}
    for name, entry in loaded.items():
        if name not in GRIDS:
            raise fail(
                f"unknown baseline {name!r} in {path} (tunable: {', '.join(GRIDS)}); {remedy}"
            )
        if not isinstance(entry, dict):
            raise fail(f"baseline {name!r} in {path} must map its settings to values; {remedy}")
        settings[name] = {
            key: _checked(name, key, value, path, remedy)
            for key, value in entry.items()
            if key != SCORES_KEY
        }
    return path, settings


def _checked(name: str, key: str, value: Any, path: Path, remedy: str) -> float | int:
    """A stored setting: one of the baseline's tunable arguments, a positive number of the type
    of its default (an integer where the default is one)."""
    cls = BASELINES[name]
    if key not in cls.tunable:
        known = ", ".join((*cls.tunable, SCORES_KEY))
        raise fail(f"unknown key {key!r} of {name} in {path} (known: {known}); {remedy}")
    wanted = type(inspect.signature(cls).parameters[key].default)
    numbers = (int,) if wanted is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, numbers) or value <= 0:
        kind = "a positive integer" if wanted is int else "a positive number"
        raise fail(f"{name} {key} in {path} must be {kind}, got {value!r}; {remedy}")
    return wanted(value)
