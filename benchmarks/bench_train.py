"""Training benchmark: quality and speed of the shipped configs on this machine.

For each dataset and config it trains one fresh run per seed into a scratch folder and records
validation and speed figures (epochs to best, seconds per epoch, tokens/s, peak RSS, parameters,
training FLOP/s as a share of the measured fp32 matmul rate). The config is chosen on the mean
best validation NDCG@10 over seeds; only then is each run's best checkpoint scored on the TEST
split, once (full ranking over items 1..n_items, history masked, pessimistic ties). The plain
reference (``benchmarks/reference_sasrec.py``) runs with the same seeds, chosen on validation by
its own early stopping. It also times epochs on a synthetic dataset of ML-1M's shape.

``make bench BENCH=train`` writes ``reports/bench/train.json``. One comparison, e.g.
``python -m benchmarks.bench_train --datasets ml-100k --configs sasrec-ce --set lr=0.002
--seeds 42,1,2 --output reports/bench/train-lr.json``, picks nothing by test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks import run_child
from recsys.config import MODELS_DIR, PROCESSED_DATA_DIR, REPORTS_DIR
from recsys.devices import cpu_has_bf16
from recsys.io import read_json, write_json
from recsys.modeling.evaluation_data import split_examples
from recsys.modeling.metrics import hit_rate_at_k, ndcg_at_k
from recsys.modeling.runs import load_trained_run
from recsys.modeling.scoring import rank_examples
from recsys.processed import ProcessedData, load_processed

DATASETS = ("ml-100k", "ml-latest-small", "amazon-beauty")
CONFIGS = ("sasrec-ce", "gpt-hybrid", "gpt-text")
SEEDS = (42, 1, 2)
ML1M_SHAPE = {"n_users": 6040, "n_items": 3706, "n_events": 1_000_209}


def machine_load() -> str:
    load = os.getloadavg()
    return f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores"


def matmul_gflops(
    dtype: torch.dtype = torch.float32, size: int = 1024, seconds: float = 3.0
) -> float:
    """This machine's square-matmul rate through torch in ``dtype`` (all threads)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def flops_per_token(model_config: dict[str, Any], mean_context: float) -> float:
    """Training FLOPs per predicted position (forward + backward = 3x forward matmuls).

    Counts the block matmuls (qkv, attention scores and mix, projection, MLP) at the mean
    attended context, and the full-softmax output layer over the candidate items. The text
    projection of the item table is per batch, not per token, and is left out.
    """
    d, n_layers = model_config["d_model"], model_config["n_layers"]
    d_ff = model_config["d_ff"] or 4 * d
    per_layer = 2 * (3 * d * d + d * d + 2 * d * d_ff) + 2 * 2 * mean_context * d
    output = 2 * d * model_config["n_items"]
    return 3.0 * (n_layers * per_layer + output)


def split_metrics(model: torch.nn.Module, data: ProcessedData, split: str) -> dict[str, float]:
    """NDCG@10 and HR@10 of a trained model on one split, ranked as evaluate ranks."""
    ranked = rank_examples(model, split_examples(data, split), data.n_items)
    return {
        f"{split}_ndcg@10": ndcg_at_k(ranked.ranks, 10).mean().item(),
        f"{split}_hr@10": hit_rate_at_k(ranked.ranks, 10).mean().item(),
        f"n_{split}": len(ranked.users),
    }


def train_run(
    dataset: str,
    config: str,
    sets: list[str],
    models_dir: Path,
    processed_root: Path | None = None,
    run_name: str | None = None,
) -> Path:
    """Train in a subprocess (a clean process, so peak RSS is the run's own)."""
    env = dict(os.environ, RECSYS_MODELS_DIR=str(models_dir))
    if processed_root:
        env["RECSYS_PROCESSED_DATA_DIR"] = str(processed_root)
    cmd = [sys.executable, "-m", "recsys.modeling.train", "--dataset", dataset]
    cmd += ["--config", config, "--no-resume", "--accelerator", "cpu"]
    cmd += ["--run-name", run_name or Path(config).stem]
    for pair in sets:
        cmd += ["--set", pair]
    run_child(cmd, env=env, check=True)
    return models_dir / dataset / (run_name or Path(config).stem)


