"""Generative retrieval benchmark (``make bench BENCH=tiger``): TIGER against sasrec-ce.

For each dataset, ``tiger`` and ``sasrec-ce`` train one fresh run per seed into a scratch folder;
then ``evaluate`` ranks them with the baselines on the same split, as ``make evaluate`` does: the
3-seed mean and spread of each config, and the paired test of TIGER against sasrec-ce on the same
test users. Nothing is chosen by test. Beam sizes are compared on VALIDATION only (NDCG@10 and
the time to generate for every validation user); the test figures are those of the config's own
beam. Targets: amazon-beauty test NDCG@10 >= 0.0384 (TIGER's published figure) and >= sasrec-ce;
generating for every test user with beam 20 in <= 120 s (amazon-beauty) and <= 10 s (ml-100k).
The semantic IDs themselves are timed by ``make bench BENCH=features``.

``python -m benchmarks.bench_tiger retrieve RUN --split test`` generates for every user of a split
in a fresh process, for whole-process timings.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_train import machine_load, seed_runs
from recsys.config import MODELS_DIR, PROCESSED_DATA_DIR, REPORTS_DIR
from recsys.io import read_json, write_json
from recsys.modeling.evaluate import evaluate
from recsys.modeling.evaluation_data import split_examples
from recsys.modeling.metrics import hit_rate_at_k, ndcg_at_k
from recsys.modeling.runs import load_trained_run
from recsys.modeling.scoring import rank_examples
from recsys.processed import load_processed

DATASETS = ("ml-100k", "amazon-beauty")
CONFIGS = ("sasrec-ce", "tiger")
SEEDS = (42, 1, 2)
BEAMS = (10, 20, 50)
TARGETS = {
    "amazon-beauty": {"test_ndcg@10": 0.0384, "retrieval_s": 120.0},
    "ml-100k": {"retrieval_s": 10.0},
}


def retrieve(run_dir: Path, split: str, beam_size: int | None = None) -> dict[str, Any]:
    """Generate for every user of ``split`` as evaluation does; NDCG@10, HR@10 and seconds."""
    trained = load_trained_run(run_dir)
    model = trained.model
    if beam_size is not None:
        model.config.beam_size = beam_size
    examples = split_examples(load_processed(trained.dataset), split)
    start = time.perf_counter()
    ranked = rank_examples(model, examples, model.config.n_items, k_max=10, n_negatives=0)
    seconds = time.perf_counter() - start
    return {
        "split": split,
        "beam_size": model.config.beam_size,
        "n_users": len(examples.targets),
        "seconds": round(seconds, 3),
        f"{split}_ndcg@10": ndcg_at_k(ranked.ranks, 10).mean().item(),
        f"{split}_hr@10": hit_rate_at_k(ranked.ranks, 10).mean().item(),
    }


def beam_sweep(run_dir: Path) -> list[dict[str, Any]]:
    """Beam size against validation NDCG@10 and time (the test split is left alone)."""
    return [retrieve(run_dir, "valid", beam) for beam in BEAMS]


def compare(dataset: str, seeds: list[int], scratch: Path) -> dict[str, Any]:
    models = scratch / "models"
    runs = [
        run for config in CONFIGS for run in seed_runs(dataset, config, [], seeds, models, 1.0)
    ]
    metrics_dir = scratch / "metrics"
    report = read_json(evaluate(dataset, models_dir=models, metrics_dir=metrics_dir))
    tiger_runs = [r for r in runs if r["name"] == "tiger"]
    best = max(tiger_runs, key=lambda r: r["best_val_ndcg@10"])
    rows = {row["name"]: row for row in report["models"]}
    result = {
        "seeds": seeds,
        "training": [
            {
                k: run.get(k)
                for k in (
                    "name",
                    "seed",
                    "best_val_ndcg@10",
                    "best_epoch",
                    "seconds_per_epoch",
                    "time_to_best_s",
                    "tokens_per_s",
                    "peak_rss_mb",
                    "n_params",
                    "wall_s",
                )
            }
            for run in runs
        ],
        "test": {
            name: {
                key: rows[name]["test"][key]
                for key in ("ndcg@10", "hr@10", "ndcg@20", "hr@20")
                if key in rows[name]["test"]
            }
            for name in rows
        },
        "valid": {name: rows[name]["valid"]["ndcg@10"] for name in rows},
        "generative_vs_sasrec": report.get("generative"),
        "best_vs_baseline": report.get("significance"),
        "beam_sweep_on_valid": {
            "run": Path(best["run_dir"]).name,
            "beams": beam_sweep(Path(best["run_dir"])),
        },
        "retrieval_test": retrieve(Path(best["run_dir"]), "test"),
        "targets": TARGETS.get(dataset, {}),
        "load_after": machine_load(),
    }
    shutil.copy(metrics_dir / f"{dataset}.md", scratch / f"{dataset}-evaluation.md")
    return result


def main(
    datasets: list[str] | None = None,
    seeds: list[int] | None = None,
    output: Path = REPORTS_DIR / "bench" / "tiger.json",
) -> None:
    """``make bench BENCH=tiger``: both configs, 3 seeds, on each processed dataset."""
    out: dict[str, Any] = {"load_before": machine_load(), "datasets": {}}
    scratch = Path(tempfile.mkdtemp(prefix="bench-tiger-", dir=MODELS_DIR.parent))
    try:
        for dataset in datasets or DATASETS:
            if not (PROCESSED_DATA_DIR / dataset / "stats.json").exists():
                print(f"skip {dataset}: run 'make data features DATASET={dataset}' first")
                continue
            out["datasets"][dataset] = compare(dataset, list(seeds or SEEDS), scratch / dataset)
            write_json(out, output)
            print(f"{dataset}: {out['datasets'][dataset]['test']}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    one = sub.add_parser("retrieve", help="generate for every user of a split; print the time")
    one.add_argument("run", type=Path)
    one.add_argument("--split", default="test", choices=("valid", "test"))
    one.add_argument("--beam-size", type=int, default=None)
    both = sub.add_parser("compare", help="train and evaluate TIGER and sasrec-ce")
    both.add_argument("--datasets", default=",".join(DATASETS))
    both.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    both.add_argument("--output", type=Path, default=REPORTS_DIR / "bench" / "tiger.json")
    args = parser.parse_args()
    if args.command == "retrieve":
        print(retrieve(args.run, args.split, args.beam_size))
    elif args.command is None:
        main()
    else:
        main(
            [d for d in args.datasets.split(",") if d],
            [int(s) for s in args.seeds.split(",")],
            args.output,
        )
