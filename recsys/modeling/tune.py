"""``make tune``: search a training config's hyper-parameters on the validation split.

``python -m recsys.modeling.tune --dataset ml-100k --config sasrec-ce --trials 20 --max-epochs 10``

Optuna's TPE sampler (seeded) proposes values from ``configs/search/<config>.yaml``. Each trial is
an ordinary training run in ``models/<dataset>/tuning/<study>/trial-<n>/`` (checkpoints, resume);
its objective is the run's best validation NDCG@10, and a median pruner stops a trial whose
validation NDCG@10 falls below the median of the earlier trials at the same epoch. The tuner never
scores the test split.

The study lives in ``models/<dataset>/tuning/<study>.db`` (SQLite). ``--trials N`` is the number
of finished (complete or pruned) trials the study should hold, so a tuner run again after a kill
does only the rest; a trial left running by a dead tuner is failed and queued again with the same
parameters, and resumes from its run's ``last.ckpt``. Several tuners may share one study; each
seeds its sampler with ``--seed``, the trials already there and its host and process id
(:func:`sampler_seed`), so two started together propose different values.

Tuners on several machines: SQLite relies on file locks that network filesystems (NFS, SMB) do
not honour reliably, so a study ``.db`` shared that way can be corrupted. This tuner opens SQLite
only: keep the ``.db`` on a local disk and run several tuners on that machine. For tuners on
several machines, Optuna's journal storage is the safe choice, an append-only log with its own
lock that works on a network filesystem (``JournalStorage(JournalFileBackend("study.log"))``
from ``optuna.storages`` and ``optuna.storages.journal``); it has no heartbeats, so a trial of a
dead tuner there stays RUNNING until it is failed by hand.

Outputs: the best trial as a training config ``configs/tuned/<dataset>-<config>.yaml``, which
``make train CONFIGS=<config>`` then trains on that dataset (``TRAIN_ARGS=--no-tuned`` does not),
the trials and parameter importances in
``reports/tuning/<dataset>/<study>.json`` and two figures in ``reports/figures/<dataset>/``, which
``make report`` shows on its tuning page.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer
import yaml
from loguru import logger

from recsys.cli import RecsysError, fail, run
from recsys.config import (
    CONFIGS_DIR,
    DEFAULT_DATASET,
    FIGURES_DIR,
    MODELS_DIR,
    PROCESSED_DATA_DIR,
    TUNING_DIR,
    shown_path,
)
from recsys.io import ensure_dir, read_json, read_yaml, write_json, write_text
from recsys.modeling.configs import DEFAULTS, check_type, config_path, parse_sets, resolve_config
from recsys.modeling.lightning import METRIC
from recsys.modeling.runs import best_val_ndcg
from recsys.modeling.training import train
from recsys.options import DatasetOpt, ModelsDirOpt, ProcessedDirOpt
from recsys.processed import require_processed

# Imported after recsys.modeling.training, which sets OMP_WAIT_POLICY before torch loads.
import lightning.pytorch as pl  # noqa: E402
import optuna  # noqa: E402
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)

SPEC_FIELDS = ("low", "high", "log", "step", "choices")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
#: Seconds between a running trial's heartbeats; a trial silent for twice as long is stale.
HEARTBEAT_S = 30
#: How often one trial is queued again after its tuner died before a new one is sampled.
MAX_RETRY = 2
WORKER_ATTR = "worker"

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


# ------------------------------------------------------------------------------ search space
@dataclass(frozen=True)
class ParamSpec:
    """One searched config key: a range ``low..high`` (``log`` or ``step``) or ``choices``."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if _kind(self.key) == "int":
            step = int(self.step or 1)
            return trial.suggest_int(self.key, self.low, self.high, step=step, log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.log)

    def to_dict(self) -> dict[str, Any]:
        """The spec as written in the search-space file (for the report)."""
        spec = {k: v for k, v in asdict(self).items() if k != "key" and v is not None}
        if not self.log:
            del spec["log"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()}


def _kind(key: str) -> str:
    """``int`` or ``float`` for numeric config keys, ``choice`` for the rest (text, bool)."""
    default = DEFAULTS[key]
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return "choice"
    return "int" if isinstance(default, int) else "float"


