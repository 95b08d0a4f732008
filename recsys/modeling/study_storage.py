"""A tuning study's storage, shared by the tuners that run it.

The study lives in ``models/<dataset>/tuning/<study>.db`` (SQLite), its user attrs recording the
settings it was made with (a tuner with other settings is refused). Running trials send
heartbeats; a trial left running by a dead tuner is failed and queued again with the same
parameters. Several tuners may share one study; each seeds its sampler with ``--seed``, the trials
already there and its host and process id (:func:`sampler_seed`), so two started together propose
different values.

Tuners on several machines: SQLite relies on file locks that network filesystems (NFS, SMB) do
not honour reliably, so a study ``.db`` shared that way can be corrupted. This tuner opens SQLite
only: keep the ``.db`` on a local disk and run several tuners on that machine. For tuners on
several machines, Optuna's journal storage is the safe choice, an append-only log with its own
lock that works on a network filesystem (``JournalStorage(JournalFileBackend("study.log"))``
from ``optuna.storages`` and ``optuna.storages.journal``); it has no heartbeats, so a trial of a
dead tuner there stays RUNNING until it is failed by hand.
"""

from __future__ import annotations

import hashlib
import os
import socket
import warnings
from pathlib import Path
from typing import Any

import optuna
from loguru import logger
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from recsys.cli import fail
from recsys.io import ensure_dir

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: Seconds between a running trial's heartbeats; a trial silent for twice as long is stale.
HEARTBEAT_S = 30
#: How often one trial is queued again after its tuner died before a new one is sampled.
MAX_RETRY = 2
WORKER_ATTR = "worker"

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_study(
    db: Path,
    name: str,
    attrs: dict[str, Any],
    pruner: optuna.pruners.BasePruner | None = None,
    heartbeat_s: int = HEARTBEAT_S,
) -> tuple[optuna.Study, RDBStorage]:
    """Create or load study ``name`` in SQLite file ``db``; its user attrs must match ``attrs``.

    Running trials send heartbeats; a trial whose tuner died is failed and queued again with the
    same parameters (and the intermediate values it reported).
    """
    from sqlalchemy.exc import SQLAlchemyError

    ensure_dir(Path(db).parent)
    retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY, inherit_intermediate_values=True)
    try:
        storage = RDBStorage(
            f"sqlite:///{Path(db).resolve()}",
            engine_kwargs={"connect_args": {"timeout": 60}},
            heartbeat_interval=heartbeat_s,
            heartbeat_stale_trial_callback=retry,
        )
        names = optuna.get_all_study_names(storage)
        if names and name not in names:
            raise fail(
                f"{db} holds the study {', '.join(map(repr, names))}, not {name!r}; "
                f"rename the file back or pass --study {names[0]}"
            )
        study = optuna.create_study(
            storage=storage,
            study_name=name,
            direction="maximize",
            pruner=pruner,
            load_if_exists=True,
        )
    except (SQLAlchemyError, RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise fail(f"{db} is not a readable study database ({first}); delete it or use --study")
    _check_attrs(study, db, attrs)
    return study, storage


_ATTR_LABELS = {
    "dataset": "dataset",
    "base_config": "base config",
    "space_hash": "search space file contents",
    "base_hash": "base config values (the config file, --set and --max-epochs)",
}


def _check_attrs(study: optuna.Study, db: Path, attrs: dict[str, Any]) -> None:
    saved = study.user_attrs
    if not saved:
        if study.get_trials(deepcopy=False):
            raise fail(
                f"{db} holds trials that this tuner did not write; delete it or use --study"
            )
        for key, value in attrs.items():
            study.set_user_attr(key, value)
        return
    for key, label in _ATTR_LABELS.items():
        if saved.get(key) != attrs[key]:
            shown = "" if key.endswith("hash") else f" ({saved.get(key)!r}, not {attrs[key]!r})"
            raise fail(
                f"study {study.study_name!r} in {db} was made with another {label}{shown}; "
                f"tune with its settings, pass another --study, or delete {db}"
            )


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def requeue_dead_trials(study: optuna.Study, storage: RDBStorage) -> list[int]:
    """Trials left RUNNING by a tuner process of this machine that no longer exists (kill -9,
    Ctrl-C during training): failed and queued again now, not after the heartbeat grace period
    (which covers tuners on other machines). Returns the numbers of the trials it failed."""
    study_id = storage.get_study_id_from_name(study.study_name)
    retry = storage.get_heartbeat_stale_trial_callback()
    host, failed = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR) or {}
        # A queued retry copies its original's attrs: only the trial's own record counts.
        if worker.get("trial") != trial.number or worker.get("host") != host:
            continue
        if _alive(worker.get("pid")):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(trial.number)
                retry(study, storage.get_trial(trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another tuner got there first
    if failed:
        logger.info(f"trials {failed} were left running by a tuner that died; queued again")
    return failed


def worker_name() -> str:
    """This tuner among those sharing a study: its host and process id."""
    return f"{socket.gethostname()}:{os.getpid()}"


def sampler_seed(seed: int, n_trials: int, worker: str) -> int:
    """The TPE sampler's seed for one tuner process.

    ``seed`` is ``--seed``; ``n_trials``, the trials the study already holds, keeps a resumed
    tuner from replaying its earlier proposals; ``worker`` keeps two tuners started together on
    one study from proposing the same values in lockstep. So proposals are not reproducible from
    ``--seed`` alone: what reproduces is a trial, whose parameters the study and the trials JSON
    keep, and whose training seed is its config's.
    """
    digest = hashlib.sha256(f"{seed}/{n_trials}/{worker}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def n_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))
