"""Experiment tracking beside the run folder: ``--logger csv|tensorboard|mlflow`` of training.

Every run writes ``logs/metrics.csv`` (Lightning's CSVLogger and the run recorder); ``tensorboard``
adds event files under ``logs/tensorboard/``; ``mlflow`` adds a run in a local MLflow store: the
SQLite file ``mlflow.db`` at the project root (``RECSYS_MLFLOW_URI`` moves it) with artifacts in
``mlruns/<dataset>/`` beside it, one experiment per dataset. No server and no network are needed;
``make mlflow-ui`` browses the store.

The MLflow run holds the resolved config as params, the per-epoch metrics, the evaluation metrics
(``make evaluate`` adds them) and ``config.yaml``, ``metrics.json`` and ``logs/metrics.csv`` as
artifacts; checkpoints stay in the run folder only (they are the large files, and the folder
already keeps them). The run id is kept in the run folder's ``mlflow.json``, so a resumed run
continues its MLflow run and evaluation finds it.

MLflow is imported only when a run asks for it: the import alone takes seconds.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

from loguru import logger

from recsys.cli import fail
from recsys.config import PROJ_ROOT
from recsys.io import read_json, write_json

LOGGERS = ("csv", "tensorboard", "mlflow")
RUN_FILE = "mlflow.json"
_SQLITE = "sqlite:///"


def tracking_uri() -> str:
    """The MLflow store: ``RECSYS_MLFLOW_URI``, else ``sqlite:///<project>/mlflow.db``."""
    return os.environ.get("RECSYS_MLFLOW_URI") or f"{_SQLITE}{PROJ_ROOT / 'mlflow.db'}"


def artifact_location(uri: str, experiment: str) -> str | None:
    """``mlruns/<experiment>/`` beside a SQLite store; other stores choose their own."""
    if not uri.startswith(_SQLITE):
        return None
    database = Path(uri[len(_SQLITE) :]).expanduser().resolve()
    return (database.parent / "mlruns" / experiment).as_uri()


def mlflow_key(name: str) -> str:
    """MLflow names allow no ``@``: ``val_ndcg@10`` is logged as ``val_ndcg_at_10``."""
    return name.replace("@", "_at_")


def check_logger(kind: str) -> None:
    """Fail before training when the chosen logger is unknown or its package is missing."""
    if kind not in LOGGERS:
        raise fail(f"--logger must be one of {', '.join(LOGGERS)}, got {kind!r}")
    if kind == "tensorboard" and not any(
        importlib.util.find_spec(name) for name in ("tensorboard", "tensorboardX")
    ):
        raise fail("--logger tensorboard: tensorboard is not installed; pip install tensorboard")
    if kind == "mlflow" and importlib.util.find_spec("mlflow") is None:
        raise fail("--logger mlflow: mlflow is not installed; run 'make requirements'")


def make_loggers(kind: str, run_dir: Path, config: dict[str, Any], resume: bool) -> list[Any]:
    """Lightning loggers for ``kind``: always the CSV logger, plus TensorBoard or MLflow."""
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = [CSVLogger(run_dir, name="logs")]
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run_dir, name="logs/tensorboard"))
    elif kind == "mlflow":
        loggers.append(_mlflow_logger(run_dir, config, resume))
    return loggers


def _stored_run(run_dir: Path, uri: str) -> str | None:
    """The MLflow run id of an earlier part of this run, if it is in this store."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        return None
    stored = read_json(path)
    return stored.get("run_id") if stored.get("tracking_uri") == uri else None


def _mlflow_logger(run_dir: Path, config: dict[str, Any], resume: bool) -> Any:
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    class Logger(MLFlowLogger):
        """Lightning's MLflow logger with ``@`` in metric names spelled out, not dropped."""

        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            super().log_metrics({mlflow_key(k): v for k, v in metrics.items()}, step)

    uri, experiment = tracking_uri(), str(config["dataset"])
    run_id = _stored_run(run_dir, uri) if resume else None
    if run_id is not None:
        try:
            MlflowClient(uri).get_run(run_id)
        except MlflowException:
            logger.warning(f"MLflow run {run_id} of {run_dir} is not in {uri}; starting a new one")
            run_id = None
    return Logger(
        experiment_name=experiment,
        run_name=run_dir.name,
        tracking_uri=uri,
        tags={"run_dir": str(run_dir), "config_name": str(config.get("config_name"))},
        artifact_location=artifact_location(uri, experiment),
        run_id=run_id,
    )


def _mlflow(loggers: list[Any]) -> Any:
    from lightning.pytorch.loggers import MLFlowLogger

    return next((lg for lg in loggers if isinstance(lg, MLFlowLogger)), None)


def start(loggers: list[Any], run_dir: Path, config: dict[str, Any]) -> None:
    """Rank zero, before fitting: log the config as params and keep the run id in the folder."""
    tracker = _mlflow(loggers)
    if tracker is None:
        return
    tracker.log_hyperparams(config)
    record = {
        "run_id": tracker.run_id,
        "tracking_uri": tracking_uri(),
        "experiment": str(config["dataset"]),
    }
    write_json(record, run_dir / RUN_FILE)
    logger.info(f"MLflow run {tracker.run_id} in {tracking_uri()}")


def finish(loggers: list[Any], run_dir: Path) -> None:
    """Rank zero, after fitting: the run folder's small files become the run's artifacts."""
    tracker = _mlflow(loggers)
    if tracker is None:
        return
    for name in ("config.yaml", "metrics.json", "logs/metrics.csv"):
        path = run_dir / name
        if path.is_file():
            folder = str(Path(name).parent) if "/" in name else None
            tracker.experiment.log_artifact(tracker.run_id, str(path), folder)


def log_evaluation(run_dir: Path, metrics: dict[str, float]) -> bool:
    """Add evaluation metrics to the MLflow run a training run was tracked in, if it was.

    Returns whether they were logged. Tracking is a copy of the report, so a store that is gone
    only warns: the metrics report is already written.
    """
    path = Path(run_dir) / RUN_FILE
    if not path.is_file() or importlib.util.find_spec("mlflow") is None:
        return False
    stored = read_json(path)
    if not stored.get("run_id") or not stored.get("tracking_uri"):
        return False
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    now = int(time.time() * 1000)
    batch = [Metric(mlflow_key(k), float(v), now, 0) for k, v in metrics.items()]
    try:
        MlflowClient(stored["tracking_uri"]).log_batch(stored["run_id"], metrics=batch)
    except MlflowException as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        logger.warning(f"could not add the evaluation to MLflow run of {run_dir}: {first}")
        return False
    return True
