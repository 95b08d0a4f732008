"""``make train``: fit a config on a processed dataset into ``models/<dataset>/<run>/``.

``python -m recsys.modeling.train --dataset ml-100k --config sasrec-ce --set lr=0.002``

A run folder holds ``config.yaml`` (the resolved config), ``checkpoints/{best,last}.ckpt``,
``metrics.json`` and ``logs/metrics.csv``. Running the same resolved config again resumes from
``last.ckpt`` (an interrupted run loses at most one epoch) or, if it finished, does nothing;
a different config starts the run afresh.

``--seeds 42,1,2`` trains one run per seed, one after another, into ``<run>-seed<N>/``: one run
cannot tell two configs apart when the seed alone moves the metric, and evaluation reports the
mean and spread over a config's seeds. ``--logger`` adds TensorBoard or MLflow tracking to the
CSV log (:mod:`recsys.modeling.tracking`).
"""

from __future__ import annotations

import typer
from loguru import logger

from recsys.cli import fail, run
from recsys.config import DEFAULT_DATASET, MODELS_DIR, PROCESSED_DATA_DIR
from recsys.modeling.configs import parse_sets
from recsys.modeling.training import train, train_seeds
from recsys.options import DatasetOpt, ModelsDirOpt, ProcessedDirOpt

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)


def parse_seeds(text: str) -> list[int]:
    """``"42,1,2"`` -> ``[42, 1, 2]``: distinct seeds in ``[0, 2**32)``, in the order given."""
    usage = "--seeds expects distinct comma-separated integers such as 42,1,2"
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise fail(f"{usage}, got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise fail(f"{usage}; {text!r} repeats a seed")
    if any(not 0 <= seed < 2**32 for seed in seeds):
        raise fail(f"{usage} in [0, 2**32), got {text!r}")
    return seeds


@app.command()
def main(
    dataset: DatasetOpt = DEFAULT_DATASET,
    config: str = typer.Option(..., help="Config name in configs/ or a YAML path."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: --set lr=0.002."),
    resume: bool | None = typer.Option(
        None,
        "--resume/--no-resume",
        help="Resume from last.ckpt (default: when it was trained with the same config).",
    ),
    devices: str = typer.Option("auto", help="Devices per node: auto, a count or a GPU list."),
    strategy: str = typer.Option("auto", help="Lightning strategy: auto, ddp, ..."),
    precision: str | None = typer.Option(
        None,
        help="Lightning precision (default: bf16-mixed on a GPU or a CPU with native bf16, "
        "else 32-true).",
    ),
    max_epochs: int | None = typer.Option(None, help="Override the config's max_epochs."),
    run_name: str | None = typer.Option(None, help="Run folder name (default: config name)."),
    accelerator: str = typer.Option("auto", help="Lightning accelerator: auto, cpu, gpu."),
    num_nodes: int = typer.Option(
        1, help="Nodes of a torchrun or SLURM job (--devices per node)."
    ),
    seeds: str | None = typer.Option(
        None, help="One run per seed, e.g. 42,1,2, into RUN-seedN/ (default: the config's seed)."
    ),
    logger_: str = typer.Option(
        "csv", "--logger", help="Tracker: csv; tensorboard or mlflow also track the run there."
    ),
    tuned: bool = typer.Option(
        True,
        "--tuned/--no-tuned",
        help="Train configs/tuned/DATASET-CONFIG.yaml, the config tuned on DATASET, where "
        "it exists (--no-tuned: configs/CONFIG.yaml).",
    ),
    processed_dir: ProcessedDirOpt = PROCESSED_DATA_DIR,
    models_dir: ModelsDirOpt = MODELS_DIR,
) -> None:
    """Train CONFIG on DATASET into models/DATASET/RUN/ (one run per seed with --seeds)."""
    from recsys.processed import require_processed

    require_processed(dataset, processed_dir)
    options = dict(
        overrides=parse_sets(set_),
        resume=resume,
        devices=devices,
        strategy=strategy,
        precision=precision,
        max_epochs=max_epochs,
        run_name=run_name,
        accelerator=accelerator,
        num_nodes=num_nodes,
        tracker=logger_,
        tuned=tuned,
        processed_root=processed_dir,
        models_dir=models_dir,
    )
    if seeds is None:
        run_dirs = [train(dataset, config, **options)]
    else:
        run_dirs = train_seeds(dataset, config, parse_seeds(seeds), **options)
    for run_dir in run_dirs:
        logger.info(f"run folder: {run_dir}")


if __name__ == "__main__":
    run(app)
