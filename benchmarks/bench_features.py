"""Embedding speed of ``make features`` with the default model (``make bench BENCH=features``).

Targets on 2 CPU cores, model load included: ml-100k (1,682 items) <= 15 s and ml-latest-small
(9,742 items) <= 60 s. Each dataset runs the real CLI (``text`` then ``embed --force``) in a fresh
process on a scratch copy of its items, so the wall time holds interpreter start, imports, model
load and encoding, and the repo's own feature files are never touched.

Semantic IDs (``semantic-ids --force``, default rqvae 3x256) run the same way on a scratch copy of
each dataset's built texts and vectors; target for amazon-beauty (12,101 items): <= 60 s wall,
collision rate before disambiguation <= 5%, >= 90% of the codes used at every level.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks import run_child
from recsys.config import DATA_MIRROR, PROCESSED_DATA_DIR, PROJ_ROOT, REPORTS_DIR
from recsys.text_features import DEFAULT_MODEL_SLUG, FEATURES_DIR, ITEM_TEXT_FILE
from recsys.io import write_json
from recsys.processed import ITEMS_FILE
from recsys.semantic_ids import SemanticIdOptions, semantic_id_paths

TARGETS_S = {"ml-100k": 15.0, "ml-latest-small": 60.0}
SEMANTIC_TARGETS = {"amazon-beauty": {"wall_s": 60.0, "collision_rate": 0.05, "code_usage": 0.9}}
SEMANTIC_DATASETS = ("ml-100k", "amazon-beauty")
MIRROR = Path(DATA_MIRROR) if DATA_MIRROR else PROJ_ROOT.parent / "shared" / "data"


def _items_from_mirror(dataset: str) -> pd.DataFrame:
    """Title/genres(/tags) straight from the MovieLens files, for when `make data` has not run."""
    if dataset == "ml-100k":
        genres = pd.read_csv(MIRROR / "ml-100k/u.genre", sep="|", header=None)[0].tolist()
        raw = pd.read_csv(MIRROR / "ml-100k/u.item", sep="|", header=None, encoding="latin-1")
        flags = raw.iloc[:, 5:].to_numpy(dtype=bool)
        items = pd.DataFrame({"item_id": raw[0], "title": raw[1]})
        items["genres"] = ["|".join(g for g, on in zip(genres, row) if on) for row in flags]
    else:
        items = pd.read_csv(MIRROR / "ml-latest-small/movies.csv").rename(
            columns={"movieId": "item_id"}
        )
        tags = pd.read_csv(MIRROR / "ml-latest-small/tags.csv")
        joined = tags.groupby("movieId")["tag"].agg(lambda t: "|".join(map(str, t)))
        items["tags"] = items["item_id"].map(joined).fillna("")
    items.insert(0, "item_idx", range(1, len(items) + 1))
    return items


def _stage_items(dataset: str, root: Path) -> str:
    """Put the dataset's items.parquet under the scratch root; say where it came from."""
    folder = root / dataset
    folder.mkdir(parents=True)
    processed = PROCESSED_DATA_DIR / dataset / ITEMS_FILE
    if processed.exists():
        shutil.copy(processed, folder / ITEMS_FILE)
        return str(processed)
    _items_from_mirror(dataset).to_parquet(folder / ITEMS_FILE, index=False)
    return f"mirror {MIRROR / dataset}"


