"""The sections of the metrics report, and its files: every candidate ranked the same way, in
batches of users by :mod:`recsys.modeling.scoring`, its per-user metrics given bootstrap intervals
over users, and the best trained run compared with the best baseline by a paired bootstrap on the
same test users (:mod:`recsys.modeling.significance`).

A generative run (``item_repr: semantic``) scores the items its beam search generates, with their
log-probabilities, and every other item -inf: a target outside the beams is a miss, and its
metrics at K above the beam size are left blank.

Cold start: the held-out items leave training by cutting each training sequence where they were
(:func:`recsys.processed.train_pieces`), for trained runs and baselines alike. At test time every
model reads the same, whole history, cold items included: that is what a deployed model would see,
and text models can read those items. Id models and baselines take the ids they never trained on
without harm (an untrained embedding row, a row of zero co-occurrences), so stripping them would
only hide information from the models that can use it.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger

from recsys.cli import fail
from recsys.config import METRICS_DIR
from recsys.io import read_json, write_json, write_text
from recsys.modeling import metrics
from recsys.modeling.candidates import Candidate
from recsys.modeling.evaluation_data import (
    SPLITS,
    UserSample,
    split_examples,
    training_popularity,
    usable_ks,
)
from recsys.modeling.metric_summary import CONFIDENCE, MAIN_METRIC, per_user, summarize
from recsys.modeling.report_markdown import render_markdown
from recsys.modeling.scoring import BATCH_SIZE, Ranked, rank_examples
from recsys.modeling.seed_groups import config_groups, group_names, per_user_mean, seed_row
from recsys.modeling.significance import against_reference, generative_test, significance
from recsys.processed import EvalExamples, ProcessedData


def _timed_rank(candidate: Candidate, examples: EvalExamples, n_items: int, **kwargs) -> Ranked:
    start = time.perf_counter()
    ranked = rank_examples(candidate.scorer, examples, n_items, **kwargs)
    logger.info(
        f"{candidate.name}: ranked {len(examples.targets)} users in "
        f"{time.perf_counter() - start:.2f} s"
    )
    return ranked


def split_kind(stats: dict[str, Any]) -> str:
    """The split protocol's name, from stats.json's ``{"split": {"kind": ...}}``."""
    return str(stats.get("split", {}).get("kind", "unknown"))


def report_header(
    data: ProcessedData,
    n_users: int,
    keep_history: bool,
    n_bootstrap: int,
    sample: UserSample | None = None,
    skipped: list[dict[str, str]] | None = None,
) -> dict:
    """What was evaluated how: ``user_sample`` is None when every test user was scored."""
    return {
        "dataset": data.name,
        "split": split_kind(data.stats),
        "n_users": n_users,
        "user_sample": None if sample is None else sample.as_dict(),
        "n_items": data.n_items,
        "ks": list(usable_ks(data.n_items)),
        "history_masked": not keep_history,
        "bootstrap": {"samples": n_bootstrap, "confidence": CONFIDENCE},
        "skipped": list(skipped or []),
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def candidate_row(
    cand: Candidate,
    ranked: dict[str, Ranked],
    popularity: torch.Tensor,
    n_items: int,
    ks: tuple[int, ...],
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """One model's row: what it is, and every metric on each split."""
    row: dict[str, Any] = {
        "name": cand.name,
        "kind": cand.kind,
        "run": cand.run,
        "item_repr": cand.item_repr,
        "n_params": cand.n_params,
        "max_k": cand.max_k,
        "params": cand.params,
    }
    for split in SPLITS:
        found = summarize(ranked[split], popularity, n_items, ks, n_bootstrap, seed)
        row[split] = within_k(found, cand.max_k)
    return row


def within_k(entries: dict[str, dict[str, Any]], max_k: int | None) -> dict[str, dict[str, Any]]:
    """Blank every metric at a K above ``max_k``: a generative run's list is its beams, so its
    figures there would count the items it never generated as misses."""
    if max_k is None:
        return entries
    blank = metrics.Interval(None, None, None).as_dict()
    return {
        key: blank if int(key.rpartition("@")[2]) > max_k else entry
        for key, entry in entries.items()
    }