def _typed(key: str, value: Any, where: str) -> Any:
    """``value`` checked against the type of ``key``'s default (ints for int keys, ...)."""
    try:
        return check_type(key, value, where)
    except RecsysError as err:
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value):
            raise fail(f"{err}; YAML reads {value} as text: write it with a dot, e.g. 1.0e-4")
        raise


def load_space(
    path: Path,
    config: str,
    dataset: str,
    fixed: dict[str, Any] | None = None,
    configs_dir: Path | None = None,
) -> list[ParamSpec]:
    """The search space of ``path``, every value checked against the base ``config``.

    Each bound and choice must resolve as a config on its own (with the ``fixed`` overrides);
    combinations are checked when a trial samples them.
    """
    path = Path(path)
    if not path.is_file():
        raise fail(
            f"search space {path} does not exist; write one (see configs/search/sasrec-ce.yaml) "
            "or pass --space FILE"
        )
    loaded = read_yaml(path, "fix it")
    if not isinstance(loaded, dict) or not loaded:
        raise fail(
            f"search space {path} must map config keys to ranges or choices, e.g. "
            "'lr: {low: 3.0e-4, high: 1.0e-2, log: true}'"
        )
    fixed = dict(fixed or {})
    return [
        _param(path, key, spec, config, dataset, fixed, configs_dir)
        for key, spec in loaded.items()
    ]


def _param(
    path: Path,
    key: str,
    spec: Any,
    config: str,
    dataset: str,
    fixed: dict[str, Any],
    configs_dir: Path | None,
) -> ParamSpec:
    where = f"search space {path}, key {key!r}"
    if key not in DEFAULTS:
        raise fail(f"{where}: not a config key; use one of {', '.join(DEFAULTS)}")
    if key in fixed:
        raise fail(f"{where}: also fixed by --set or --max-epochs; search it or fix it, not both")
    if not isinstance(spec, dict):
        raise fail(
            f"{where}: expected a mapping such as {{low: 1, high: 3}} or {{choices: [a, b]}}, "
            f"got {spec!r}"
        )
    unknown = [field for field in spec if field not in SPEC_FIELDS]
    if unknown:
        raise fail(
            f"{where}: unknown field {', '.join(map(repr, unknown))}; "
            f"a spec has low and high (with log or step) or choices"
        )

    def allowed(value: Any) -> None:
        try:
            resolve_config(config, dataset, {**fixed, key: value}, configs_dir)
        except RecsysError as err:
            raise fail(f"{where}: the value {value!r} is not allowed ({err}); change it") from None

    if "choices" in spec:
        others = [field for field in spec if field != "choices"]
        if others:
            raise fail(f"{where}: choices cannot have {', '.join(others)}; keep one of the two")
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise fail(f"{where}: choices must be a non-empty list, got {choices!r}")
        for value in choices:
            _typed(key, value, f"{where}, choices")
        if len({json.dumps(c) for c in choices}) < len(choices):
            raise fail(f"{where}: choices {choices!r} repeat a value; list each value once")
        for value in choices:
            allowed(value)
        return ParamSpec(key, choices=tuple(choices))
    if _kind(key) == "choice":
        raise fail(
            f"{where}: {key} is not a number (default {DEFAULTS[key]!r}); "
            "list its values with choices: [...]"
        )
    if "low" not in spec or "high" not in spec:
        raise fail(f"{where}: a range needs both low and high (or use choices: [...])")
    low, high = (_typed(key, spec[f], f"{where}, {f}") for f in ("low", "high"))
    step = None if spec.get("step") is None else _typed(key, spec["step"], f"{where}, step")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise fail(f"{where}: log must be true or false, got {log!r}")
    if low >= high:
        raise fail(
            f"{where}: empty range, low {low!r} >= high {high!r}; make low smaller than high "
            "(fix a single value with --set instead)"
        )
    if log and low <= 0:
        raise fail(f"{where}: log: true needs low > 0, got {low!r}")
    if step is not None and (log or step <= 0):
        raise fail(f"{where}: step must be > 0 and cannot be combined with log, got {step!r}")
    allowed(low)
    allowed(high)
    return ParamSpec(key, low, high, log, step)


def file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------ study
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