def _timed(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    run_child([sys.executable, "-m", "recsys.features", *args], env=env, check=True)
    return time.perf_counter() - started


def matmul_gflops(seconds: float = 1.0) -> float:
    """The fp32 matmul rate the machine gives right now: how loaded the shared cores are."""
    import torch

    a, b = torch.randn(1024, 384), torch.randn(384, 1536)
    a @ b
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        runs += 1
    return 2 * 1024 * 384 * 1536 * runs / (time.perf_counter() - started) / 1e9


def bench_dataset(dataset: str, root: Path) -> dict:
    source = _stage_items(dataset, root)
    env = {**os.environ, "RECSYS_PROCESSED_DATA_DIR": str(root)}
    load_before = os.getloadavg()[0]
    gflops = matmul_gflops()
    text_s = _timed(["text", "--dataset", dataset], env)
    embed_s = _timed(["embed", "--dataset", dataset, "--force"], env)
    manifest = json.loads(
        (root / dataset / FEATURES_DIR / f"{DEFAULT_MODEL_SLUG}.json").read_text()
    )
    return {
        "dataset": dataset,
        "items_source": source,
        "n_items": manifest["n_items"],
        "text_wall_s": round(text_s, 2),
        "embed_wall_s": round(embed_s, 2),
        "model_load_s": manifest["load_seconds"],
        "encode_s": manifest["encode_seconds"],
        "encode_items_per_s": manifest["items_per_s"],
        "end_to_end_items_per_s": round(manifest["n_items"] / embed_s, 1),
        "target_s": TARGETS_S[dataset],
        "meets_target": embed_s <= TARGETS_S[dataset],
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "matmul_gflops_before": round(gflops, 1),
    }


def bench_semantic_ids(dataset: str, root: Path) -> dict | None:
    """Time ``semantic-ids --force`` on a copy of the dataset's texts and vectors (None: not
    built here yet)."""
    source = PROCESSED_DATA_DIR / dataset
    npy, manifest = (
        source / FEATURES_DIR / f"{DEFAULT_MODEL_SLUG}{ext}" for ext in (".npy", ".json")
    )
    needed = [source / ITEMS_FILE, source / ITEM_TEXT_FILE, npy, manifest]
    if not all(path.exists() for path in needed):
        print(f"{dataset}: no features yet, semantic IDs skipped (run 'make features')")
        return None
    folder = root / dataset / FEATURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for path in needed:
        shutil.copy(path, folder if path.parent.name == FEATURES_DIR else folder.parent)
    env = {**os.environ, "RECSYS_PROCESSED_DATA_DIR": str(root)}
    load_before = os.getloadavg()[0]
    wall = _timed(["semantic-ids", "--dataset", dataset, "--force"], env)
    options = SemanticIdOptions()
    written = json.loads(semantic_id_paths(dataset, options.slug, root)[1].read_text())
    result = {
        "dataset": dataset,
        "slug": options.slug,
        "n_items": written["n_items"],
        "wall_s": round(wall, 2),
        "quantise_s": written["seconds"],
        "collision_rate": written["collision_rate"],
        "largest_collision_group": written["largest_collision_group"],
        "code_usage": written["code_usage"],
        "reconstruction_relative": written["reconstruction_relative"],
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    target = SEMANTIC_TARGETS.get(dataset)
    if target:
        result["target"] = target
        result["meets_target"] = (
            wall <= target["wall_s"]
            and written["collision_rate"] <= target["collision_rate"]
            and min(written["code_usage"]) >= target["code_usage"]
        )
    print(
        f"{dataset}: semantic IDs {options.slug} in {result['wall_s']} s wall "
        f"(quantise {result['quantise_s']} s), collision rate {result['collision_rate']:.2%}, "
        f"code usage {result['code_usage']}, meets target: {result.get('meets_target', 'n/a')}",
        flush=True,
    )
    return result


def main() -> None:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-features-") as scratch:
        for dataset in TARGETS_S:
            result = bench_dataset(dataset, Path(scratch))
            results.append(result)
            print(
                f"{dataset}: {result['n_items']} items, embed {result['embed_wall_s']} s wall "
                f"(target {result['target_s']} s; model load {result['model_load_s']} s, encode "
                f"{result['encode_s']} s = {result['encode_items_per_s']} items/s), "
                f"load average {result['load_average_1min']}, "
                f"fp32 matmul {result['matmul_gflops_before']} GFLOP/s before",
                flush=True,
            )
        semantic = [bench_semantic_ids(d, Path(scratch) / "semantic") for d in SEMANTIC_DATASETS]
    report = {
        "benchmark": "features",
        "model": DEFAULT_MODEL_SLUG,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "note": "wall includes interpreter start, imports and model load; shared machine",
        "results": results,
        "semantic_ids": [r for r in semantic if r],
    }
    target = write_json(report, REPORTS_DIR / "bench" / "features.json")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
