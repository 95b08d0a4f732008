"""Evaluation and prediction speed: ``make bench BENCH=evaluate``.

* Full-ranking all test users of ml-100k (wall and CPU seconds; target <= 2 s on 2 cores).
* Peak memory of that ranking for growing batch sizes, each in a fresh process: it should grow
  with the batch, not with users x items.
* The stages of ``make evaluate`` on a large catalogue (amazon-beauty, 12k items, when it is
  processed): each baseline's fit, then per model and split the scoring and ranking pass and the
  bootstrap summary (target: the whole evaluation within 60 s on 2 cores).

Uses ``data/processed/ml-100k`` and its best trained run when they exist; otherwise synthetic
data of the same shape and an untrained model of the default architecture (same compute).
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from recsys.config import MODELS_DIR, PROCESSED_DATA_DIR, REPORTS_DIR
from recsys.io import write_json
from recsys.modeling.scoring import BATCH_SIZE

DATASET = "ml-100k"
#: A catalogue large enough that the dense baselines and the bootstrap dominate evaluation.
LARGE_DATASET = "amazon-beauty"
REPEATS = 5
MEMORY_BATCHES = (16, 64, 256, 1024)


def _data_and_model(processed_root: str, models_dir: str) -> tuple[Any, Any, str]:
    """The processed data and a model to time, with a note saying which ones they are."""
    from recsys.modeling.candidates import load_trained
    from recsys.modeling.models import ModelConfig, SeqRecModel
    from recsys.modeling.runs import best_run, list_runs
    from recsys.processed import load_processed

    data = load_processed(DATASET, Path(processed_root))
    if list_runs(DATASET, Path(models_dir)):
        run_dir = best_run(DATASET, Path(models_dir))
        return data, load_trained(run_dir, DATASET).scorer, f"trained run {run_dir}"
    config = ModelConfig(n_items=data.n_items, n_catalogue=data.n_catalogue)
    model = SeqRecModel(config).eval()
    return data, model, "untrained SeqRecModel, default architecture (no trained run found)"


def _processed_root() -> tuple[str, str]:
    """Real ml-100k if processed, else a synthetic stand-in of the same size."""
    if (PROCESSED_DATA_DIR / DATASET / "stats.json").exists():
        return str(PROCESSED_DATA_DIR), f"data/processed/{DATASET}"
    from recsys.modeling.synthetic import write_synthetic_processed

    root = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    write_synthetic_processed(root, DATASET, n_users=943, n_items=1682, n_events=100_000)
    return str(root), "synthetic stand-in (943 users, 1682 items, 100k events)"


def _rank_test(model: Any, data: Any, batch_size: int) -> tuple[float, float, Any]:
    """Wall and CPU seconds to rank every test user, and the ranks."""
    from recsys.modeling.scoring import rank_examples
    from recsys.processed import eval_examples

    examples = eval_examples(data.events, "test")
    wall, cpu = time.perf_counter(), time.process_time()
    ranked = rank_examples(
        model, examples, data.n_items, batch_size=batch_size, device="cpu", cpu_threads=None
    )
    return time.perf_counter() - wall, time.process_time() - cpu, ranked


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak_memory_child(processed_root: str, models_dir: str, batch_size: int) -> float:
    data, model, _ = _data_and_model(processed_root, models_dir)
    _rank_test(model, data, 8)  # warm up allocator and kernels with a small batch
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak-RSS mark (VmHWM)
    before = _status_mb("VmRSS")
    _rank_test(model, data, batch_size)
    return _status_mb("VmHWM") - before


def peak_memory_mb(processed_root: str, models_dir: str, batch_size: int) -> float:
    """Growth of peak RSS (MB) while ranking the test split, in a fresh process."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        job = pool.submit(_peak_memory_child, processed_root, models_dir, batch_size)
        return float(job.result())


def _ranking(model: Any, data: Any) -> dict[str, float]:
    _rank_test(model, data, BATCH_SIZE)  # warm-up
    runs = [_rank_test(model, data, BATCH_SIZE) for _ in range(REPEATS)]
    walls, cpus = [w for w, _, _ in runs], [c for _, c, _ in runs]
    return {
        "users": len(runs[0][2].users),
        "batch_size": BATCH_SIZE,
        "repeats": REPEATS,
        "wall_s_median": statistics.median(walls),
        "wall_s_min": min(walls),
        "cpu_s_median": statistics.median(cpus),
    }


