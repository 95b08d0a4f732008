"""The tuner: a study over a training config's search space on the validation split.

:func:`prepare` checks the base config, the fixed values and the search space before any trial;
:func:`tune` runs trials, each an ordinary training run (:class:`Objective`) that a median pruner
may stop after an epoch (:class:`PruneOnValidation`), until the study holds enough finished
trials; :func:`write_outputs` writes the best trial as a training config, the trials JSON and the
figures. The study's storage is :mod:`recsys.modeling.study_storage`, its search space
:mod:`recsys.modeling.search_space`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from loguru import logger

from recsys.cli import RecsysError, fail
from recsys.config import CONFIGS_DIR, FIGURES_DIR, MODELS_DIR, TUNING_DIR, shown_path
from recsys.io import read_json, read_yaml, write_json, write_text
from recsys.modeling.configs import check_type, config_path, resolve_config, tuned_file
from recsys.modeling.lightning import METRIC
from recsys.modeling.runs import best_val_ndcg
from recsys.modeling.search_space import ParamSpec, file_hash, load_space
from recsys.modeling.study_storage import (
    WORKER_ATTR,
    n_finished,
    open_study,
    requeue_dead_trials,
    sampler_seed,
    worker_name,
)
from recsys.modeling.training import train
from recsys.processed import require_processed

# Imported after recsys.modeling.training, which chooses OMP_WAIT_POLICY before torch loads.
import lightning.pytorch as pl  # noqa: E402
import optuna  # noqa: E402
from optuna.storages import RDBStorage  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


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
    space_option: str | None  # --space as given (None: the config's own search space)
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
        if self.space_option:
            parts.append(f"--space {self.space_option}")
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
        space_option=shown_path(space_path) if space_file else None,
        models_dir=Path(models_dir or MODELS_DIR),
        db=Path(models_dir or MODELS_DIR) / dataset / "tuning" / f"{name}.db",
        tuned_path=tuned_file(dataset, base, configs_root),
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
    return {key: check_type(key, value, "--first") for key, value in values.items()}


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
