"""``python -m recsys.modeling.evaluate``: trained runs and baselines, ranked the same way.

Every model (trained run or baseline) is a *scorer*, ranked by :mod:`recsys.modeling.scoring`
in batches of users (memory grows with batch x catalogue, never with users x items). This module
keeps the report: per-user metrics get bootstrap intervals over users, and the best trained run
is compared with the best baseline by a paired bootstrap on the same test users.

Large catalogues: baselines that cannot fit are skipped and the report says why (EASE's dense
item x item matrix above ``--max-dense-items``, :data:`recsys.modeling.baselines.MAX_DENSE_ITEMS`
by default), and ``--sample-users N`` scores a seeded random sample of N test users, the same for
every model and split, for a fast estimate whose intervals are those of the sample.

Runs of one config trained with several seeds (``make train SEEDS=42,1,2``) form one row: the mean
over the seeds, their spread (sample std, min, max), and the bootstrap interval of the mean model
(each user's metric averaged over the seeds, then users resampled). Each run's own row stays in
the report's ``per_seed`` list, and runs tracked in MLflow get their metrics added there.

A generative run (``item_repr: semantic``) scores the items its beam search generates, with their
log-probabilities, and every other item -inf: a target outside the beams is a miss, and its
metrics at K above the beam size are left blank. It is compared with ``sasrec-ce`` by the same
paired test (``generative`` in the report).

Baselines: fitted with the settings chosen on validation in
``configs/tuned/<dataset>-baselines.yaml`` where that file exists (``--tune-baselines`` writes it
first, :mod:`recsys.modeling.baseline_tuning`), else with their defaults; the report records
which file and each baseline's settings (``params``).

Output: ``reports/metrics/<dataset>.json`` (read by plots and report) and ``<dataset>.md``.
``--cold-items F`` adds (or replaces) only the ``cold_start`` section of that file.

Cold start: the held-out items leave training by cutting each training sequence where they were
(:func:`recsys.processed.train_pieces`), for trained runs and baselines alike. At test time every
model reads the same, whole history, cold items included: that is what a deployed model would see,
and text models can read those items. Id models and baselines take the ids they never trained on
without harm (an untrained embedding row, a row of zero co-occurrences), so stripping them would
only hide information from the models that can use it.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
from loguru import logger

from recsys.cli import fail, run
from recsys.config import (
    DEFAULT_DATASET,
    METRICS_DIR,
    MODELS_DIR,
    PROCESSED_DATA_DIR,
    shown_path,
)
from recsys.io import read_json, write_json, write_text
from recsys.modeling import metrics
from recsys.modeling.baseline_tuning import (
    GRIDS,
    point_label,
    read_tuned,
    tune_baselines,
    write_tuned,
)
from recsys.modeling.baselines import MAX_DENSE_ITEMS, fit_baselines, too_large
from recsys.modeling.model import COLD_CAPABLE, SemanticDecoder
from recsys.processed import (
    TRAIN,
    EvalExamples,
    ProcessedData,
    cold_item_set,
    eval_examples,
    load_processed,
    train_pieces,
)
from recsys.devices import resolve_device
from recsys.modeling.scoring import BATCH_SIZE, Ranked, rank_examples
from recsys.options import DatasetOpt, DeviceOpt, MetricsOutDirOpt, ModelsDirOpt, ProcessedDirOpt

SPLITS = ("valid", "test")
CONFIDENCE = 0.95
MAIN_METRIC = "ndcg@10"
#: Names of the metrics of the target's rank among sampled negatives, not the full catalogue.
SAMPLED_PREFIX = "sampled_"
#: The run-name suffix ``make train SEEDS=...`` adds; a config's row drops it.
SEED_SUFFIX = re.compile(r"-seed\d+$")
#: The scoring config a generative one is compared with, on the same users.
REFERENCE_CONFIG = "sasrec-ce"

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)


@dataclass
class Candidate:
    """A model to evaluate and how to describe it in the report."""

    name: str
    kind: str  # "trained" | "baseline"
    scorer: Any
    run: str | None = None
    item_repr: str | None = None
    n_params: int | None = None
    config: dict[str, Any] | None = None
    #: The largest K its metrics can be reported at: a generative run ranks its beams only.
    max_k: int | None = None
    #: A baseline's settings (``{"l2": 500.0}``); None for a trained run (see ``config``).
    params: dict[str, Any] | None = None

    @property
    def can_score_cold(self) -> bool:
        return self.kind == "trained" and self.item_repr in COLD_CAPABLE


def per_user(ranked: Ranked, metric: str, k: int) -> torch.Tensor:
    """One rank metric (``hr``, ``recall``, ``ndcg``, ``mrr``, ``map``) per user; with the
    ``sampled_`` prefix, of the target's rank among the user's sampled negatives."""
    if metric.startswith(SAMPLED_PREFIX):
        if ranked.sampled_ranks is None:
            raise ValueError("these ranks were computed without sampled negatives")
        return metrics.RANK_METRICS[metric.removeprefix(SAMPLED_PREFIX)](ranked.sampled_ranks, k)
    return metrics.RANK_METRICS[metric](ranked.ranks, k)


def summarize(
    ranked: Ranked,
    popularity_pct: torch.Tensor,
    n_items: int,
    ks: tuple[int, ...],
    n_bootstrap: int,
    seed: int = 0,
) -> dict[str, dict[str, float | None]]:
    """Every metric at every K with its bootstrap interval, keyed like ``ndcg@10``, then the
    sampled-negatives metrics (``sampled_ndcg@10``) when the ranks have them.

    Every mean is resampled with the same draws, all at once (:func:`metrics.bootstrap_cis`).
    """
    means: dict[str, torch.Tensor] = {}
    for k in ks:
        for name in metrics.RANK_METRICS:
            means[f"{name}@{k}"] = per_user(ranked, name, k)
        means[f"popularity@{k}"] = metrics.mean_popularity_at_k(
            ranked.top_items, k, popularity_pct
        )
    if ranked.sampled_ranks is not None:
        for name, k in metrics.SAMPLED_METRICS:
            means[f"{SAMPLED_PREFIX}{name}@{k}"] = per_user(ranked, SAMPLED_PREFIX + name, k)
    intervals = metrics.bootstrap_cis(list(means.values()), n_bootstrap, CONFIDENCE, seed)
    found = {key: ci.as_dict() for key, ci in zip(means, intervals)}
    out: dict[str, dict[str, float | None]] = {}
    for k in ks:
        out.update({f"{name}@{k}": found[f"{name}@{k}"] for name in metrics.RANK_METRICS})
        coverage = metrics.coverage_ci(ranked.top_items, k, n_items, n_bootstrap, CONFIDENCE, seed)
        out[f"coverage@{k}"] = coverage.as_dict()
        out[f"popularity@{k}"] = found[f"popularity@{k}"]
    out.update({key: entry for key, entry in found.items() if key.startswith(SAMPLED_PREFIX)})
    return out


# ----------------------------------------------------------------------------- the models


def load_trained(
    run_dir: Path,
    dataset: str,
    device: torch.device | str = "cpu",
    processed_root: Path | None = None,
) -> Candidate:
    """A trained run as a candidate; a run of another dataset is a user error."""
    from recsys.modeling.runs import load_trained_run

    trained = load_trained_run(Path(run_dir), device=str(device))
    if trained.dataset != dataset:
        raise fail(
            f"run {run_dir} was trained on {trained.dataset!r}, not {dataset!r}; "
            f"pick a run under models/{dataset}/ or pass --dataset {trained.dataset}"
        )
    model = trained.model
    generative = isinstance(model, SemanticDecoder)
    if generative:
        check_trie(run_dir, trained.config, model, processed_root)
    return Candidate(
        name=Path(run_dir).name,
        kind="trained",
        scorer=model,
        run=str(run_dir),
        item_repr=trained.config.get("item_repr", getattr(model.config, "item_repr", None)),
        n_params=model.n_params(),
        config=trained.config,
        max_k=model.config.beam_size if generative else None,
    )


def check_trie(
    run_dir: Path, config: dict[str, Any], model: SemanticDecoder, processed_root: Path | None
) -> None:
    """A generative run may only rank the data whose semantic IDs it was trained on: the same
    code for the same item, else its trie names other items."""
    from recsys.modeling.configs import semantic_ids_slug
    from recsys.semantic_ids import load_semantic_ids

    dataset = config["dataset"]
    ids, _ = load_semantic_ids(dataset, semantic_ids_slug(config), processed_root)
    if not torch.equal(torch.from_numpy(ids), model.item_codes.cpu()):
        raise fail(
            f"run {run_dir} was trained on other semantic IDs than those of {dataset} now "
            f"({semantic_ids_slug(config)}); retrain it with 'make train DATASET={dataset}'"
        )


def trained_candidates(
    dataset: str,
    models_dir: Path | None,
    cold_items: float,
    device: torch.device | str,
    processed_root: Path | None = None,
) -> list[Candidate]:
    """Trained runs of ``dataset`` whose cold-start fraction equals ``cold_items``."""
    from recsys.modeling.runs import cold_fraction, list_runs

    runs = [p for p in list_runs(dataset, models_dir) if cold_fraction(p) == cold_items]
    return [load_trained(p, dataset, device, processed_root) for p in runs]


def baseline_candidates(
    data: ProcessedData,
    cold: np.ndarray | None = None,
    max_dense_items: int = MAX_DENSE_ITEMS,
    settings: dict[str, dict[str, Any]] | None = None,
) -> list[Candidate]:
    """The baselines, fitted on the training split, cut at the cold items as training is, with
    their ``settings`` by name where given (else their defaults); those too large for the
    catalogue (:func:`recsys.modeling.baselines.too_large`) are left out."""
    sequences = train_pieces(data.events, cold)
    fitted = fit_baselines(sequences, data.n_items, data.n_catalogue, max_dense_items, settings)
    return [
        Candidate(name=n, kind="baseline", scorer=b, params=b.settings())
        for n, b in fitted.items()
    ]


def tune_baseline_settings(
    data: ProcessedData,
    max_dense_items: int = MAX_DENSE_ITEMS,
    batch_size: int = BATCH_SIZE,
    device: torch.device | str | None = None,
    configs_dir: Path | None = None,
) -> Path:
    """Choose the tunable baselines' settings on the validation split and store them; returns
    the file. Fitted on the whole training split and scored on every validation user, even for
    a cold-start or sampled evaluation: the file serves every later evaluation of the dataset."""
    skipped = too_large(data.n_items, max_dense_items)
    tuned = tune_baselines(
        train_pieces(data.events),
        split_examples(data, "valid"),
        data.n_items,
        data.n_catalogue,
        [name for name in GRIDS if name not in skipped],
        batch_size=batch_size,
        device=device,
    )
    return write_tuned(data.name, tuned, configs_dir)


def baseline_settings(
    dataset: str, configs_dir: Path | None = None
) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """The stored file (as the report shows it) and the settings chosen on validation, or
    no file and no settings (the defaults); logged either way."""
    path, settings = read_tuned(dataset, configs_dir)
    if path is None:
        logger.info(
            f"baselines: default settings; make tune-baselines DATASET={dataset} chooses them "
            "on validation"
        )
        return None, {}
    shown = "; ".join(f"{name} {point_label(s)}" for name, s in settings.items())
    logger.info(f"baselines: the settings chosen on validation in {path}: {shown}")
    return shown_path(path), settings


def skipped_baselines(n_items: int, max_dense_items: int) -> list[dict[str, str]]:
    """The report's ``skipped`` entries: each baseline too large to fit, with why (logged)."""
    if max_dense_items < 1:
        raise fail(f"--max-dense-items must be >= 1, got {max_dense_items}")
    skipped = [{"name": n, "reason": r} for n, r in too_large(n_items, max_dense_items).items()]
    for entry in skipped:
        logger.warning(f"skipping baseline {entry['name']}: {entry['reason']}")
    return skipped