# ---------------------------------------------------------------------------------- trials
class PruneOnValidation(pl.Callback):
    """Reports each epoch's validation NDCG@10 to the trial; stops the run when pruned."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = getattr(pl_module, "epoch_metrics", {}).get(METRIC)
        if trainer.sanity_checking or value is None:
            return
        epoch = trainer.current_epoch
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"validation NDCG@10 {value:.4f} after epoch {epoch}")


class Objective:
    """One trial = one training run of the base config with the sampled values.

    A trial queued again after its tuner died trains in its original's folder, so the run
    resumes from that folder's ``last.ckpt``. A user error inside a run ends the trial as failed
    and is raised again by :func:`tune` once Optuna has recorded it, as one line.
    """

    def __init__(
        self,
        study: optuna.Study,
        storage: RDBStorage,
        setup: TuneSetup,
        train_kwargs: dict[str, Any],
    ) -> None:
        self.study, self.storage, self.setup = study, storage, setup
        self.study_id = storage.get_study_id_from_name(study.study_name)
        self.train_kwargs = train_kwargs
        self.error: RecsysError | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(
            self.study_id, trial.number
        )
        origin = self.storage.get_trial_system_attrs(trial_id).get("failed_trial", trial.number)
        worker = {"host": socket.gethostname(), "pid": os.getpid(), "trial": trial.number}
        trial.set_user_attr(WORKER_ATTR, worker)
        params = {spec.key: spec.suggest(trial) for spec in self.setup.space}
        try:
            run_dir = train(
                self.setup.dataset,
                str(self.setup.base_path),
                overrides={**self.setup.fixed, **params},
                run_name=f"tuning/{self.setup.name}/trial-{origin}",
                callbacks=[PruneOnValidation(trial)],
                devices="1",
                progress_bar=False,
                **self.train_kwargs,
            )
        except RecsysError as err:
            self.error = err
            return float("nan")  # Optuna records the trial as failed, without a traceback
        summary = read_json(run_dir / "metrics.json")
        trial.set_user_attr("epochs_run", summary.get("epochs_run"))
        trial.set_user_attr("best_epoch", summary.get("best_epoch"))
        return best_val_ndcg(run_dir)


def trial_row(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """One trial as the trials table lists it."""
    reported = list(trial.intermediate_values.values())
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "value": trial.value if trial.state == TrialState.COMPLETE else None,
        "best_reported": max(reported) if reported else None,
        "epochs": trial.user_attrs.get("epochs_run", len(reported)),
        "best_epoch": trial.user_attrs.get("best_epoch"),
        "params": trial.params,
        "retry_of": trial.system_attrs.get("failed_trial"),
        "duration_s": trial.duration.total_seconds() if trial.duration else None,
    }


def param_importances(study: optuna.Study, seed: int) -> tuple[dict[str, float] | None, str]:
    """fANOVA importances of the searched parameters over the complete trials, or why none."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return None, f"importances need at least 2 complete trials; the study has {len(complete)}"
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    try:
        values = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (RuntimeError, ValueError) as err:
        return None, f"importances could not be computed: {err}"
    return {k: float(v) for k, v in values.items()}, ""


# ------------------------------------------------------------------------------------ tune
@dataclass(frozen=True)
class SearchSettings:
    """How the sampler and the pruner work (the tuner's options besides the config)."""

    seed: int = 0
    startup_trials: int = 10  # random trials before TPE models the results
    prune_after: int = 3  # finished trials before the pruner stops any
    prune_warmup: int = 3  # first epochs of a trial that are never pruned

    def check(self) -> None:
        for key, value in asdict(self).items():
            if key != "seed" and value < 0:
                raise fail(f"--{key.replace('_', '-')} must be >= 0, got {value}")

    def options(self) -> list[str]:
        """The command-line options that differ from the defaults."""
        default = asdict(SearchSettings())
        return [
            f"--{key.replace('_', '-')} {value}"
            for key, value in asdict(self).items()
            if value != default[key]
        ]


@dataclass(frozen=True)
class TuneSetup:
    """A study's settings, checked, and where its outputs go."""

    dataset: str
    config: str  # as given: a name in configs/ or a path
    base_path: Path
    name: str
    fixed: dict[str, Any]
    space: list[ParamSpec]
    attrs: dict[str, Any]
    settings: SearchSettings
    trials: int
    models_dir: Path  # the trials' runs go to <models_dir>/<dataset>/tuning/<study>/
    db: Path
    tuned_path: Path
    json_path: Path
    figure_dir: Path

    @property
    def command(self) -> str:
        """The command that continues (or repeats) this study."""
        parts = [f"python -m recsys.modeling.tune --dataset {self.dataset} --config {self.config}"]
        parts.append(f"--study {self.name} --trials {self.trials}")
        parts += [f"--set {key}={_scalar(value)}" for key, value in self.fixed.items()]
        return " ".join(parts + self.settings.options())