def peak_rates() -> dict[str, float]:
    """Square-matmul GFLOP/s per training precision (bf16 only where the CPU has it)."""
    rates = {"32-true": matmul_gflops(torch.float32)}
    if cpu_has_bf16():
        rates["bf16-mixed"] = matmul_gflops(torch.bfloat16)
    return rates


def summarize(run_dir: Path, peaks: dict[str, float], processed_root: Path | None = None) -> dict:
    """The run's metrics.json, with its training FLOP/s as a share of the matmul rate of the
    precision it trained in."""
    metrics = read_json(run_dir / "metrics.json")
    trained = load_trained_run(run_dir)
    model_config = trained.model.config.to_dict()
    data = load_processed(trained.dataset, processed_root)
    lengths = data.events.groupby("user_idx").size().to_numpy() - 2
    mean_context = float(np.mean(np.minimum(lengths, model_config["max_len"])) / 2)
    flops = flops_per_token(model_config, mean_context) * metrics["tokens_per_s"]
    return {
        **metrics,
        "config": trained.config,
        "train_gflops_per_s": flops / 1e9,
        "share_of_matmul_peak": flops / 1e9 / peaks[metrics.get("precision", "32-true")],
    }


def ml1m_epoch_time(epochs: int = 1) -> dict[str, Any]:
    """Seconds per epoch of sasrec-ce on a synthetic dataset shaped like ML-1M."""
    from recsys.modeling.synthetic import write_synthetic_processed

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic_processed(root / "processed", "synthetic-ml-1m", seed=0, **ML1M_SHAPE)
        run_dir = train_run(
            "synthetic-ml-1m",
            "sasrec-ce",
            [f"max_epochs={epochs}"],
            root / "models",
            root / "processed",
        )
        metrics = read_json(run_dir / "metrics.json")
    return {
        "shape": ML1M_SHAPE,
        "epochs": epochs,
        "seconds_per_epoch": metrics["seconds_per_epoch"],
        "tokens_per_s": metrics["tokens_per_s"],
        "peak_rss_mb": metrics["peak_rss_mb"],
    }


def mean_and_spread(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=float)
    spread = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return {
        "mean": float(array.mean()),
        "sd": spread,
        "min": float(array.min()),
        "max": float(array.max()),
    }


def seed_runs(
    dataset: str,
    config: str,
    sets: list[str],
    seeds: list[int],
    models_dir: Path,
    peaks: dict[str, float],
    results: list[dict[str, Any]],
    save: Callable[[], None],
    name: str | None = None,
) -> None:
    """One training run per seed, appended to ``results`` with validation and speed figures (no
    test), and saved after each, so a killed benchmark keeps the seeds it finished. ``name``
    (default: the config's) names the runs ``<name>-seed<N>``."""
    name = name or Path(config).stem
    for seed in seeds:
        start = time.perf_counter()
        run_dir = train_run(
            dataset, config, [*sets, f"seed={seed}"], models_dir, run_name=f"{name}-seed{seed}"
        )
        result = {
            "dataset": dataset,
            "name": name,
            "seed": seed,
            "run_dir": str(run_dir),
            "wall_s": time.perf_counter() - start,
            **summarize(run_dir, peaks),
            "load_after": machine_load(),
        }
        print(
            f"{dataset} {result['name']} seed {seed}: best val NDCG@10 "
            f"{result['best_val_ndcg@10']:.4f} at epoch {result['best_epoch']}, "
            f"{result['seconds_per_epoch']:.2f} s/epoch",
            flush=True,
        )
        results.append(result)
        save()


def choose_on_validation(runs: list[dict[str, Any]]) -> str:
    """The config with the highest mean best-validation NDCG@10 over its seeds."""
    by_config: dict[str, list[float]] = {}
    for run in runs:
        by_config.setdefault(run["name"], []).append(run["best_val_ndcg@10"])
    return max(by_config, key=lambda name: float(np.mean(by_config[name])))


def score_test_once(runs: list[dict[str, Any]], data: ProcessedData) -> None:
    """After every choice is made: each run's best checkpoint on the test split, in place."""
    for run in runs:
        run.update(split_metrics(load_trained_run(Path(run["run_dir"])).model, data, "test"))


