"""``python -m recsys.modeling.evaluate``: trained runs and baselines, ranked the same way.

Every model (trained run or baseline, :mod:`recsys.modeling.candidates`) is a *scorer*, ranked by
:mod:`recsys.modeling.scoring` in batches of users (memory grows with batch x catalogue, never with
users x items). Per-user metrics get bootstrap intervals over users, and the best trained run is
compared with the best baseline by a paired bootstrap on the same test users
(:mod:`recsys.modeling.evaluation`, :mod:`recsys.modeling.significance`).

Large catalogues: baselines that cannot fit are skipped and the report says why (EASE's dense
item x item matrix above ``--max-dense-items``, :data:`recsys.modeling.baselines.MAX_DENSE_ITEMS`
by default), and ``--sample-users N`` scores a seeded random sample of N test users, the same for
every model and split, for a fast estimate whose intervals are those of the sample.

Runs of one config trained with several seeds (``make train SEEDS=42,1,2``) form one row
(:mod:`recsys.modeling.seed_groups`). Each run's own row stays in the report's ``per_seed`` list,
and runs tracked in MLflow get their metrics added there.

A generative run (``item_repr: semantic``) is compared with ``sasrec-ce`` by the same paired test
(``generative`` in the report).

Baselines: fitted with the settings chosen on validation in
``configs/tuned/<dataset>-baselines.yaml`` where that file exists (``--tune-baselines`` writes it
first), else with their defaults.

Output: ``reports/metrics/<dataset>.json`` (read by plots and report) and ``<dataset>.md``
(:mod:`recsys.modeling.report_markdown`). ``--cold-items F`` adds (or replaces) only the
``cold_start`` section of that file.
"""

from __future__ import annotations

from pathlib import Path

import typer
from loguru import logger

from recsys.cli import fail, run
from recsys.config import DEFAULT_DATASET, METRICS_DIR, MODELS_DIR, PROCESSED_DATA_DIR
from recsys.devices import resolve_device
from recsys.modeling.baselines import MAX_DENSE_ITEMS
from recsys.modeling.candidates import (
    baseline_candidates,
    baseline_settings,
    cold_seed,
    require_trained,
    skipped_baselines,
    trained_candidates,
    tune_baseline_settings,
)
from recsys.modeling.evaluation import (
    compatible,
    evaluate_cold,
    evaluate_main,
    log_tracked_runs,
    merge_cold,
    read_existing,
    report_header,
    write_report,
)
from recsys.modeling.evaluation_data import split_examples, user_sample
from recsys.modeling.scoring import BATCH_SIZE, ranking_threads
from recsys.options import DatasetOpt, DeviceOpt, MetricsOutDirOpt, ModelsDirOpt, ProcessedDirOpt
from recsys.processed import cold_item_set, load_processed

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)