def cold_seed(trained: list[Candidate]) -> int:
    """The seed that drew the runs' cold items (their config's ``cold_seed``)."""
    from recsys.modeling.configs import DEFAULTS

    default = DEFAULTS["cold_seed"]
    seeds = sorted({int(c.config.get("cold_seed", default)) for c in trained if c.config})
    if len(seeds) > 1:
        raise fail(
            f"the cold-start runs were trained with different cold_seed values {seeds}, so their "
            "cold item sets differ; retrain them with one cold_seed or evaluate them from "
            "separate --models-dir"
        )
    return seeds[0] if seeds else int(default)


def require_trained(candidates: list[Candidate], dataset: str, cold_items: float) -> None:
    if candidates:
        return
    train_hint = f" TRAIN_ARGS='--set cold_items={cold_items}'" if cold_items else ""
    raise fail(
        f"no trained run for {dataset!r}"
        + (f" with cold_items={cold_items}" if cold_items else "")
        + f"; run 'make train DATASET={dataset}{train_hint}' first, "
        "or pass --baselines-only to evaluate the baselines alone"
    )


# ---------------------------------------------------------------------------- evaluation


def training_popularity(data: ProcessedData) -> torch.Tensor:
    """Popularity percentile of items ``0..n_items`` from training-split counts."""
    train_items = data.events.loc[data.events["split"] == TRAIN, "item_idx"].to_numpy()
    counts = np.bincount(train_items, minlength=data.n_items + 1)[: data.n_items + 1]
    return metrics.popularity_percentiles(torch.from_numpy(counts))


