"""Figures for the report: ``python -m recsys.plots {tsne,curves,metrics,recs,semantic-ids,all}
--dataset D``.

The stage: its commands gather the inputs (processed data, a run's item table and logs, the
metrics JSON, ranked sample users), hand them to ``recsys.figures`` to draw and write
``reports/figures/<dataset>/<name>.png`` and ``.svg``. t-SNE also writes
``tsne_knn_agreement.json`` and the sample recommendations ``recs.json`` so the report can quote
their numbers without recomputing anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import pandas as pd
import typer
from loguru import logger

from recsys.cli import RecsysError, fail, run
from recsys.config import (
    DEFAULT_DATASET,
    FIGURES_DIR,
    METRICS_DIR,
    MODELS_DIR,
    PROCESSED_DATA_DIR,
)
from recsys.figures import (
    CURVE_COLUMNS,
    N_LABELLED,
    Space,
    TsneInputs,
    UserRecs,
    draw_tsne,
    item_captions,
    item_titles,
    most_popular,
    plot_code_usage,
    plot_curves,
    plot_metrics,
    plot_recs,
    primary_labels,
    save_figure,
)
from recsys.io import read_json, write_json
from recsys.options import (
    DatasetOpt,
    FiguresDirOpt,
    MetricsDirOpt,
    ModelsDirOpt,
    ProcessedDirOpt,
)
from recsys.processed import (
    ProcessedData,
    cold_item_set,
    eval_examples,
    load_processed,
    require_processed,
)

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)


# --------------------------------------------------------------------------- t-SNE


def gather_tsne_inputs(
    data: ProcessedData,
    run_dir: Path | None,
    feature_model: str | None,
    processed_dir: Path,
) -> TsneInputs:
    """The text-vector file and the run's learned item table, for items 1..n_items."""
    dataset = data.name
    labels, label_kind = primary_labels(data.items)
    item_idx = np.arange(1, data.n_items + 1)
    notes: list[str] = []
    spaces: list[Space] = []
    try:
        from recsys.text_features import load_features_and_manifest, model_label

        text, manifest = load_features_and_manifest(dataset, feature_model, processed_dir)
        spaces.append(Space("text", f"frozen text vectors of {model_label(manifest)}", text))
    except RecsysError as err:
        notes.append(f"no text features, so only the learned space is drawn ({err})")
    if run_dir is not None:
        from recsys.modeling.runs import load_trained_run

        trained = load_trained_run(run_dir)
        table = trained.model.item_table().detach().float().cpu().numpy()
        repr_name = trained.config.get("item_repr", "?")
        description = f"learned item table (run {run_dir.name}, item_repr {repr_name})"
        spaces.append(Space("learned", description, table))
        cold = float(trained.config.get("cold_items", 0) or 0)
        if cold > 0:
            held_out = cold_item_set(data.n_items, cold, int(trained.config.get("cold_seed", 0)))
            item_idx = np.setdiff1d(item_idx, held_out)
            notes.append(f"{len(held_out)} cold-start items the run never saw are left out")
    else:
        notes.append("no trained run, so only the text space is drawn")
    if not spaces:
        raise fail(
            f"nothing to draw for the t-SNE of {dataset}: no text features and no trained run; "
            f"run 'make features DATASET={dataset}' or 'make train DATASET={dataset}' first"
        )
    for space in spaces:
        if len(space.vectors) <= data.n_items:
            raise fail(
                f"the {space.name} vectors have {len(space.vectors)} rows but {dataset} has "
                f"{data.n_items} items; re-run the stage that made them for this dataset"
            )
        space.vectors = space.vectors[item_idx]
    return TsneInputs(item_idx, labels.loc[item_idx].to_numpy(), label_kind, spaces, notes)


# --------------------------------------------------------------------------- training curves


def read_curves(run_dir: Path) -> pd.DataFrame:
    """One run's per-epoch log (logs/metrics.csv), checked for the columns the curves need."""
    path = run_dir / "logs" / "metrics.csv"
    if not path.exists():
        raise fail(f"{path} does not exist; train the run first ('make train')")
    try:
        log = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise fail(f"{path} is not a readable CSV ({err}); re-train the run to rewrite it")
    missing = [c for c in CURVE_COLUMNS if c not in log.columns]
    if missing or log.empty:
        raise fail(
            f"{path} lacks {'rows' if not missing else 'columns ' + ', '.join(missing)}; "
            f"expected one row per epoch with {', '.join(CURVE_COLUMNS)}"
        )
    return log