def _scalar(value: Any) -> str:
    """A ``--set`` value that reads back as ``value`` (JSON is YAML)."""
    return value if isinstance(value, str) else json.dumps(value)


def prepare(
    dataset: str,
    config: str,
    trials: int,
    study_name: str | None = None,
    max_epochs: int | None = None,
    overrides: dict[str, Any] | None = None,
    space_file: Path | None = None,
    settings: SearchSettings | None = None,
    models_dir: Path | None = None,
    configs_dir: Path | None = None,
    tuning_dir: Path | None = None,
    figures_dir: Path | None = None,
) -> TuneSetup:
    """Check the tuner's inputs (base config, fixed values, search space) before any trial."""
    settings = settings or SearchSettings()
    settings.check()
    if trials < 0:
        raise fail(f"--trials must be >= 0, got {trials}")
    configs_root = Path(configs_dir or CONFIGS_DIR)
    base_path = config_path(config, configs_root)
    base = base_path.stem
    name = study_name or base
    if not STUDY_NAME.fullmatch(name):
        raise fail(f"--study {name!r}: use letters, digits, '.', '_' and '-' (it names a file)")
    fixed = dict(overrides or {})
    if max_epochs is not None:
        fixed["max_epochs"] = max_epochs
    resolved = resolve_config(config, dataset, fixed, configs_root)
    space_path = Path(space_file) if space_file else configs_root / "search" / f"{base}.yaml"
    space = load_space(space_path, config, dataset, fixed, configs_root)
    attrs = {
        "dataset": dataset,
        "base_config": base,
        "space_file": shown_path(space_path),
        "space_hash": file_hash(space_path),
        "fixed": fixed,
        "base_hash": hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest(),
    }
    return TuneSetup(
        dataset=dataset,
        config=config,
        base_path=base_path,
        name=name,
        fixed=fixed,
        space=space,
        attrs=attrs,
        settings=settings,
        trials=trials,
        models_dir=Path(models_dir or MODELS_DIR),
        db=Path(models_dir or MODELS_DIR) / dataset / "tuning" / f"{name}.db",
        tuned_path=configs_root / "tuned" / f"{dataset}-{base}.yaml",
        json_path=Path(tuning_dir or TUNING_DIR) / dataset / f"{name}.json",
        figure_dir=Path(figures_dir or FIGURES_DIR) / dataset,
    )


def first_trial(setup: TuneSetup, values: dict[str, Any]) -> dict[str, Any]:
    """``--first`` values (a known good config, e.g. a published recipe), checked against the
    search space: every key searched, every value of its key's type."""
    searched = {spec.key for spec in setup.space}
    for key in values:
        if key not in searched:
            raise fail(
                f"--first {key}: not a key of the search space {setup.attrs['space_file']}; "
                f"choose from {', '.join(sorted(searched))}"
            )
    return {key: _typed(key, value, "--first") for key, value in values.items()}


def tune(
    setup: TuneSetup,
    timeout: float | None = None,
    accelerator: str = "auto",
    processed_root: Path | None = None,
    first: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the study until it holds ``setup.trials`` finished trials, or until ``timeout``
    seconds have passed (no trial starts after that; a running one finishes), then write the
    tuned config, the trials JSON and the figures. Returns what the JSON holds.

    ``first``: values of a new study's first trial (the sampler proposes the keys it leaves out
    and every later trial), so a known good config is always among the candidates."""
    if timeout is not None and timeout <= 0:
        raise fail(f"--timeout must be > 0 seconds, got {timeout}")
    first = first_trial(setup, first or {})
    require_processed(setup.dataset, processed_root)  # before the study and its first trial
    settings = setup.settings
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=settings.prune_after, n_warmup_steps=settings.prune_warmup
    )
    study, storage = open_study(setup.db, setup.name, setup.attrs, pruner)
    if first and not study.get_trials(deepcopy=False):
        study.enqueue_trial(first)
    seed = sampler_seed(settings.seed, len(study.get_trials(deepcopy=False)), worker_name())
    logger.info(f"sampler seed {seed} (--seed {settings.seed}, this tuner's host and process)")
    study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.startup_trials)
    train_kwargs = {
        "accelerator": accelerator,
        "processed_root": processed_root,
        "models_dir": setup.models_dir,
    }
    objective = Objective(study, storage, setup, train_kwargs)
    deadline = None if timeout is None else time.monotonic() + timeout
    logger.info(f"study {setup.name}: {n_finished(study)} of {setup.trials} trials finished")
    while n_finished(study) < setup.trials:
        requeue_dead_trials(study, storage)
        if deadline is not None and time.monotonic() >= deadline:
            logger.info(f"--timeout {timeout:g} s reached; run the tuner again to continue")
            break
        study.optimize(objective, n_trials=1, gc_after_trial=True)
        if objective.error is not None:
            raise objective.error
    return write_outputs(study, setup)


def tuned_config_text(setup: TuneSetup, best: optuna.trial.FrozenTrial, header: list[str]) -> str:
    """The base config file's keys, then the tuner's fixed values and the best trial's values."""
    base = read_yaml(setup.base_path, "fix it") or {}
    comments = "".join(f"# {line}\n" for line in header)
    values = {"dataset": setup.dataset, **base, **setup.fixed, **best.params}
    return comments + yaml.safe_dump(values, sort_keys=False)


