"""MF fold-in on validation: ``make bench BENCH=fold_in``.

A trained ``mf`` run scores a user by the vector it learned for them, or, with ``fold_in_l2``
above 0, by a ridge fit of their history against its item table (the way implicit ALS folds in
a new user). Folding in costs no training, so its l2 is chosen after training: this ranks the
validation split of each trained mf run (``models/<dataset>/<run>`` and its seeds) with the
trained vectors and with each l2 of a grid, and writes every validation NDCG@10 and HR@10 to
``reports/bench/fold-in.json``. Set the best l2 as ``fold_in_l2`` in the config. The test
split is never read.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from benchmarks.bench_train import split_metrics
from recsys.config import MODELS_DIR, PROCESSED_DATA_DIR, REPORTS_DIR
from recsys.io import write_json
from recsys.modeling.candidates import load_trained
from recsys.processed import ProcessedData, load_processed

DATASETS = ("amazon-beauty", "ml-100k")
#: 0 is the trained user vectors; the rest are ridge strengths relative to the table's mean
#: eigenvalue.
GRID = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
OUTPUT = REPORTS_DIR / "bench" / "fold-in.json"


def mf_runs(dataset: str, name: str, models_dir: Path) -> list[Path]:
    """The run ``name`` and its seeds (``name-seedN``) that hold a best checkpoint."""
    folder = models_dir / dataset
    found = [folder / name, *sorted(folder.glob(f"{name}-seed*"))]
    return [run for run in found if (run / "checkpoints" / "best.ckpt").is_file()]


def validation_by_l2(
    run_dir: Path, data: ProcessedData, grid: tuple[float, ...], processed_root: Path
) -> list[dict[str, Any]]:
    """Validation NDCG@10 and HR@10 of one mf run for each ``fold_in_l2`` of ``grid``."""
    model = load_trained(run_dir, data.name, processed_root=processed_root).scorer
    if model.config.family != "mf":
        raise SystemExit(f"error: run {run_dir} is family {model.config.family}, not mf")
    rows = []
    for l2 in grid:
        model.config.fold_in_l2 = l2
        scores = split_metrics(model, data, "valid")
        rows.append({"fold_in_l2": l2, **{k: scores[f"valid_{k}"] for k in ("ndcg@10", "hr@10")}})
        print(f"{run_dir.name} fold_in_l2 {l2:g}: valid NDCG@10 {rows[-1]['ndcg@10']:.4f}")
    return rows


def choose(
    datasets: list[str], name: str, models_dir: Path, output: Path, grid: tuple[float, ...] = GRID
) -> dict[str, Any]:
    """Every mf run's validation per l2, and per dataset the l2 with the best mean NDCG@10 over
    its runs; the JSON is written after every run."""
    out: dict[str, Any] = {"split": "valid", "grid": list(grid), "runs": {}, "chosen": {}}
    for dataset in datasets:
        runs = mf_runs(dataset, name, models_dir)
        if not runs:
            print(f"{dataset}: no trained {name} run; train one with make train")
            continue
        data, tables = load_processed(dataset, PROCESSED_DATA_DIR), []
        for run_dir in runs:
            tables.append(validation_by_l2(run_dir, data, grid, PROCESSED_DATA_DIR))
            out["runs"][f"{dataset}/{run_dir.name}"] = tables[-1]
            write_json(out, output)
        means = [sum(t[i]["ndcg@10"] for t in tables) / len(tables) for i in range(len(grid))]
        out["chosen"][dataset] = grid[means.index(max(means))]
        print(f"{dataset}: fold_in_l2 {out['chosen'][dataset]:g} validates best")
    write_json(out, output)
    return out


def main() -> None:
    """``make bench BENCH=fold_in``: the mf-bpr runs of both datasets."""
    choose(list(DATASETS), "mf-bpr", MODELS_DIR, OUTPUT)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--run", default="mf-bpr", help="the run name (its seeds are included)")
    parser.add_argument("--output", default=str(OUTPUT))
    parser.add_argument("--models-dir", default=str(MODELS_DIR))
    args = parser.parse_args()
    names = [part.strip() for part in args.datasets.split(",") if part.strip()]
    choose(names, args.run, Path(args.models_dir), Path(args.output))