# --------------------------------------------------------------------------- recommendations


def sample_recommendations(
    events: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
    n_items: int,
    scorer: Any,
    n_users: int = 3,
    k: int = 10,
    seed: int = 0,
) -> list[UserRecs]:
    """Top-``k`` for ``n_users`` seeded test users from the history before their test item.

    Ranked by evaluation's own code (``rank_examples``: items 1..n_items, history masked), so
    the lists and the held-out item's rank are exactly what the metrics counted.
    """
    from recsys.modeling.scoring import rank_examples

    examples = eval_examples(events, "test")
    if len(examples.users) == 0:
        raise fail("the processed data has no test events to sample users from; re-run make data")
    lengths = examples.histories.lengths()
    long_enough = np.flatnonzero(lengths >= k)
    pool = long_enough if len(long_enough) >= n_users else np.arange(len(lengths))
    chosen = np.sort(np.random.default_rng(seed).choice(pool, min(n_users, len(pool)), False))
    sample = examples.take(chosen)
    ranked = rank_examples(scorer, sample, n_items, k_max=k, device="cpu")
    titles, captions = item_titles(items), item_captions(items)
    user_ids = users.set_index("user_idx")["user_id"]

    def describe(idx: int) -> dict[str, Any]:
        return {"item_idx": int(idx), "title": titles.loc[idx], "caption": captions.loc[idx]}

    return [
        UserRecs(
            user_idx=int(user),
            user_id=str(user_ids.loc[int(user)]),
            history_length=len(history),
            last_items=[describe(i) for i in history[-k:]],
            recommendations=[describe(int(i)) for i in ranked.top_items[row] if i > 0],
            held_out=describe(int(target)),
            held_out_rank=int(ranked.ranks[row]) + 1,
        )
        for row, (user, history, target) in enumerate(
            zip(sample.users, sample.histories, sample.targets)
        )
    ]


# --------------------------------------------------------------------------- runs


def resolve_run(dataset: str, run_name: str | None, models_dir: Path) -> Path:
    """``--run`` as a folder, a run name under models/<dataset>/, or the best run when omitted."""
    if run_name is None:
        from recsys.modeling.runs import best_run

        return Path(best_run(dataset, models_dir=models_dir))
    as_path = Path(run_name)
    if as_path.is_dir():
        return as_path
    candidate = models_dir / dataset / run_name
    if candidate.is_dir():
        return candidate
    known = sorted(p.name for p in (models_dir / dataset).glob("*") if p.is_dir())
    raise fail(
        f"no run {run_name!r} in {models_dir / dataset}; "
        + (f"choose one of {', '.join(known)}" if known else f"run 'make train DATASET={dataset}'")
    )


def run_dirs_with_logs(dataset: str, models_dir: Path) -> list[Path]:
    """Runs of a dataset that wrote per-epoch logs (finished or not), in name order."""
    folder = models_dir / dataset
    return sorted(p.parent.parent for p in folder.glob("*/logs/metrics.csv"))


# --------------------------------------------------------------------------- commands

RunOpt = Annotated[
    Optional[str],
    typer.Option(
        "--run",
        help="Run folder, or a run name under models/<dataset>/ (default: the dataset's best run; "
        "for curves, every run).",
    ),
]


def make_tsne(
    dataset: str,
    run_name: str | None = None,
    max_items: int = 2000,
    seed: int = 0,
    feature_model: str | None = None,
    figures_dir: Path = FIGURES_DIR,
    processed_dir: Path = PROCESSED_DATA_DIR,
    models_dir: Path = MODELS_DIR,
) -> list[Path]:
    """t-SNE figure and ``tsne_knn_agreement.json``; a missing run or text space is only noted."""
    if max_items < 2:
        raise fail(f"--max-items must be at least 2, got {max_items}")
    data = load_processed(dataset, processed_dir)
    try:
        run_dir = resolve_run(dataset, run_name, models_dir)
    except RecsysError as err:
        if run_name is not None:
            raise
        logger.info("t-SNE without a learned space: {}", err)
        run_dir = None
    inputs = gather_tsne_inputs(data, run_dir, feature_model, processed_dir)
    for note in inputs.notes:
        logger.info("t-SNE: {}", note)
    popular = most_popular(data.items, N_LABELLED)
    fig, record = draw_tsne(inputs, item_titles(data.items), popular, max_items, seed)
    logger.info("t-SNE used {} of {} items", record["n_items_used"], record["n_items_total"])
    run_fields = {"run": run_dir.name, "run_dir": str(run_dir)} if run_dir else {"run": None}
    record = {"dataset": dataset, **run_fields} | record
    folder = figures_dir / dataset
    paths = save_figure(fig, folder, "tsne")
    paths.append(write_json(record, folder / "tsne_knn_agreement.json"))
    return paths