def usable_ks(n_items: int) -> tuple[int, ...]:
    ks = tuple(k for k in metrics.KS if k <= n_items)
    if not ks:
        raise fail(f"the catalogue has {n_items} items, fewer than the smallest K {metrics.KS[0]}")
    return ks


def split_examples(
    data: ProcessedData, split: str, sample: UserSample | None = None
) -> EvalExamples:
    """A split's examples, of the sampled users only when there is a ``sample``."""
    examples = eval_examples(data.events, split)
    if not len(examples.targets):
        raise fail(
            f"processed {data.name!r} has no {split} events; re-run "
            f"'make data DATASET={data.name}' with a split that holds some out"
        )
    if sample is None:
        return examples
    examples = examples.take(np.isin(examples.users, sample.users))
    if not len(examples.targets):
        raise fail(
            f"the {len(sample.users)} sampled users have no {split} events; "
            "sample more with a larger --sample-users"
        )
    return examples


@dataclass(frozen=True)
class UserSample:
    """A seeded random sample of the test users: every model and split is scored on them."""

    users: np.ndarray  # sorted user ids
    of: int  # the test users it was drawn from
    seed: int

    def as_dict(self) -> dict[str, int]:
        return {"n_users": int(len(self.users)), "of": self.of, "seed": self.seed}