def config_table(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean and spread over seeds per config of the validation and test figures."""
    table: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(run["name"] for run in runs):
        mine = [run for run in runs if run["name"] == name]
        table[name] = {"seeds": [run["seed"] for run in mine]}
        for key in ("best_val_ndcg@10", "test_ndcg@10", "test_hr@10", "time_to_best_s"):
            if all(key in run for run in mine):
                table[name][key] = mean_and_spread([run[key] for run in mine])
    return table


def reference_runs(dataset: str, seeds: list[int]) -> dict[str, Any]:
    """The plain reference, chosen on validation the same way (its own early stopping)."""
    from benchmarks.reference_sasrec import main as reference

    runs = [
        {"seed": seed, **reference(dataset, epochs=200, patience=20, seed=seed)} for seed in seeds
    ]
    return {
        "runs": runs,
        **{
            key: mean_and_spread([run[key] for run in runs])
            for key in ("best_val_ndcg@10", "test_ndcg@10", "test_hr@10", "time_to_best_s")
        },
    }


def bench(
    datasets: list[str],
    configs: list[str],
    seeds: list[int],
    sets: list[str],
    with_reference: bool,
    models_dir: Path,
    output: Path | None = None,
) -> dict[str, Any]:
    """Train every config with every seed, choose on validation, then score test once. The
    JSON at ``output`` is rewritten after every seed (``runs_so_far``) and at the end."""
    peaks = peak_rates()
    print(f"matmul GFLOP/s: {peaks}; {machine_load()}", flush=True)
    out: dict[str, Any] = {
        "matmul_gflops": peaks,
        "load_before": machine_load(),
        "selection": "best mean validation NDCG@10 over seeds; test scored once, afterwards",
        "seeds": seeds,
        "datasets": {},
    }
    for dataset in datasets:
        if not (PROCESSED_DATA_DIR / dataset / "stats.json").exists():
            print(f"skip {dataset}: run 'make data DATASET={dataset}' first", flush=True)
            continue
        runs: list[dict[str, Any]] = []
        out["runs_so_far"] = runs

        def save() -> None:
            if output is not None:
                write_json(out, output)

        for config in configs:
            seed_runs(dataset, config, sets, seeds, models_dir, peaks, runs, save)
        del out["runs_so_far"]
        chosen = choose_on_validation(runs)
        score_test_once(runs, load_processed(dataset))
        for run in runs:
            run.pop("config")
        result = {"chosen_on_validation": chosen, "configs": config_table(runs), "runs": runs}
        if with_reference:
            result["reference"] = reference_runs(dataset, seeds)
        out["datasets"][dataset] = result
        print(f"{dataset}: chosen on validation: {chosen}", flush=True)
        print(json.dumps(result["configs"], indent=1), flush=True)
    out["load_after"] = machine_load()
    if output is not None:
        write_json(out, output)
    return out


def main() -> None:
    """``make bench BENCH=train``: the shipped configs, 3 seeds, the reference, ML-1M shape."""
    scratch = Path(tempfile.mkdtemp(prefix="bench-train-", dir=MODELS_DIR.parent))
    try:
        output = REPORTS_DIR / "bench" / "train.json"
        out = bench(list(DATASETS), list(CONFIGS), list(SEEDS), [], True, scratch, output)
        out["ml-1m_synthetic"] = ml1m_epoch_time()
        print("ML-1M-shaped synthetic:", out["ml-1m_synthetic"], flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write_json(out, REPORTS_DIR / "bench" / "train.json")


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    parser.add_argument("--set", action="append", default=[], help="override: --set lr=0.002")
    parser.add_argument("--reference", action="store_true", help="also run the plain reference")
    parser.add_argument("--output", default=None, help="write the JSON here (default: print)")
    parser.add_argument("--models-dir", default=str(Path(tempfile.gettempdir()) / "bench-train"))
    args = parser.parse_args()
    result = bench(
        _names(args.datasets),
        _names(args.configs),
        [int(seed) for seed in _names(args.seeds)],
        args.set,
        args.reference,
        Path(args.models_dir),
        Path(args.output) if args.output else None,
    )