def evaluate_main(
    data: ProcessedData,
    candidates: list[Candidate],
    *,
    keep_history: bool = False,
    n_bootstrap: int = 1000,
    batch_size: int = BATCH_SIZE,
    device: torch.device | str | None = None,
    seed: int = 0,
    sample: UserSample | None = None,
    skipped: list[dict[str, str]] | None = None,
    cpu_threads: int | None = 1,
) -> dict[str, Any]:
    """The main report: every config (mean over its seeds) and baseline on valid and test, each
    trained run on its own (``per_seed``), and the significance test; on the ``sample``'s users
    only when there is one. ``skipped``: the baselines left out, for the header."""
    ks = usable_ks(data.n_items)
    popularity = training_popularity(data)
    examples = {split: split_examples(data, split, sample) for split in SPLITS}
    options = dict(
        keep_history=keep_history,
        k_max=max(ks),
        batch_size=batch_size,
        device=device,
        cpu_threads=cpu_threads,
    )
    groups = config_groups(candidates)
    rows, per_seed, test_values = [], [], {}
    for name, members in zip(group_names(groups), groups):
        # One group at a time: only its members' ranks are held in memory.
        ranked = [
            {split: _timed_rank(c, examples[split], data.n_items, **options) for split in SPLITS}
            for c in members
        ]
        member_rows = [
            candidate_row(c, r, popularity, data.n_items, ks, n_bootstrap, seed)
            for c, r in zip(members, ranked)
        ]
        if len(members) == 1:
            row = dict(member_rows[0])
        else:
            row = seed_row(name, member_rows, ranked, popularity, n_bootstrap, seed)
        trained = members[0].kind == "trained"
        seeds = [(c.config or {}).get("seed") for c in members] if trained else []
        row.update(
            n_seeds=len(members) if trained else None,
            seeds=seeds,
            runs=[c.name for c in members] if trained else [],
            config_name=(members[0].config or {}).get("config_name") if trained else None,
        )
        rows.append(row)
        test_values[name] = per_user_mean([r["test"] for r in ranked], MAIN_METRIC, popularity)
        if trained:
            per_seed += [{**r, "config": name, "seed": s} for r, s in zip(member_rows, seeds)]
    n_test = len(examples["test"].targets)
    report = report_header(data, n_test, keep_history, n_bootstrap, sample, skipped)
    report["models"] = rows
    report["per_seed"] = per_seed
    report["significance"] = significance(rows, test_values, n_bootstrap, seed)
    report["generative"] = generative_test(rows, test_values, n_bootstrap, seed)
    report["against_reference"] = against_reference(rows, test_values, n_bootstrap, seed)
    report["cold_start"] = None
    return report


def log_tracked_runs(report: dict[str, Any]) -> None:
    """Add each trained run's valid and test metrics to its MLflow run, where it has one."""
    from recsys.modeling import tracking

    for row in report.get("per_seed") or []:
        values = {
            f"{split}_{key}": entry["value"]
            for split in SPLITS
            for key, entry in row[split].items()
            if entry and entry.get("value") is not None
        }
        if row.get("run") and tracking.log_evaluation(Path(row["run"]), values):
            logger.info(f"added the evaluation of {row['name']} to its MLflow run")


def evaluate_cold(
    data: ProcessedData,
    candidates: list[Candidate],
    cold: np.ndarray,
    fraction: float,
    *,
    keep_history: bool = False,
    n_bootstrap: int = 1000,
    batch_size: int = BATCH_SIZE,
    device: torch.device | str | None = None,
    seed: int = 0,
    sample: UserSample | None = None,
    skipped: list[dict[str, str]] | None = None,
    cpu_threads: int | None = 1,
) -> dict[str, Any]:
    """HR@10 / NDCG@10 on the test events whose target is a cold item (of the ``sample``'s
    users when there is one; ``skipped``: the baselines left out).

    Every candidate reads the same whole histories, cold items kept (see the module docstring).
    """
    examples = split_examples(data, "test", sample)
    keep = np.isin(examples.targets, cold)
    if not keep.any():
        whose, hint = ("sampled ", " or more --sample-users") if sample else ("", "")
        raise fail(
            f"no {whose}test event of {data.name!r} has a cold target at --cold-items "
            f"{fraction}; use a larger fraction{hint}"
        )
    cold_examples = examples.take(keep)
    k = 10
    rows = []
    for cand in candidates:
        ranked = _timed_rank(
            cand,
            cold_examples,
            data.n_items,
            keep_history=keep_history,
            k_max=k,
            batch_size=batch_size,
            device=device,
            cpu_threads=cpu_threads,
        )
        row = {
            "name": cand.name,
            "item_repr": cand.item_repr,
            "can_score_cold": cand.can_score_cold,
            "params": cand.params,
        }
        for metric in ("hr", "ndcg"):
            values = per_user(ranked, metric, k)
            interval = metrics.bootstrap_ci(values, n_bootstrap, CONFIDENCE, seed)
            row[f"{metric}@{k}"] = interval.as_dict()
        rows.append(row)
    return {
        "fraction": fraction,
        "n_cold_items": int(len(cold)),
        "n_test_events": int(keep.sum()),
        "user_sample": None if sample is None else sample.as_dict(),
        "skipped": list(skipped or []),
        "models": rows,
    }


def merge_cold(existing: dict[str, Any] | None, cold_section: dict, header: dict) -> dict:
    """Put the cold-start section into an existing report, keeping its main results."""
    report = dict(existing) if existing else {**header, "models": [], "significance": None}
    report["cold_start"] = cold_section
    return report


def compatible(existing: dict[str, Any] | None, data: ProcessedData) -> bool:
    """Whether an earlier report describes the same processed data (so sections can merge)."""
    return bool(
        existing
        and existing.get("dataset") == data.name
        and existing.get("n_items") == data.n_items
    )


def write_report(report: dict[str, Any], metrics_dir: Path | None = None) -> Path:
    """Write ``<dataset>.json`` and ``<dataset>.md`` atomically; returns the JSON path."""
    folder = Path(metrics_dir or METRICS_DIR)
    path = write_json(report, folder / f"{report['dataset']}.json")
    write_text(render_markdown(report), folder / f"{report['dataset']}.md")
    return path


def read_existing(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.exists() else None