def evaluate(
    dataset: str,
    *,
    cold_items: float = 0.0,
    keep_history: bool = False,
    n_bootstrap: int = 1000,
    batch_size: int = BATCH_SIZE,
    baselines_only: bool = False,
    seed: int = 0,
    processed_dir: Path | None = None,
    models_dir: Path | None = None,
    metrics_dir: Path | None = None,
    device: str = "auto",
    sample_users: int | None = None,
    max_dense_items: int = MAX_DENSE_ITEMS,
    tune: bool = False,
    configs_dir: Path | None = None,
) -> Path:
    """Evaluate ``dataset`` and write its report; returns the JSON path.

    ``sample_users``: score a seeded (``seed``) random sample of that many test users, the same
    for every model and split, for a fast estimate. ``max_dense_items``: the largest catalogue
    on which the dense baselines (EASE) are fitted; above it they are skipped, and the report
    says why. ``tune``: first choose the baselines' settings on validation and store them in
    ``configs_dir``'s ``tuned/<dataset>-baselines.yaml``, which the baselines are fitted with
    whenever it exists."""
    if n_bootstrap < 0:
        raise fail(f"--bootstrap must be >= 0 (0 turns the intervals off), got {n_bootstrap}")
    torch_device = resolve_device(device)
    data = load_processed(dataset, processed_dir)
    sample = user_sample(data, sample_users, seed)
    skipped = skipped_baselines(data.n_items, max_dense_items)
    trained = (
        []
        if baselines_only
        else trained_candidates(dataset, models_dir, cold_items, "cpu", processed_dir)
    )
    if not baselines_only:
        require_trained(trained, dataset, cold_items)
    if tune:
        tune_baseline_settings(data, max_dense_items, batch_size, torch_device, configs_dir)
    settings_file, settings = baseline_settings(dataset, configs_dir)
    cold = cold_item_set(data.n_items, cold_items, cold_seed(trained)) if cold_items else None
    for cand in trained:
        cand.scorer.to(torch_device)
    candidates = trained + baseline_candidates(data, cold, max_dense_items, settings)
    options = dict(
        keep_history=keep_history,
        n_bootstrap=n_bootstrap,
        batch_size=batch_size,
        device=torch_device,
        seed=seed,
        sample=sample,
        skipped=skipped,
        # Sampled while this process waits, so its own work so far does not count.
        cpu_threads=ranking_threads() if torch_device.type == "cpu" else None,
    )
    out = Path(metrics_dir or METRICS_DIR) / f"{dataset}.json"
    existing = read_existing(out)
    existing = existing if compatible(existing, data) else None
    if cold is None:
        report = evaluate_main(data, candidates, **options)
        report["baseline_settings"] = settings_file
        report["cold_start"] = (existing or {}).get("cold_start")
    else:
        section = evaluate_cold(data, candidates, cold, cold_items, **options)
        section["baseline_settings"] = settings_file
        n_test = len(split_examples(data, "test", sample).targets)
        header = report_header(data, n_test, keep_history, n_bootstrap, sample, skipped)
        report = merge_cold(existing, section, header)
    path = write_report(report, metrics_dir)
    logger.info(f"wrote {path} and {path.with_suffix('.md')}")
    if cold is None:
        log_tracked_runs(report)
    return path


@app.command()
def main(
    dataset: DatasetOpt = DEFAULT_DATASET,
    cold_items: float = typer.Option(
        0.0, "--cold-items", help="Cold-start mode: fraction of items held out of training."
    ),
    keep_history: bool = typer.Option(
        False, "--keep-history", help="Rank the user's earlier items too (default: masked)."
    ),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples over users (0: no intervals)."),
    batch_size: int = typer.Option(
        BATCH_SIZE, help="Users scored per batch (shrunk so that a batch's scores fit 256 MiB)."
    ),
    baselines_only: bool = typer.Option(
        False, "--baselines-only", help="Evaluate the baselines even without a trained run."
    ),
    seed: int = typer.Option(0, help="Seed of the bootstrap resamples and of --sample-users."),
    sample_users: int | None = typer.Option(
        None,
        "--sample-users",
        help="Score a seeded random sample of N test users (a fast estimate; default: all).",
    ),
    max_dense_items: int = typer.Option(
        MAX_DENSE_ITEMS,
        "--max-dense-items",
        help="Skip the dense baselines (EASE: n_items^2 floats) on larger catalogues.",
    ),
    tune_baselines: bool = typer.Option(
        False,
        "--tune-baselines",
        help="First choose EASE's l2 and item-kNN's neighbours on validation and store them in "
        "configs/tuned/DATASET-baselines.yaml (the baselines are fitted with it when it exists).",
    ),
    device: DeviceOpt = "auto",
    processed_dir: ProcessedDirOpt = PROCESSED_DATA_DIR,
    models_dir: ModelsDirOpt = MODELS_DIR,
    metrics_dir: MetricsOutDirOpt = METRICS_DIR,
) -> None:
    """Score trained runs and baselines on valid and test; write the metrics report."""
    evaluate(
        dataset,
        cold_items=cold_items,
        keep_history=keep_history,
        n_bootstrap=bootstrap,
        batch_size=batch_size,
        baselines_only=baselines_only,
        seed=seed,
        processed_dir=processed_dir,
        models_dir=models_dir,
        metrics_dir=metrics_dir,
        device=device,
        sample_users=sample_users,
        max_dense_items=max_dense_items,
        tune=tune_baselines,
    )


if __name__ == "__main__":
    run(app)
