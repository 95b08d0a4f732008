"""The metrics report as Markdown (``reports/metrics/<dataset>.md``): tables at K = 10 with their
intervals, every K on test, the spread across seeds, the paired tests and the cold-start section.
"""

from __future__ import annotations

from typing import Any

from recsys.modeling.baseline_tuning import point_label
from recsys.modeling.evaluation_data import SPLITS


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
    if report.get("against_reference"):
        reference = report["against_reference"][0]["baseline"]
        lines += [
            "",
            f"## Against {reference} (paired bootstrap over users, test ndcg@10)",
            "",
            f"| model | seeds | - {reference} | 95% interval | p |",
            "|---|---:|---:|---:|---:|",
        ]
        for test in report["against_reference"]:
            interval = "-" if test["low"] is None else f"[{test['low']:+.4f}, {test['high']:+.4f}]"
            p_value = "n/a" if test["p_value"] is None else f"{test['p_value']:.4f}"
            lines.append(
                f"| {test['model']} | {test.get('n_seeds') or 1} | {test['delta']:+.4f} "
                f"| {interval} | {p_value} |"
            )
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