def make_curves(
    dataset: str,
    run_name: str | None = None,
    figures_dir: Path = FIGURES_DIR,
    models_dir: Path = MODELS_DIR,
) -> list[Path]:
    """Curves of one run (``--run``) or of every run of the dataset that has logs."""
    if run_name is not None:
        runs = [resolve_run(dataset, run_name, models_dir)]
    else:
        runs = run_dirs_with_logs(dataset, models_dir)
    if not runs:
        raise fail(
            f"no training logs under {models_dir / dataset}; "
            f"run 'make train DATASET={dataset}' first"
        )
    fig = plot_curves({r.name: read_curves(r) for r in runs})
    return save_figure(fig, figures_dir / dataset, "curves")


def make_metrics(
    dataset: str, metrics_dir: Path = METRICS_DIR, figures_dir: Path = FIGURES_DIR
) -> list[Path]:
    """The models-vs-baselines figure from ``reports/metrics/<dataset>.json``."""
    path = metrics_dir / f"{dataset}.json"
    if not path.exists():
        raise fail(f"{path} does not exist; run 'make evaluate DATASET={dataset}' first")
    report = read_json(path)
    if not isinstance(report, dict) or not isinstance(report.get("models"), list):
        raise fail(f"{path} has no 'models' list; re-run 'make evaluate DATASET={dataset}'")
    return save_figure(plot_metrics(report), figures_dir / dataset, "metrics")


def make_recs(
    dataset: str,
    run_name: str | None = None,
    n_users: int = 3,
    seed: int = 0,
    figures_dir: Path = FIGURES_DIR,
    processed_dir: Path = PROCESSED_DATA_DIR,
    models_dir: Path = MODELS_DIR,
) -> list[Path]:
    """Sample users' recommendations from a trained run: ``recs.png/.svg`` and ``recs.json``."""
    from recsys.modeling.runs import load_trained_run

    data = load_processed(dataset, processed_dir)
    run_dir = resolve_run(dataset, run_name, models_dir)
    trained = load_trained_run(run_dir)
    recs = sample_recommendations(
        data.events, data.items, data.users, data.n_items, trained.model, n_users, seed=seed
    )
    folder = figures_dir / dataset
    paths = save_figure(plot_recs(recs), folder, "recs")
    record = {"dataset": dataset, "run": run_dir.name, "run_dir": str(run_dir), "seed": seed}
    paths.append(write_json(record | {"users": [asdict(r) for r in recs]}, folder / "recs.json"))
    return paths


def make_semantic_ids(
    dataset: str, figures_dir: Path = FIGURES_DIR, processed_dir: Path = PROCESSED_DATA_DIR
) -> list[Path]:
    """Code usage per level of the dataset's semantic IDs: the default ones that ``make
    features`` builds, else the newest built with other options."""
    from recsys.semantic_ids import SemanticIdOptions, built_slugs, load_semantic_ids

    require_processed(dataset, processed_dir)
    slugs = built_slugs(dataset, processed_dir)
    ids, manifest = load_semantic_ids(
        dataset, slugs[0] if slugs else SemanticIdOptions(), processed_dir
    )
    fig = plot_code_usage(ids, manifest["codebook_size"], manifest["slug"])
    return save_figure(fig, figures_dir / dataset, "semantic_ids")


@app.command()
def tsne(
    dataset: DatasetOpt = DEFAULT_DATASET,
    run_name: RunOpt = None,
    max_items: int = typer.Option(2000, help="Cap on the items drawn (a stratified sample)."),
    seed: int = typer.Option(0, help="Seed of the sample and of t-SNE."),
    feature_model: str = typer.Option(
        None, help="Text-feature model (default: the one make features builds)."
    ),
    figures_dir: FiguresDirOpt = FIGURES_DIR,
    processed_dir: ProcessedDirOpt = PROCESSED_DATA_DIR,
    models_dir: ModelsDirOpt = MODELS_DIR,
) -> None:
    """t-SNE of the text vectors beside the learned item table, with kNN genre agreement."""
    make_tsne(
        dataset, run_name, max_items, seed, feature_model, figures_dir, processed_dir, models_dir
    )


