"""Generative retrieval benchmark (``make bench BENCH=tiger``): TIGER's variants against sasrec-ce.

For each dataset, every variant trains one fresh run per seed into a scratch folder (kept, so that
a killed benchmark resumes with the runs it finished); then ``evaluate`` ranks them with the
baselines on the same split, as ``make evaluate`` does: the seeds' mean and spread of each variant,
and the paired test of the best generative run against sasrec-ce on the same test users. The
variants: plain ``tiger`` (decoder-only, rqvae IDs), the same with the dense head (``tiger-dense``,
ranked ``rescored``), the T5 encoder-decoder (``tiger-t5``) on the same IDs, ``tiger`` and
``tiger-dense`` on residual k-means IDs (``tiger-rqkmeans``, ``tiger-dense-rqkmeans``), and
cold-start runs of ``tiger-dense`` and ``gpt-text`` (a tenth of the items held out). Every TIGER
variant, and the cold-start gpt-text run it is compared with, has the same time budget. The dense
run's best seed is also ranked by its beam alone and by its dense head alone (``rankings``). Beam
sizes are compared on VALIDATION only (NDCG@10 and the time to generate for every validation user).
Nothing is chosen by test. Targets: amazon-beauty test NDCG@10 >= 0.0384 plain (TIGER's published
figure) and >= 0.0464 rescored (RPG's); generating for every test user with beam 20 in <= 120 s
(amazon-beauty) and <= 10 s (ml-100k). The semantic IDs themselves are timed by ``make bench
BENCH=features``.

``python -m benchmarks.bench_tiger retrieve RUN --split test`` generates for every user of a split
in a fresh process, for whole-process timings.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.bench_train import machine_load, peak_rates, seed_runs
from recsys.config import PROCESSED_DATA_DIR, REPORTS_DIR
from recsys.io import read_json, write_json
from recsys.modeling.evaluate import evaluate
from recsys.modeling.evaluation_data import split_examples
from recsys.modeling.metrics import hit_rate_at_k, ndcg_at_k
from recsys.modeling.runs import load_trained_run
from recsys.modeling.scoring import rank_examples
from recsys.processed import load_processed
from recsys.semantic_ids import SemanticIdOptions, build_semantic_ids

DATASETS = ("ml-100k", "amazon-beauty")
#: The same time budget for every TIGER variant's training.
TIGER_MINUTES = 12
RQKMEANS = SemanticIdOptions(method="rqkmeans")
DENSE = ["dense_weight=1.0", "ranking=rescored"]
BUDGET = [f"max_minutes={TIGER_MINUTES}"]
#: The share of items the cold-start variants hold out of training.
COLD_ITEMS = 0.1
COLD = [f"cold_items={COLD_ITEMS}"]
#: name: (config, overrides)
VARIANTS = {
    "sasrec-ce": ("sasrec-ce", []),
    "tiger": ("tiger", BUDGET),
    "tiger-dense": ("tiger", [*BUDGET, *DENSE]),
    "tiger-t5": ("tiger-t5", BUDGET),
    "tiger-rqkmeans": ("tiger", [*BUDGET, f"semantic_ids={RQKMEANS.slug}"]),
    "tiger-dense-rqkmeans": ("tiger", [*BUDGET, *DENSE, f"semantic_ids={RQKMEANS.slug}"]),
    "tiger-dense-cold": ("tiger", [*BUDGET, *DENSE, *COLD, "cold_share=0.1"]),
    "gpt-text-cold": ("gpt-text", [*BUDGET, *COLD]),
}
RANKINGS = ("beam", "rescored", "dense")
#: The runs stay here between invocations, so a resumed benchmark still evaluates them.
SCRATCH = Path(tempfile.gettempdir()) / "bench-tiger"
SEEDS = (42, 1, 2)
BEAMS = (10, 20, 50)
TARGETS = {
    "amazon-beauty": {"test_ndcg@10": 0.0384, "retrieval_s": 120.0},
    "ml-100k": {"retrieval_s": 10.0},
}


def retrieve(
    run_dir: Path, split: str, beam_size: int | None = None, ranking: str | None = None
) -> dict[str, Any]:
    """Generate for every user of ``split`` as evaluation does; NDCG@10, HR@10 and seconds,
    with the run's beam size and ranking unless given."""
    trained = load_trained_run(run_dir)
    model = trained.model
    if beam_size is not None:
        model.config.beam_size = beam_size
    if ranking is not None:
        model.config.ranking = ranking
    examples = split_examples(load_processed(trained.dataset), split)
    start = time.perf_counter()
    ranked = rank_examples(model, examples, model.config.n_items, k_max=10, n_negatives=0)
    seconds = time.perf_counter() - start
    return {
        "split": split,
        "beam_size": model.config.beam_size,
        "ranking": model.config.ranking,
        "n_users": len(examples.targets),
        "seconds": round(seconds, 3),
        f"{split}_ndcg@10": ndcg_at_k(ranked.ranks, 10).mean().item(),
        f"{split}_hr@10": hit_rate_at_k(ranked.ranks, 10).mean().item(),
    }