def _timed(what: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = what()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def evaluate_stages(dataset: str) -> dict[str, Any]:
    """Wall and CPU seconds of each stage of ``make evaluate`` on ``dataset``'s baselines."""
    from recsys.modeling.baselines import BASELINES
    from recsys.modeling.evaluation_data import (
        SPLITS,
        split_examples,
        training_popularity,
        usable_ks,
    )
    from recsys.modeling.metric_summary import summarize
    from recsys.modeling.scoring import rank_examples
    from recsys.processed import load_processed, train_pieces

    if not (PROCESSED_DATA_DIR / dataset / "stats.json").exists():
        print(
            f"evaluate stages: skipped, {dataset} is not processed (make data DATASET={dataset})"
        )
        return {"skipped": f"data/processed/{dataset} not found"}
    data = load_processed(dataset)
    sequences = train_pieces(data.events)
    ks, popularity = usable_ks(data.n_items), training_popularity(data)
    examples = {split: split_examples(data, split) for split in SPLITS}
    out: dict[str, Any] = {"dataset": dataset, "n_items": data.n_items, "models": {}}
    for name, cls in BASELINES.items():
        model, fit_wall, fit_cpu = _timed(
            lambda cls=cls: cls().fit(sequences, data.n_items, data.n_catalogue)
        )
        stage = {"fit_wall_s": fit_wall, "fit_cpu_s": fit_cpu}
        for split, ex in examples.items():
            ranked, wall, cpu = _timed(
                lambda ex=ex, model=model: rank_examples(model, ex, data.n_items, device="cpu")
            )
            stage[f"{split}_rank_wall_s"], stage[f"{split}_rank_cpu_s"] = wall, cpu
            _, wall, cpu = _timed(
                lambda r=ranked: summarize(r, popularity, data.n_items, ks, 1000, 0)
            )
            stage[f"{split}_bootstrap_wall_s"], stage[f"{split}_bootstrap_cpu_s"] = wall, cpu
        out["models"][name] = stage
        per_split = ", ".join(
            f"{split}: rank {stage[f'{split}_rank_wall_s']:.2f} s, "
            f"bootstrap {stage[f'{split}_bootstrap_wall_s']:.2f} s"
            for split in examples
        )
        print(f"{dataset} {name}: fit {fit_wall:.2f} s; {per_split}")
    return out


def main() -> None:
    from recsys.modeling.candidates import baseline_candidates
    from recsys.modeling.metric_summary import per_user

    processed_root, data_note = _processed_root()
    data, model, model_note = _data_and_model(processed_root, str(MODELS_DIR))
    print(f"data: {data_note}; model: {model_note}")
    default_threads = torch.get_num_threads()
    by_threads: dict[str, Any] = {}
    # Intra-op threads: 1 and the default (the machine's cores). On a busy shared machine the
    # threads spin-wait for each other, so both are reported.
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        ranking = _ranking(model, data)
        by_threads[str(threads)] = {"rank_test_split": ranking}
        print(
            f"[{threads} thread(s)] rank all {ranking['users']} test users: wall median "
            f"{ranking['wall_s_median']:.2f} s (min {ranking['wall_s_min']:.2f} s, CPU "
            f"{ranking['cpu_s_median']:.2f} s)"
        )
    torch.set_num_threads(default_threads)
    baselines, check = {}, {}
    for cand in baseline_candidates(data):
        wall, _, ranked = _rank_test(cand.scorer, data, BATCH_SIZE)
        baselines[cand.name] = wall
        print(f"baseline {cand.name}: ranked the test split in {wall:.2f} s")
        if cand.name == "most-popular":  # a cross-check of the metric code on known data
            check = {
                f"most_popular_test_{m}@10": float(per_user(ranked, m, 10).mean())
                for m in ("ndcg", "hr")
            }
            print(f"most-popular test NDCG@10 / HR@10: {check}")
    memory = {}
    for batch_size in MEMORY_BATCHES:
        memory[str(batch_size)] = peak_memory_mb(processed_root, str(MODELS_DIR), batch_size)
        print(
            f"peak RSS growth while ranking, batch {batch_size}: {memory[str(batch_size)]:.0f} MB"
        )
    stages = evaluate_stages(LARGE_DATASET)
    result = {
        "data": data_note,
        "model": model_note,
        "machine": {
            "cpus": os.cpu_count(),
            "default_torch_threads": default_threads,
            "platform": platform.platform(),
            "load_average_1m_at_end": os.getloadavg()[0],
        },
        "by_torch_threads": by_threads,
        "baseline_rank_test_wall_s": baselines,
        "peak_rss_growth_mb_by_batch_size": memory,
        "metric_check": check,
        "evaluate_stages": stages,
    }
    path = write_json(result, REPORTS_DIR / "bench" / "evaluate.json")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
