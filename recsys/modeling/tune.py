"""``make tune``: search a training config's hyper-parameters on the validation split.

``python -m recsys.modeling.tune --dataset ml-100k --config sasrec-ce --trials 20 --max-epochs 10``

Optuna's TPE sampler (seeded) proposes values from ``configs/search/<config>.yaml``
(:mod:`recsys.modeling.search_space`). Each trial is an ordinary training run in
``models/<dataset>/tuning/<study>/trial-<n>/`` (checkpoints, resume); its objective is the run's
best validation NDCG@10, and a median pruner stops a trial whose validation NDCG@10 falls below
the median of the earlier trials at the same epoch (:mod:`recsys.modeling.tuning`). The tuner
never scores the test split.

The study lives in ``models/<dataset>/tuning/<study>.db`` (SQLite). ``--trials N`` is the number
of finished (complete or pruned) trials the study should hold, so a tuner run again after a kill
does only the rest; a trial left running by a dead tuner is queued again and resumes from its
run's ``last.ckpt``. Several tuners may share one study on one machine; on several machines, see
:mod:`recsys.modeling.study_storage`.

Outputs: the best trial as a training config ``configs/tuned/<dataset>-<config>.yaml``, which
``make train CONFIGS=<config>`` then trains on that dataset (``TRAIN_ARGS=--no-tuned`` does not),
the trials and parameter importances in
``reports/tuning/<dataset>/<study>.json`` and two figures in ``reports/figures/<dataset>/``, which
``make report`` shows on its tuning page.
"""

from __future__ import annotations

from pathlib import Path

import typer

from recsys.cli import run
from recsys.config import DEFAULT_DATASET, MODELS_DIR, PROCESSED_DATA_DIR
from recsys.modeling.configs import parse_sets
from recsys.modeling.tuning import SearchSettings, prepare, tune
from recsys.options import DatasetOpt, ModelsDirOpt, ProcessedDirOpt

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)


@app.command()
def main(
    dataset: DatasetOpt = DEFAULT_DATASET,
    config: str = typer.Option(..., help="Base config name in configs/ or a YAML path."),
    trials: int = typer.Option(20, help="Finished trials the study should hold (runs the rest)."),
    study: str | None = typer.Option(None, help="Study name (default: the config's name)."),
    timeout: float | None = typer.Option(None, help="Start no new trial after this many seconds."),
    max_epochs: int | None = typer.Option(None, help="The max_epochs of every trial."),
    set_: list[str] = typer.Option(
        [], "--set", help="Fix a key in every trial: --set patience=5."
    ),
    space: Path | None = typer.Option(
        None, help="Search space (default configs/search/CONFIG.yaml)."
    ),
    first: list[str] = typer.Option(
        [],
        "--first",
        help="A value of a new study's first trial, e.g. a published recipe's: --first lr=0.001.",
    ),
    seed: int = typer.Option(0, help="Seed of the TPE sampler."),
    startup_trials: int = typer.Option(10, help="Random trials before TPE models the results."),
    prune_after: int = typer.Option(3, help="Finished trials before the pruner stops any."),
    prune_warmup: int = typer.Option(3, help="First epochs of a trial that are never pruned."),
    accelerator: str = typer.Option("auto", help="Lightning accelerator: auto, cpu, gpu."),
    processed_dir: ProcessedDirOpt = PROCESSED_DATA_DIR,
    models_dir: ModelsDirOpt = MODELS_DIR,
) -> None:
    """Tune CONFIG's hyper-parameters on DATASET's validation split; write configs/tuned/."""
    settings = SearchSettings(seed, startup_trials, prune_after, prune_warmup)
    setup = prepare(
        dataset,
        config,
        trials,
        study,
        max_epochs,
        parse_sets(set_),
        space,
        settings,
        models_dir=models_dir,
    )
    summary = tune(setup, timeout, accelerator, processed_dir, parse_sets(first))
    best = summary["best"]
    if best is None:
        typer.echo(f"study {setup.name}: no complete trial yet")
    else:
        typer.echo(
            f"study {setup.name}: best trial {best['number']}, validation NDCG@10 "
            f"{best['value']:.4f}; {summary['tuned_config']}"
        )


if __name__ == "__main__":
    run(app)