def drop_unfinished(folder: Path, runs: list[dict[str, Any]]) -> None:
    """Remove the run folders under ``folder`` that no finished run owns (a killed run's), so
    that evaluation ranks finished runs only."""
    owned = {Path(run["run_dir"]).resolve() for run in runs}
    for run_dir in folder.iterdir() if folder.is_dir() else ():
        if run_dir.is_dir() and run_dir.resolve() not in owned:
            shutil.rmtree(run_dir)


def beam_sweep(run_dir: Path) -> list[dict[str, Any]]:
    """Beam size against validation NDCG@10 and time (the test split is left alone)."""
    return [retrieve(run_dir, "valid", beam) for beam in BEAMS]


def compare(
    dataset: str,
    seeds: list[int],
    scratch: Path,
    variants: list[str],
    runs: list[dict[str, Any]],
    save: Callable[[], None],
) -> dict[str, Any]:
    """Train the variants (appending to ``runs`` and saving after each), evaluate, summarise."""
    if any(name.endswith("rqkmeans") for name in variants):
        build_semantic_ids(dataset, RQKMEANS)
    models, peaks = scratch / "models", peak_rates()
    for name in variants:
        config, sets = VARIANTS[name]
        done = {run["seed"] for run in runs if run["name"] == name}
        todo = [seed for seed in seeds if seed not in done]
        seed_runs(dataset, config, sets, todo, models, peaks, runs, save, name=name)
    drop_unfinished(models / dataset, runs)
    metrics_dir = scratch / "metrics"
    report_file = evaluate(dataset, models_dir=models, metrics_dir=metrics_dir)
    cold_variants = {name for name, (_, sets) in VARIANTS.items() if COLD[0] in sets}
    if any(run["name"] in cold_variants for run in runs):
        # The main table leaves the cold-start runs out; their own section ranks them.
        evaluate(dataset, cold_items=COLD_ITEMS, models_dir=models, metrics_dir=metrics_dir)
    report = read_json(report_file)
    rows = {row["name"]: row for row in report["models"]}
    keys = ("best_val_ndcg@10", "best_epoch", "seconds_per_epoch", "time_to_best_s")
    result: dict[str, Any] = {
        "seeds": seeds,
        "training": [
            {k: run.get(k) for k in ("name", "seed", *keys, "peak_rss_mb", "n_params", "wall_s")}
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
        "cold_start": report.get("cold_start"),
        "generative_vs_sasrec": report.get("generative"),
        "best_vs_baseline": report.get("significance"),
        "targets": TARGETS.get(dataset, {}),
    }
    for name in ("tiger", "tiger-dense"):
        mine = [r for r in runs if r["name"] == name]
        if not mine:
            continue
        best = Path(max(mine, key=lambda r: r["best_val_ndcg@10"])["run_dir"])
        if name == "tiger":
            result["beam_sweep_on_valid"] = {"run": best.name, "beams": beam_sweep(best)}
            result["retrieval_test"] = retrieve(best, "test")
        else:
            result["rankings"] = {
                "run": best.name,
                "valid": [retrieve(best, "valid", ranking=r) for r in RANKINGS],
                "test": [retrieve(best, "test", ranking=r) for r in RANKINGS],
            }
    result["load_after"] = machine_load()
    shutil.copy(metrics_dir / f"{dataset}.md", scratch / f"{dataset}-evaluation.md")
    return result


def main(
    datasets: list[str] | None = None,
    seeds: list[int] | None = None,
    output: Path = REPORTS_DIR / "bench" / "tiger.json",
    variants: list[str] | None = None,
    scratch: Path = SCRATCH,
) -> None:
    """``make bench BENCH=tiger``: every variant, 3 seeds, on each processed dataset. The JSON is
    written after every run, and a run it holds whose folder is still in ``scratch`` is not
    trained again, so a killed benchmark resumes where it stopped."""
    out: dict[str, Any] = read_json(output) if output.exists() else {}
    out.setdefault("datasets", {})
    out["load_before"] = machine_load()

    def save() -> None:
        write_json(out, output)

    for dataset in datasets or DATASETS:
        if not (PROCESSED_DATA_DIR / dataset / "stats.json").exists():
            print(f"skip {dataset}: run 'make data features DATASET={dataset}' first")
            continue
        finished = out.setdefault("runs", {}).setdefault(dataset, [])
        finished[:] = [run for run in finished if Path(run["run_dir"]).is_dir()]
        out["datasets"][dataset] = compare(
            dataset,
            list(seeds or SEEDS),
            scratch / dataset,
            variants or list(VARIANTS),
            finished,
            save,
        )
        save()
        print(f"{dataset}: {out['datasets'][dataset]['test']}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    one = sub.add_parser("retrieve", help="generate for every user of a split; print the time")
    one.add_argument("run", type=Path)
    one.add_argument("--split", default="test", choices=("valid", "test"))
    one.add_argument("--beam-size", type=int, default=None)
    both = sub.add_parser("compare", help="train and evaluate TIGER's variants and sasrec-ce")
    both.add_argument("--datasets", default=",".join(DATASETS))
    both.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    both.add_argument("--output", type=Path, default=REPORTS_DIR / "bench" / "tiger.json")
    both.add_argument("--variants", default=",".join(VARIANTS), help="a subset, by name")
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
            [v for v in args.variants.split(",") if v],
        )