def user_sample(data: ProcessedData, n: int | None, seed: int) -> UserSample | None:
    """``n`` test users drawn with ``seed`` (``--sample-users``); None for all of them, also
    when ``n`` is at least their number."""
    if n is None:
        return None
    if n < 1:
        raise fail(f"--sample-users must be >= 1 (leave it out to evaluate every user), got {n}")
    users = np.unique(split_examples(data, "test").users)
    if n >= len(users):
        logger.info(f"--sample-users {n}: the {len(users)} test users are all evaluated")
        return None
    chosen = np.random.default_rng(seed).choice(users, n, replace=False)
    logger.info(f"evaluating a sample of {n} of the {len(users)} test users (seed {seed})")
    return UserSample(np.sort(chosen), len(users), seed)


def _timed_rank(candidate: Candidate, examples: EvalExamples, n_items: int, **kwargs) -> Ranked:
    start = time.perf_counter()
    ranked = rank_examples(candidate.scorer, examples, n_items, **kwargs)
    logger.info(
        f"{candidate.name}: ranked {len(examples.targets)} users in "
        f"{time.perf_counter() - start:.2f} s"
    )
    return ranked


def significance(
    rows: list[dict[str, Any]], test_values: dict[str, torch.Tensor], n_bootstrap: int, seed: int
) -> dict[str, Any] | None:
    """Best trained config vs best baseline (both chosen on valid NDCG@10, a config by its mean
    over seeds), paired on the same test users; ``test_values`` holds each row's per-user test
    NDCG@10, averaged over a config's seeds."""

    def best(kind: str) -> dict[str, Any] | None:
        pool = [r for r in rows if r["kind"] == kind]
        return best_on_valid(pool) if pool else None

    model, baseline = best("trained"), best("baseline")
    if model is None or baseline is None:
        return None
    return paired_test(model, baseline, test_values, n_bootstrap, seed)


