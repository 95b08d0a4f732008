"""Loading a trained run for serving: the run folder checked against its dataset, then a
:class:`~recsys.api.run.Run`, or a :class:`~recsys.api.generative.GenerativeRun` for a model
that generates its list."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recsys.api.generative import GenerativeRun
from recsys.api.run import Run
from recsys.cli import fail
from recsys.processed import load_processed, require_processed


def trained_run(
    run: Path | str | None,
    dataset: str | None,
    checkpoint: str = "best",
    models_dir: Path | None = None,
) -> tuple[Any, Path]:
    """The run folder (default: ``dataset``'s best run by validation NDCG@10) loaded as a
    :class:`~recsys.modeling.runs.TrainedRun`, checked to be of ``dataset`` when one is given,
    and the checkpoint file it came from."""
    from recsys.modeling.runs import BEST_CKPT, LAST_CKPT, best_run, load_trained_run

    if run is None:
        if dataset is None:
            raise fail("give a run folder or a dataset whose best run to load")
        run = best_run(dataset, models_dir)
    run_dir = Path(run)
    if not run_dir.is_dir():
        raise fail(
            f"run {run_dir} is not a folder; pass a run folder like models/ml-100k/sasrec-ce"
        )
    trained = load_trained_run(run_dir, checkpoint=checkpoint, device="cpu")
    if dataset is not None and trained.dataset != dataset:
        raise fail(
            f"run {run_dir} was trained on {trained.dataset!r}, not {dataset!r}; pick a run under "
            f"models/{dataset}/ or leave the dataset out"
        )
    return trained, run_dir / (BEST_CKPT if checkpoint == "best" else LAST_CKPT)


def load_run(
    run: Path | str | None = None,
    dataset: str | None = None,
    *,
    checkpoint: str = "best",
    processed_dir: Path | None = None,
    models_dir: Path | None = None,
    device: str = "cpu",
) -> Run:
    """Load a run folder (default: ``dataset``'s best run by validation NDCG@10) for serving.

    The processed data of the run's dataset supplies the titles, users and histories. Without
    ``run``, ``dataset`` is checked to have it before its best run is looked for; with one, a run
    of another dataset is named as such first. A generative (TIGER) run loads as a
    :class:`~recsys.api.generative.GenerativeRun`.
    """
    if run is None and dataset is not None:
        require_processed(dataset, processed_dir)
    trained, path = trained_run(run, dataset, checkpoint, models_dir)
    data = load_processed(trained.dataset, processed_dir)
    expected = int(trained.model.config.n_catalogue)
    if data.n_catalogue != expected:
        raise fail(
            f"run {trained.run_dir} was trained on {expected} items but "
            f"data/processed/{data.name} has {data.n_catalogue}; the data changed since "
            "training: retrain the run"
        )
    kind = GenerativeRun if trained.model.generative else Run
    return kind(
        trained.model,
        trained.config,
        data,
        trained.run_dir,
        path,
        processed_root=processed_dir,
        device=device,
    )