@app.command()
def curves(
    dataset: DatasetOpt = DEFAULT_DATASET,
    run_name: RunOpt = None,
    figures_dir: FiguresDirOpt = FIGURES_DIR,
    models_dir: ModelsDirOpt = MODELS_DIR,
) -> None:
    """Training/validation loss and validation NDCG@10 per epoch."""
    make_curves(dataset, run_name, figures_dir, models_dir)


@app.command()
def metrics(
    dataset: DatasetOpt = DEFAULT_DATASET,
    metrics_dir: MetricsDirOpt = METRICS_DIR,
    figures_dir: FiguresDirOpt = FIGURES_DIR,
) -> None:
    """Models against baselines, NDCG@10 and HR@10 with confidence intervals."""
    make_metrics(dataset, metrics_dir, figures_dir)


@app.command()
def recs(
    dataset: DatasetOpt = DEFAULT_DATASET,
    run_name: RunOpt = None,
    n_users: int = typer.Option(3, "--users", help="How many sample users."),
    seed: int = typer.Option(0, help="Seed of the user sample."),
    figures_dir: FiguresDirOpt = FIGURES_DIR,
    processed_dir: ProcessedDirOpt = PROCESSED_DATA_DIR,
    models_dir: ModelsDirOpt = MODELS_DIR,
) -> None:
    """Last 10 items and top-10 recommendations of sample users, with titles and genres."""
    make_recs(dataset, run_name, n_users, seed, figures_dir, processed_dir, models_dir)


@app.command("semantic-ids")
def semantic_ids(
    dataset: DatasetOpt = DEFAULT_DATASET,
    figures_dir: FiguresDirOpt = FIGURES_DIR,
    processed_dir: ProcessedDirOpt = PROCESSED_DATA_DIR,
) -> None:
    """Items per code at each level of the semantic IDs."""
    make_semantic_ids(dataset, figures_dir, processed_dir)


def make_all(
    dataset: str,
    run_name: str | None = None,
    max_items: int = 2000,
    figures_dir: Path = FIGURES_DIR,
    processed_dir: Path = PROCESSED_DATA_DIR,
    models_dir: Path = MODELS_DIR,
    metrics_dir: Path = METRICS_DIR,
) -> dict[str, str]:
    """Every plot whose inputs exist; returns ``{plot: "drawn" or why it was skipped}``."""
    jobs: dict[str, Callable[[], list[Path]]] = {
        "metrics": lambda: make_metrics(dataset, metrics_dir, figures_dir),
        "curves": lambda: make_curves(dataset, run_name, figures_dir, models_dir),
        "tsne": lambda: make_tsne(
            dataset, run_name, max_items, 0, None, figures_dir, processed_dir, models_dir
        ),
        "recs": lambda: make_recs(dataset, run_name, 3, 0, figures_dir, processed_dir, models_dir),
        "semantic_ids": lambda: make_semantic_ids(dataset, figures_dir, processed_dir),
    }
    outcome = {}
    for name, job in jobs.items():
        try:
            job()
            outcome[name] = "drawn"
        except RecsysError as err:
            outcome[name] = f"skipped: {err}"
            logger.warning("{} skipped: {}", name, err)
    return outcome


@app.command("all")
def all_plots(
    dataset: DatasetOpt = DEFAULT_DATASET,
    run_name: RunOpt = None,
    max_items: int = typer.Option(
        2000, help="Cap on the items t-SNE draws (a stratified sample)."
    ),
    figures_dir: FiguresDirOpt = FIGURES_DIR,
    processed_dir: ProcessedDirOpt = PROCESSED_DATA_DIR,
    models_dir: ModelsDirOpt = MODELS_DIR,
    metrics_dir: MetricsDirOpt = METRICS_DIR,
) -> None:
    """Every plot whose inputs exist; says which were skipped and why."""
    outcome = make_all(
        dataset, run_name, max_items, figures_dir, processed_dir, models_dir, metrics_dir
    )
    for name, status in outcome.items():
        typer.echo(f"{name}: {status}")
    if all(status != "drawn" for status in outcome.values()):
        raise fail(f"no figure could be drawn for {dataset}; see the reasons above")


if __name__ == "__main__":
    run(app)