def best_on_valid(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return max(rows, key=lambda r: r["valid"][MAIN_METRIC]["value"])


def paired_test(
    model: dict[str, Any],
    baseline: dict[str, Any],
    test_values: dict[str, torch.Tensor],
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """``model`` - ``baseline`` in test NDCG@10, by a paired bootstrap over the same users."""
    test = metrics.paired_bootstrap(
        test_values[model["name"]], test_values[baseline["name"]], n_bootstrap, CONFIDENCE, seed
    )
    return {
        "metric": MAIN_METRIC,
        "split": "test",
        "model": model["name"],
        "n_seeds": model.get("n_seeds"),
        "baseline": baseline["name"],
        "method": test.method,
        "delta": test.delta,
        "low": test.low,
        "high": test.high,
        "p_value": test.p_value,
    }


def generative_test(
    rows: list[dict[str, Any]], test_values: dict[str, torch.Tensor], n_bootstrap: int, seed: int
) -> dict[str, Any] | None:
    """The best generative config against ``sasrec-ce`` (else the best scoring config), each
    chosen on valid NDCG@10, paired on the same test users."""
    trained = [r for r in rows if r["kind"] == "trained"]
    generative = [r for r in trained if r["item_repr"] == "semantic"]
    scoring = [r for r in trained if r["item_repr"] != "semantic"]
    if not generative or not scoring:
        return None
    reference = [r for r in scoring if r.get("config_name") == REFERENCE_CONFIG] or scoring
    return paired_test(
        best_on_valid(generative), best_on_valid(reference), test_values, n_bootstrap, seed
    )


def split_kind(stats: dict[str, Any]) -> str:
    """The split protocol's name, from stats.json's ``{"split": {"kind": ...}}``."""
    return str(stats.get("split", {}).get("kind", "unknown"))


def _header(
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


def config_groups(candidates: list[Candidate]) -> list[list[Candidate]]:
    """Trained runs grouped by config (everything in their config but the seed), one run per
    seed; each baseline alone. Groups keep the order their first member came in."""
    groups: dict[str, list[Candidate]] = {}
    for cand in candidates:
        if cand.kind != "trained":
            groups[f"baseline {cand.name}"] = [cand]
            continue
        config = {k: v for k, v in (cand.config or {}).items() if k != "seed"}
        members = groups.setdefault(json.dumps(config, sort_keys=True, default=str), [])
        seed = (cand.config or {}).get("seed")
        twin = next((m for m in members if (m.config or {}).get("seed") == seed), None)
        if twin is not None:
            logger.warning(
                f"runs {twin.name} and {cand.name} have the same config and seed {seed}; "
                f"counting {twin.name} only"
            )
            continue
        members.append(cand)
    return list(groups.values())


def group_names(groups: list[list[Candidate]]) -> list[str]:
    """A row's name: its run's, or its runs' name without ``-seed<N>`` (all names if ambiguous)."""

    def wanted(members: list[Candidate]) -> str:
        bases = {SEED_SUFFIX.sub("", m.name) for m in members}
        if len(members) == 1:
            return members[0].name
        return bases.pop() if len(bases) == 1 else "+".join(m.name for m in members)

    names = [wanted(members) for members in groups]
    taken = Counter(names)
    return [
        name if taken[name] == 1 or len(members) == 1 else "+".join(m.name for m in members)
        for name, members in zip(names, groups)
    ]


def per_user_mean(ranked: list[Ranked], key: str, popularity: torch.Tensor) -> torch.Tensor | None:
    """Each user's ``key`` (``ndcg@10``, ``popularity@10``, ...) averaged over runs on the same
    users; None for coverage, which is a property of the whole list, not a mean over users."""
    name, _, k = key.partition("@")
    if name in metrics.RANK_METRICS or name.startswith(SAMPLED_PREFIX):
        values = [per_user(r, name, int(k)) for r in ranked]
    elif name == "popularity":
        values = [metrics.mean_popularity_at_k(r.top_items, int(k), popularity) for r in ranked]
    else:
        return None
    return torch.stack([v.double().cpu() for v in values]).mean(0)


def seed_entry(
    values: np.ndarray, users: torch.Tensor | None, n_bootstrap: int, seed: int
) -> dict[str, float | None]:
    """One metric over a config's seeds: the mean of the seeds' ``values``, their spread (``std``:
    sample standard deviation, ``min``, ``max``) and the bootstrap interval of the mean model
    (resampling users on their metric averaged over the seeds; none without such ``users``)."""
    entry = metrics.Interval(float(values.mean()), None, None).as_dict()
    if users is not None:
        interval = metrics.bootstrap_ci(users, n_bootstrap, CONFIDENCE, seed).as_dict()
        entry.update(low=interval["low"], high=interval["high"])
    spread = {"std": values.std(ddof=1), "min": values.min(), "max": values.max()}
    return {**entry, **{k: round(float(v), 6) for k, v in spread.items()}}


def seed_row(
    name: str,
    rows: list[dict[str, Any]],
    ranked: list[dict[str, Ranked]],
    popularity: torch.Tensor,
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    """One config's row from the rows (and ranks) of its seeds' runs: see :func:`seed_entry`."""
    first = rows[0]
    out = {
        "name": name,
        "kind": first["kind"],
        "run": None,
        "item_repr": first["item_repr"],
        "n_params": first["n_params"],
        "max_k": first["max_k"],
        "params": first["params"],
    }
    for split in SPLITS:
        out[split] = {
            key: (
                seed_entry(
                    np.array([row[split][key]["value"] for row in rows], dtype=np.float64),
                    per_user_mean([r[split] for r in ranked], key, popularity),
                    n_bootstrap,
                    seed,
                )
                if entry["value"] is not None
                else entry  # blank beyond a generative run's beams
            )
            for key, entry in first[split].items()
        }
    return out


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
) -> dict[str, Any]:
    """The main report: every config (mean over its seeds) and baseline on valid and test, each
    trained run on its own (``per_seed``), and the significance test; on the ``sample``'s users
    only when there is one. ``skipped``: the baselines left out, for the header."""
    ks = usable_ks(data.n_items)
    popularity = training_popularity(data)
    examples = {split: split_examples(data, split, sample) for split in SPLITS}
    options = dict(keep_history=keep_history, k_max=max(ks), batch_size=batch_size, device=device)
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
    report = _header(data, n_test, keep_history, n_bootstrap, sample, skipped)
    report["models"] = rows
    report["per_seed"] = per_seed
    report["significance"] = significance(rows, test_values, n_bootstrap, seed)
    report["generative"] = generative_test(rows, test_values, n_bootstrap, seed)
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


# -------------------------------------------------------------------------------- output


def _cell(entry: dict[str, float | None] | None, scale: float = 1.0, digits: int = 4) -> str:
    if entry is None or entry["value"] is None:
        return "-"
    value = f"{entry['value'] * scale:.{digits}f}"
    if entry.get("low") is None:
        return value
    return f"{value} [{entry['low'] * scale:.{digits}f}, {entry['high'] * scale:.{digits}f}]"


def _spread_lines(models: list[dict[str, Any]]) -> list[str]:
    """The spread across seeds of the configs run with several: std and min..max at K = 10."""
    seeded = [row for row in models if (row.get("n_seeds") or 1) > 1]
    if not seeded:
        return []
    shown = ("ndcg@10", "hr@10")
    lines = ["", "## Spread across seeds (K = 10)", ""]
    lines.append(
        "| model | seeds | split | "
        + " | ".join(f"{m} {part}" for m in shown for part in ("std", "min..max"))
        + " |"
    )
    lines.append("|---|---:|---|" + "---:|" * (2 * len(shown)))
    for row in seeded:
        for split in SPLITS:
            cells = []
            for metric in shown:
                entry = row[split][metric]
                cells += [f"{entry['std']:.4f}", f"{entry['min']:.4f}..{entry['max']:.4f}"]
            lines.append(
                f"| {row['name']} | {row['n_seeds']} | {split} | " + " | ".join(cells) + " |"
            )
    return lines


def _value(entry: dict[str, float | None]) -> str:
    return "-" if entry["value"] is None else f"{entry['value']:.4f}"


def _paired_line(title: str, sig: dict[str, Any]) -> str:
    interval = "" if sig["low"] is None else f" [{sig['low']:+.4f}, {sig['high']:+.4f}]"
    p_value = "n/a" if sig["p_value"] is None else f"{sig['p_value']:.4f}"
    n_seeds = sig.get("n_seeds") or 1
    model = f"{sig['model']} (mean of {n_seeds} seeds)" if n_seeds > 1 else sig["model"]
    return (
        f"**{title}** ({sig['method']}, {sig['split']} {sig['metric']}): "
        f"{model} - {sig['baseline']} = {sig['delta']:+.4f}{interval}, p = {p_value}."
    )


#: The report keys that say which users and baselines it covers (see :func:`_scope_lines`).
SCOPE = ("user_sample", "skipped")


def _scope_lines(section: dict[str, Any]) -> list[str]:
    """A sampled evaluation and the baselines left out, said in words."""
    lines = []
    sample = section.get("user_sample")
    if sample:
        lines += [
            "",
            f"**A sample**: {sample['n_users']} of the {sample['of']} test users, drawn with "
            f"seed {sample['seed']} (`--sample-users`), the same users for every model and "
            "split: a fast estimate, whose intervals are those of the sample.",
        ]
    for entry in section.get("skipped") or ():
        lines += ["", f"**Skipped baseline {entry['name']}**: {entry['reason']}."]
    return lines


def _baseline_settings_lines(report: dict[str, Any]) -> list[str]:
    """Which settings the tunable baselines had: chosen on validation (the file) or defaults."""
    shown = ", ".join(
        f"{row['name']} {point_label(row['params'])}"
        for row in report["models"]
        if row["kind"] == "baseline" and row.get("params")
    )
    if not shown:
        return []
    source = report.get("baseline_settings")
    how = f"chosen on validation (`{source}`)" if source else "their defaults (not tuned)"
    return ["", f"**Baseline settings**: {how}: {shown}."]


def render_markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables (test and valid at K=10 with CIs, then NDCG/HR at every K)."""
    lines = [
        f"# Evaluation: {report['dataset']}",
        "",
        f"{report['n_users']} test users, {report['n_items']} items, full ranking, history "
        f"{'masked' if report['history_masked'] else 'kept'}, pessimistic ties. Brackets: "
        f"{report['bootstrap']['confidence']:.0%} bootstrap interval over users "
        f"({report['bootstrap']['samples']} resamples). Generated {report['generated_at']}.",
        "",
        "With one held-out item per user, recall@K equals hr@K and map@K equals mrr@K (all are "
        "in the JSON). coverage: share of the catalogue recommended to anyone; popularity: mean "
        "popularity percentile (0-100) of the recommended items.",
        "",
        "seeds: how many seeds a trained config was run with. A config with several shows the "
        "mean over its seeds; its interval resamples users on their metric averaged over the "
        "seeds (the mean model), and the spread across seeds is tabled below. Each run's own row "
        "is in the JSON (`per_seed`).",
    ]
    lines += _scope_lines(report)
    lines += _baseline_settings_lines(report)
    beams = sorted({row["max_k"] for row in report["models"] if row.get("max_k")})
    if beams:
        lines += [
            "",
            "Generative runs (item repr semantic) rank the items they generate, the beam size "
            f"{', '.join(map(str, beams))}, and count a target outside their beams as a miss. "
            "Their metrics at a larger K are blank (-).",
        ]
    # One held-out item per user: recall@K equals hr@K and map@K equals mrr@K (both in the JSON).
    at10 = ["hr@10", "ndcg@10", "mrr@10", "coverage@10", "popularity@10"]
    for split in SPLITS if report["models"] else ():
        lines += ["", f"## {split.capitalize()} (K = 10)", ""]
        lines.append("| model | kind | seeds | " + " | ".join(at10) + " |")
        lines.append("|---|---|---:|" + "---:|" * len(at10))
        for row in report["models"]:
            cells = [
                _cell(row[split].get(m), digits=2 if m.startswith("pop") else 4) for m in at10
            ]
            seeds = row.get("n_seeds") or "-"
            lines.append(
                f"| {row['name']} | {row['kind']} | {seeds} | " + " | ".join(cells) + " |"
            )
    if report["models"]:
        every_k = [f"{m}@{k}" for m in ("ndcg", "hr") for k in report["ks"]]
        lines += ["", "## Test, every K", ""]
        lines.append("| model | " + " | ".join(every_k) + " |")
        lines.append("|---|" + "---:|" * len(every_k))
        for row in report["models"]:
            cells = [_value(row["test"][m]) for m in every_k]
            lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    lines += _spread_lines(report["models"])
    for key, title in (("significance", "Significance"), ("generative", "Generative")):
        if report.get(key):
            lines += ["", _paired_line(title, report[key])]
    cold = report.get("cold_start")
    if cold:
        lines += [
            "",
            f"## Cold-start items (fraction {cold['fraction']}, {cold['n_cold_items']} items, "
            f"{cold['n_test_events']} test events)",
        ]
        differs = {key: cold.get(key) for key in SCOPE if cold.get(key) != report.get(key)}
        lines += _scope_lines(differs)
        lines += [
            "",
            "| model | item repr | can score cold | hr@10 | ndcg@10 |",
            "|---|---|---|---:|---:|",
        ]
        for row in cold["models"]:
            lines.append(
                f"| {row['name']} | {row['item_repr'] or '-'} | "
                f"{'yes' if row['can_score_cold'] else 'no'} | "
                f"{_cell(row['hr@10'])} | {_cell(row['ndcg@10'])} |"
            )
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], metrics_dir: Path | None = None) -> Path:
    """Write ``<dataset>.json`` and ``<dataset>.md`` atomically; returns the JSON path."""
    folder = Path(metrics_dir or METRICS_DIR)
    path = write_json(report, folder / f"{report['dataset']}.json")
    write_text(render_markdown(report), folder / f"{report['dataset']}.md")
    return path


def read_existing(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.exists() else None


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
        header = _header(data, n_test, keep_history, n_bootstrap, sample, skipped)
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
