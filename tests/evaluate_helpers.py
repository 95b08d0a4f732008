"""A tiny world for evaluation and prediction tests: processed data plus two trained runs, and
the same data with semantic IDs and a trained TIGER run for the generative serving tests.

Built once per test session (training takes a few seconds) and shared by ``test_evaluate.py``,
``test_predict.py`` and the serving tests; tests only read it and write their own outputs under
``tmp_path``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.modeling.synthetic import write_synthetic_processed
from recsys.semantic_ids import SemanticIdOptions, build_semantic_ids
from tests.test_semantic_ids import write_features

DATASET = "synthetic"
N_ITEMS, N_COLD_CATALOGUE = 60, 5
COLD_FRACTION = 0.1
#: Titles the fuzzy-matching tests type against (the rest are "Item N (year)").
TITLES = {
    1: "Toy Story (1995)",
    2: "Heat (1995)",
    3: "Usual Suspects, The (1995)",
    4: "Heathers (1989)",
}
TINY = {
    "d_model": 16,
    "n_layers": 1,
    "max_len": 20,
    "max_epochs": 2,
    "batch_size": 64,
    "dropout": 0.0,
}


@dataclass(frozen=True)
class World:
    processed: Path
    models: Path
    id_run: Path
    text_run: Path
    features: np.ndarray


def _write_items(folder: Path) -> None:
    items = pd.read_parquet(folder / "items.parquet")
    items["title"] = [
        TITLES.get(i, f"Item {i} ({1950 + i})") for i in items["item_idx"].astype(int)
    ]
    items["year"] = items["title"].str.extract(r"\((\d{4})\)$")[0].astype("Int32")
    items["genres"] = np.where(items["item_idx"] % 2 == 0, "Drama|Comedy", "Action")
    items.to_parquet(folder / "items.parquet", index=False)


def _train(
    processed: Path, models: Path, name: str, overrides: dict, features: np.ndarray
) -> Path:
    from recsys.modeling import training

    config = processed.parent / f"{name}.yaml"
    config.write_text("\n".join(f"{k}: {v}" for k, v in {**TINY, **overrides}.items()) + "\n")
    with pytest.MonkeyPatch.context() as patch:
        # Text runs read features through recsys.features; a fixed random table stands in.
        patch.setattr(training, "load_features", lambda *args, **kwargs: features)
        return training.train(
            DATASET,
            str(config),
            processed_root=processed,
            models_dir=models,
            progress_bar=False,
        )


def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Processed ``synthetic`` (60 items + 5 item-table-only items), an ``id`` run and a ``text``
    run trained with 10% cold items, and a copy of the data named ``other``."""
    root = tmp_path_factory.mktemp("evaluate-world")
    processed, models = root / "processed", root / "models"
    folder = write_synthetic_processed(
        processed, DATASET, n_users=60, n_items=N_ITEMS, n_events=1500, n_cold=N_COLD_CATALOGUE
    )
    _write_items(folder)
    other = processed / "other"
    other.mkdir()
    for file in folder.iterdir():
        (other / file.name).write_bytes(file.read_bytes())
    features = np.random.default_rng(0).normal(size=(N_ITEMS + N_COLD_CATALOGUE + 1, 8))
    features = features.astype(np.float32)
    features[0] = 0.0
    id_run = _train(processed, models, "tiny-id", {"item_repr": "id"}, features)
    text_run = _train(
        processed,
        models,
        "tiny-text",
        {"item_repr": "text", "cold_items": COLD_FRACTION},
        features,
    )
    return World(processed, models, id_run, text_run, features)


@dataclass(frozen=True)
class TigerWorld:
    processed: Path
    models: Path
    run: Path
    features: np.ndarray


#: Fast semantic IDs of the tiny world: 2 levels of 8 codes (then the collision digit).
TIGER_IDS = SemanticIdOptions(method="rqkmeans", levels=2, codebook_size=8, kmeans_iters=20)
TIGER_BEAM = 10


def tiny_tiger(world: World, tmp_path_factory: pytest.TempPathFactory) -> TigerWorld:
    """The tiny world's data with its text vectors as a feature file, their semantic IDs, and a
    TIGER run trained on them (which keeps the quantiser that made the IDs)."""
    root = tmp_path_factory.mktemp("tiger-world")
    processed, models = root / "processed", root / "models"
    shutil.copytree(world.processed / DATASET, processed / DATASET)
    write_features(processed, DATASET, world.features[1:])
    build_semantic_ids(DATASET, TIGER_IDS, processed_root=processed)
    overrides = {
        "item_repr": "semantic",
        "semantic_ids": TIGER_IDS.slug,
        "n_heads": 2,
        "max_len": 10,
        "beam_size": TIGER_BEAM,
    }
    run = _train(processed, models, "tiny-tiger", overrides, world.features)
    return TigerWorld(processed, models, run, world.features)