def write_outputs(study: optuna.Study, setup: TuneSetup) -> dict[str, Any]:
    """The tuned config (once a trial has completed), the trials JSON and the figures."""
    from recsys.figures import plot_param_importances, plot_tuning_history, save_figure

    frozen = study.get_trials(deepcopy=False)
    if not frozen:
        raise fail(f"study {setup.name!r} in {setup.db} has no trials yet; run with --trials N")
    rows = [trial_row(t) for t in frozen]
    complete = [t for t in frozen if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    importances, importance_note = param_importances(study, setup.settings.seed)
    figures = {"history": f"tuning-{setup.name}-history"}
    save_figure(plot_tuning_history(rows), setup.figure_dir, figures["history"])
    if importances:
        figures["importance"] = f"tuning-{setup.name}-importance"
        save_figure(plot_param_importances(importances), setup.figure_dir, figures["importance"])
    tuned = train_command = None
    if best is not None:
        header = [
            f"GENERATED by `{setup.command}`; edits are overwritten.",
            f"The best of {len(complete)} complete trials of study {setup.name!r} "
            f"({shown_path(setup.db)}): trial {best.number},",
            f"validation NDCG@10 {best.value:.4f}. Below: the base config, the tuner's fixed "
            "values and that trial's",
            "values; training this file runs the trial's config again (same seed).",
        ]
        write_text(tuned_config_text(setup, best, header), setup.tuned_path)
        tuned = shown_path(setup.tuned_path)
        logger.info(f"best trial {best.number}: val NDCG@10 {best.value:.4f}; wrote {tuned}")
        if setup.tuned_path.parent.parent.resolve() == CONFIGS_DIR.resolve():
            # make train picks configs/tuned/<dataset>-<config>.yaml for the config's name
            train_command = (
                f"make train DATASET={setup.dataset} CONFIGS={setup.attrs['base_config']}"
            )
        else:
            train_command = (
                f"python -m recsys.modeling.train --dataset {setup.dataset} --config {tuned}"
            )
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    settings = setup.settings
    summary = {
        "study": setup.name,
        **{k: setup.attrs[k] for k in ("dataset", "base_config", "space_file", "fixed")},
        "storage": shown_path(setup.db),
        "metric": METRIC,
        "command": setup.command,
        "target_trials": setup.trials,
        "sampler": (
            f"TPE, seed {settings.seed} mixed with each tuner's host and process id, the first "
            f"{settings.startup_trials} trials random"
        ),
        "pruner": (
            "stops a trial whose validation NDCG@10 is below the median of the earlier trials "
            f"at the same epoch, from epoch {settings.prune_warmup} (counting from 0) on, once "
            f"{settings.prune_after} trials have finished"
        ),
        "space": {spec.key: spec.to_dict() for spec in setup.space},
        "counts": counts,
        "best": (
            None
            if best is None
            else {"number": best.number, "value": best.value, "params": best.params}
        ),
        "tuned_config": tuned,
        "train_command": train_command,
        "importances": importances,
        "importance_note": importance_note,
        "figures": figures,
        "trials": rows,
    }
    write_json(summary, setup.json_path)
    logger.info(f"wrote {setup.json_path}")
    return summary


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
