"""``python -m recsys.modeling.evaluate``: trained runs and baselines, ranked the same way.

Every model (trained run or baseline) is a *scorer*: ``score(item_seq[B, L]) -> [B, C]``. Each
split is scored in batches of users; a batch's scores are reduced at once to the target's
pessimistic rank and the top-50 list, so memory grows with the batch size, never with
users x items. Per-user metrics then get bootstrap intervals over users, and the best trained run
is compared with the best baseline by a paired bootstrap on the same test users.

Output: ``reports/metrics/<dataset>.json`` (contract 4) and ``<dataset>.md``. ``--cold-items F``
adds (or replaces) only the ``cold_start`` section of that file.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
from loguru import logger

from recsys.cli import fail, run
from recsys.config import DEFAULT_DATASET, METRICS_DIR, MODELS_DIR, PROCESSED_DATA_DIR
from recsys.io import read_json, write_json, write_text
from recsys.modeling import metrics as M
from recsys.modeling.baselines import fit_baselines
from recsys.processed import (
    TRAIN,
    EvalExamples,
    ProcessedData,
    cold_item_set,
    eval_examples,
    left_pad,
    load_processed,
    train_sequences,
)

SPLITS = ("valid", "test")
CONFIDENCE = 0.95
MAIN_METRIC = "ndcg@10"
COLD_CAPABLE = ("text", "hybrid")
#: Users per scoring batch: on 2 CPU cores 128 beat 256 and 512 (smaller attention buffers).
BATCH_SIZE = 128

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

    @property
    def can_score_cold(self) -> bool:
        return self.kind == "trained" and self.item_repr in COLD_CAPABLE


@dataclass
class Ranked:
    """One model on one split: per-user target ranks and top lists (CPU tensors)."""

    users: np.ndarray
    ranks: torch.Tensor  # [U] pessimistic 0-based rank of the target
    top_items: torch.Tensor  # [U, k_max]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``, checked."""
    if name == "auto":
        return default_device()
    try:
        device = torch.device(name)
    except RuntimeError:
        raise fail(f"--device {name!r} is not a device; use auto, cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise fail(f"--device {name}: no CUDA GPU is available here; use auto or cpu")
    return device


def context_length(scorer: Any) -> int | None:
    """How many recent items the scorer reads: a trained model's max_len, else all (None)."""
    config = getattr(scorer, "config", None)
    return getattr(config, "max_len", None)


def score_batch(scorer: Any, item_seq: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
    """Scores in float32; user ids go only to trained models that were trained with them."""
    config = getattr(scorer, "config", None)
    if getattr(config, "use_user", False):
        return scorer.score(item_seq, users).float()
    return scorer.score(item_seq).float()


@torch.inference_mode()
def batched_scores(
    scorer: Any,
    histories: list[np.ndarray],
    users: np.ndarray,
    *,
    keep_history: bool = False,
    batch_size: int = BATCH_SIZE,
    device: torch.device | str | None = None,
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor | None]]:
    """Next-item scores for ``histories``, one batch of users at a time.

    Yields ``(rows, scores [b, C] float32, exclude)``: ``rows`` are the batch's positions in
    ``histories`` (batches hold similar lengths, so little compute goes to padding); ``exclude``
    is the left-padded full history to mask (None with ``keep_history``), while the scorer reads
    only its last ``max_len`` items.
    """
    if batch_size < 1:
        raise fail(f"--batch-size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else default_device()
    max_len = context_length(scorer)
    order = np.argsort([len(h) for h in histories], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = [histories[i] for i in rows]
        longest = max(1, max(len(h) for h in batch))
        item_seq = torch.from_numpy(left_pad(batch, min(longest, max_len or longest)))
        scores = score_batch(scorer, item_seq.to(device), torch.from_numpy(users[rows]).to(device))
        exclude = None
        if not keep_history:
            exclude = torch.from_numpy(left_pad(batch, longest)).to(scores.device)
        yield rows, scores, exclude


def in_input_order(rows: list[np.ndarray], parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-batch results and put them back in the order of the input."""
    return torch.cat(parts)[torch.from_numpy(np.argsort(np.concatenate(rows)))]


def rank_examples(
    scorer: Any,
    examples: EvalExamples,
    n_items: int,
    *,
    keep_history: bool = False,
    k_max: int = max(M.KS),
    batch_size: int = BATCH_SIZE,
    device: torch.device | str | None = None,
) -> Ranked:
    """Rank every example's target over items ``1..n_items`` (full ranking, batched)."""
    seen, ranks, tops = [], [], []
    batches = batched_scores(
        scorer,
        examples.histories,
        examples.users,
        keep_history=keep_history,
        batch_size=batch_size,
        device=device,
    )
    for rows, scores, exclude in batches:
        targets = torch.from_numpy(examples.targets[rows]).to(scores.device)
        seen.append(rows)
        ranks.append(M.target_ranks(scores, targets, exclude, n_items)[:, 0].cpu())
        tops.append(M.top_k_items(scores, k_max, exclude, n_items).cpu())
    return Ranked(examples.users, in_input_order(seen, ranks), in_input_order(seen, tops))


def per_user(ranked: Ranked, metric: str, k: int) -> torch.Tensor:
    """One rank metric (``hr``, ``recall``, ``ndcg``, ``mrr``, ``map``) per user."""
    return M.RANK_METRICS[metric](ranked.ranks, k)


def summarize(
    ranked: Ranked,
    popularity_pct: torch.Tensor,
    n_items: int,
    ks: tuple[int, ...],
    n_bootstrap: int,
    seed: int = 0,
) -> dict[str, dict[str, float | None]]:
    """Every metric at every K with its bootstrap interval, keyed like ``ndcg@10``."""
    out: dict[str, dict[str, float | None]] = {}
    for k in ks:
        for name in M.RANK_METRICS:
            values = per_user(ranked, name, k)
            out[f"{name}@{k}"] = M.bootstrap_ci(values, n_bootstrap, CONFIDENCE, seed).as_dict()
        coverage = M.coverage_ci(ranked.top_items, k, n_items, n_bootstrap, CONFIDENCE, seed)
        out[f"coverage@{k}"] = coverage.as_dict()
        popularity = M.mean_popularity_at_k(ranked.top_items, k, popularity_pct)
        out[f"popularity@{k}"] = M.bootstrap_ci(
            popularity, n_bootstrap, CONFIDENCE, seed
        ).as_dict()
    return out


# ----------------------------------------------------------------------------- the models


def load_trained(run_dir: Path, dataset: str, device: torch.device | str = "cpu") -> Candidate:
    """A trained run as a candidate; a run of another dataset is a user error."""
    from recsys.modeling.runs import load_run

    trained = load_run(Path(run_dir), device=str(device))
    if trained.dataset != dataset:
        raise fail(
            f"run {run_dir} was trained on {trained.dataset!r}, not {dataset!r}; "
            f"pick a run under models/{dataset}/ or pass --dataset {trained.dataset}"
        )
    model = trained.model
    return Candidate(
        name=Path(run_dir).name,
        kind="trained",
        scorer=model,
        run=str(run_dir),
        item_repr=trained.config.get("item_repr", getattr(model.config, "item_repr", None)),
        n_params=int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        config=trained.config,
    )


def trained_candidates(
    dataset: str,
    models_dir: Path | None,
    cold_items: float,
    device: torch.device | str,
) -> list[Candidate]:
    """Trained runs of ``dataset`` whose cold-start fraction equals ``cold_items``."""
    from recsys.modeling.runs import cold_fraction, list_runs

    runs = [p for p in list_runs(dataset, models_dir) if cold_fraction(p) == cold_items]
    return [load_trained(p, dataset, device) for p in runs]


def baseline_candidates(data: ProcessedData, cold: np.ndarray | None = None) -> list[Candidate]:
    """The four baselines, fitted on the training split (without the cold items, if any)."""
    sequences = list(train_sequences(data.events).values())
    if cold is not None and len(cold):
        sequences = [s[~np.isin(s, cold)] for s in sequences]
        sequences = [s for s in sequences if len(s)]
    fitted = fit_baselines(sequences, data.n_items, data.n_catalogue)
    return [Candidate(name=n, kind="baseline", scorer=b) for n, b in fitted.items()]


def cold_seed(trained: list[Candidate]) -> int:
    """The seed that drew the runs' cold items (training draws them from its config seed)."""
    from recsys.modeling.train import DEFAULTS

    seeds = sorted({int(c.config.get("seed", DEFAULTS["seed"])) for c in trained if c.config})
    if len(seeds) > 1:
        raise fail(
            f"the cold-start runs were trained with different seeds {seeds}, so their cold item "
            "sets differ; retrain them with one seed or evaluate them from separate --models-dir"
        )
    return seeds[0] if seeds else int(DEFAULTS["seed"])


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
    return M.popularity_percentiles(torch.from_numpy(counts))


def usable_ks(n_items: int) -> tuple[int, ...]:
    ks = tuple(k for k in M.KS if k <= n_items)
    if not ks:
        raise fail(f"the catalogue has {n_items} items, fewer than the smallest K {M.KS[0]}")
    return ks


def split_examples(data: ProcessedData, split: str) -> EvalExamples:
    examples = eval_examples(data.events, split)
    if not len(examples.targets):
        raise fail(
            f"processed {data.name!r} has no {split} events; re-run "
            f"'make data DATASET={data.name}' with a split that holds some out"
        )
    return examples


def _timed_rank(candidate: Candidate, examples: EvalExamples, n_items: int, **kwargs) -> Ranked:
    start = time.perf_counter()
    ranked = rank_examples(candidate.scorer, examples, n_items, **kwargs)
    logger.info(
        f"{candidate.name}: ranked {len(examples.targets)} users in "
        f"{time.perf_counter() - start:.2f} s"
    )
    return ranked


def significance(
    rows: list[dict[str, Any]], test_ranked: dict[str, Ranked], n_bootstrap: int, seed: int
) -> dict[str, Any] | None:
    """Best trained run vs best baseline (both chosen on valid NDCG@10), paired on test users."""

    def best(kind: str) -> dict[str, Any] | None:
        pool = [r for r in rows if r["kind"] == kind]
        return max(pool, key=lambda r: r["valid"][MAIN_METRIC]["value"]) if pool else None

    model, baseline = best("trained"), best("baseline")
    if model is None or baseline is None:
        return None
    k = int(MAIN_METRIC.split("@")[1])
    test = M.paired_bootstrap(
        per_user(test_ranked[model["name"]], "ndcg", k),
        per_user(test_ranked[baseline["name"]], "ndcg", k),
        n_bootstrap,
        CONFIDENCE,
        seed,
    )
    return {
        "metric": MAIN_METRIC,
        "split": "test",
        "model": model["name"],
        "baseline": baseline["name"],
        "method": test.method,
        "delta": test.delta,
        "low": test.low,
        "high": test.high,
        "p_value": test.p_value,
    }


def split_kind(stats: dict[str, Any]) -> str:
    """The split protocol's name, from stats.json's ``{"split": {"kind": ...}}``."""
    return str(stats.get("split", {}).get("kind", "unknown"))


def _header(data: ProcessedData, n_users: int, keep_history: bool, n_bootstrap: int) -> dict:
    return {
        "dataset": data.name,
        "split": split_kind(data.stats),
        "n_users": n_users,
        "n_items": data.n_items,
        "ks": list(usable_ks(data.n_items)),
        "history_masked": not keep_history,
        "bootstrap": {"samples": n_bootstrap, "confidence": CONFIDENCE},
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
) -> dict[str, Any]:
    """The main report: every candidate on valid and test, plus the significance test."""
    ks = usable_ks(data.n_items)
    popularity = training_popularity(data)
    examples = {split: split_examples(data, split) for split in SPLITS}
    rows, test_ranked = [], {}
    for cand in candidates:
        row = {
            "name": cand.name,
            "kind": cand.kind,
            "run": cand.run,
            "item_repr": cand.item_repr,
            "n_params": cand.n_params,
        }
        for split in SPLITS:
            ranked = _timed_rank(
                cand,
                examples[split],
                data.n_items,
                keep_history=keep_history,
                k_max=max(ks),
                batch_size=batch_size,
                device=device,
            )
            row[split] = summarize(ranked, popularity, data.n_items, ks, n_bootstrap, seed)
            if split == "test":
                test_ranked[cand.name] = ranked
        rows.append(row)
    report = _header(data, len(examples["test"].targets), keep_history, n_bootstrap)
    report["models"] = rows
    report["significance"] = significance(rows, test_ranked, n_bootstrap, seed)
    report["cold_start"] = None
    return report


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
) -> dict[str, Any]:
    """HR@10 / NDCG@10 on the test events whose target is a cold item."""
    examples = split_examples(data, "test")
    keep = np.isin(examples.targets, cold)
    if not keep.any():
        raise fail(
            f"no test event of {data.name!r} has a cold target at --cold-items {fraction}; "
            "use a larger fraction"
        )
    cold_examples = EvalExamples(
        users=examples.users[keep],
        histories=[h for h, k in zip(examples.histories, keep) if k],
        targets=examples.targets[keep],
    )
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
        }
        for metric in ("hr", "ndcg"):
            values = per_user(ranked, metric, k)
            row[f"{metric}@{k}"] = M.bootstrap_ci(values, n_bootstrap, CONFIDENCE, seed).as_dict()
        rows.append(row)
    return {
        "fraction": fraction,
        "n_cold_items": int(len(cold)),
        "n_test_events": int(keep.sum()),
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
    if entry is None:
        return "-"
    value = f"{entry['value'] * scale:.{digits}f}"
    if entry.get("low") is None:
        return value
    return f"{value} [{entry['low'] * scale:.{digits}f}, {entry['high'] * scale:.{digits}f}]"


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
    ]
    # One held-out item per user: recall@K equals hr@K and map@K equals mrr@K (both in the JSON).
    at10 = ["hr@10", "ndcg@10", "mrr@10", "coverage@10", "popularity@10"]
    for split in SPLITS if report["models"] else ():
        lines += ["", f"## {split.capitalize()} (K = 10)", ""]
        lines.append("| model | kind | " + " | ".join(at10) + " |")
        lines.append("|---|---|" + "---:|" * len(at10))
        for row in report["models"]:
            cells = [
                _cell(row[split].get(m), digits=2 if m.startswith("pop") else 4) for m in at10
            ]
            lines.append(f"| {row['name']} | {row['kind']} | " + " | ".join(cells) + " |")
    if report["models"]:
        every_k = [f"{m}@{k}" for m in ("ndcg", "hr") for k in report["ks"]]
        lines += ["", "## Test, every K", ""]
        lines.append("| model | " + " | ".join(every_k) + " |")
        lines.append("|---|" + "---:|" * len(every_k))
        for row in report["models"]:
            cells = [f"{row['test'][m]['value']:.4f}" for m in every_k]
            lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    sig = report.get("significance")
    if sig:
        interval = "" if sig["low"] is None else f" [{sig['low']:+.4f}, {sig['high']:+.4f}]"
        p_value = "n/a" if sig["p_value"] is None else f"{sig['p_value']:.4f}"
        lines += [
            "",
            f"**Significance** ({sig['method']}, {sig['split']} {sig['metric']}): "
            f"{sig['model']} - {sig['baseline']} = {sig['delta']:+.4f}{interval}, p = {p_value}.",
        ]
    cold = report.get("cold_start")
    if cold:
        lines += [
            "",
            f"## Cold-start items (fraction {cold['fraction']}, {cold['n_cold_items']} items, "
            f"{cold['n_test_events']} test events)",
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
) -> Path:
    """Evaluate ``dataset`` and write its report; returns the JSON path."""
    if n_bootstrap < 0:
        raise fail(f"--bootstrap must be >= 0 (0 turns the intervals off), got {n_bootstrap}")
    torch_device = resolve_device(device)
    data = load_processed(dataset, processed_dir)
    trained = [] if baselines_only else trained_candidates(dataset, models_dir, cold_items, "cpu")
    if not baselines_only:
        require_trained(trained, dataset, cold_items)
    cold = cold_item_set(data.n_items, cold_items, cold_seed(trained)) if cold_items else None
    for cand in trained:
        cand.scorer.to(torch_device)
    candidates = trained + baseline_candidates(data, cold)
    options = dict(
        keep_history=keep_history,
        n_bootstrap=n_bootstrap,
        batch_size=batch_size,
        device=torch_device,
        seed=seed,
    )
    out = Path(metrics_dir or METRICS_DIR) / f"{dataset}.json"
    existing = read_existing(out)
    existing = existing if compatible(existing, data) else None
    if cold is None:
        report = evaluate_main(data, candidates, **options)
        report["cold_start"] = (existing or {}).get("cold_start")
    else:
        section = evaluate_cold(data, candidates, cold, cold_items, **options)
        n_test = len(split_examples(data, "test").targets)
        report = merge_cold(existing, section, _header(data, n_test, keep_history, n_bootstrap))
    path = write_report(report, metrics_dir)
    logger.info(f"wrote {path} and {path.with_suffix('.md')}")
    return path


@app.command()
def main(
    dataset: str = typer.Option(DEFAULT_DATASET, help="Processed dataset to evaluate."),
    cold_items: float = typer.Option(
        0.0, "--cold-items", help="Cold-start mode: fraction of items held out of training."
    ),
    keep_history: bool = typer.Option(
        False, "--keep-history", help="Rank the user's earlier items too (default: masked)."
    ),
    bootstrap: int = typer.Option(1000, help="Bootstrap resamples over users (0: no intervals)."),
    batch_size: int = typer.Option(
        BATCH_SIZE, help="Users scored per batch (bounds peak memory)."
    ),
    baselines_only: bool = typer.Option(
        False, "--baselines-only", help="Evaluate the baselines even without a trained run."
    ),
    seed: int = typer.Option(0, help="Seed of the bootstrap resamples."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    processed_dir: Path = typer.Option(PROCESSED_DATA_DIR, help="Folder of processed datasets."),
    models_dir: Path = typer.Option(MODELS_DIR, help="Folder of trained runs."),
    output_dir: Path = typer.Option(METRICS_DIR, help="Where the report goes."),
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
        metrics_dir=output_dir,
        device=device,
    )


if __name__ == "__main__":
    run(app)
