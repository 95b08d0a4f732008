"""The figure library: data already gathered in, a matplotlib Figure out, or a figure saved.

It draws the report's t-SNE, curves, metrics, recommendation, tuning and semantic-ID figures (Agg
backend, no display needed) and writes them as ``.png`` and ``.svg`` atomically. It reads no run
and imports nothing from modeling or serving, so the stages that draw (``recsys.plots``, the
tuner) can all import it without the packages importing each other.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.patheffects as path_effects  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from loguru import logger  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from recsys.cli import fail  # noqa: E402
from recsys.io import atomic_path  # noqa: E402
from recsys.text import cell_values  # noqa: E402

# Reproducible files: no timestamps or random ids inside the PNG/SVG.
plt.rcParams.update({"svg.hashsalt": "recsys", "figure.dpi": 100, "font.size": 9})
_FIG_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}

KNN_K = 10
N_LABELLED = 20
OTHER = "other"
TRAINED_COLOUR, BASELINE_COLOUR = "#1f77b4", "#9e9e9e"
CURVE_COLUMNS = ("epoch", "train_loss", "val_loss", "val_ndcg@10")  # what plot_curves draws


# --------------------------------------------------------------------------- items and labels


def primary_labels(items: pd.DataFrame) -> tuple[pd.Series, str]:
    """Each item's colour class: first MovieLens genre, or H&M product group.

    Returns the labels indexed by ``item_idx`` and what they are, for legends and captions.
    """
    if "genres" in items.columns:
        labels = items["genres"].map(lambda g: _genre_list(g)[0] if _genre_list(g) else "(none)")
        return pd.Series(labels.to_numpy(), index=items["item_idx"].to_numpy()), "primary genre"
    if "product_group_name" in items.columns:
        groups = items["product_group_name"].fillna("(none)").astype(str)
        return pd.Series(groups.to_numpy(), index=items["item_idx"].to_numpy()), "product group"
    raise fail(
        "items.parquet has neither a 'genres' nor a 'product_group_name' column, so items cannot "
        "be coloured; re-run 'make data' for a MovieLens or H&M dataset"
    )


def _genre_list(value: Any) -> list[str]:
    """Genres stored as 'A|B', 'A, B' or a list, as a clean list."""
    return cell_values(value, separators="|,")


def item_titles(items: pd.DataFrame) -> pd.Series:
    """Each item's title (its original id where there is none), indexed by ``item_idx``."""
    column = "title" if "title" in items.columns else "item_id"
    return pd.Series(items[column].astype(str).to_numpy(), index=items["item_idx"].to_numpy())


def item_captions(items: pd.DataFrame) -> pd.Series:
    """'Title (genres)' for every item, indexed by ``item_idx``: what a reader recognises."""
    if "genres" in items.columns:
        kinds = items["genres"].map(lambda g: ", ".join(_genre_list(g))).tolist()
    elif "product_group_name" in items.columns:
        kinds = items["product_group_name"].fillna("").astype(str).tolist()
    else:
        kinds = [""] * len(items)
    titles = item_titles(items)
    return pd.Series([f"{t} ({k})" if k else t for t, k in zip(titles, kinds)], index=titles.index)


def most_popular(items: pd.DataFrame, n: int) -> np.ndarray:
    """The ``n`` items with the most interactions (ties by id), for labelling."""
    ranked = items.sort_values(["n_interactions", "item_idx"], ascending=[False, True])
    return ranked["item_idx"].to_numpy()[:n]


# --------------------------------------------------------------------------- t-SNE


def stratified_sample(
    labels: np.ndarray, n: int, seed: int, keep: np.ndarray | None = None
) -> np.ndarray:
    """Positions of ``n`` items: ``keep`` first, the rest drawn per label in proportion.

    Proportional quotas (largest remainder) keep rare genres visible in the same share as in the
    catalogue, which a plain random sample of a capped t-SNE would not guarantee.
    """
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    keep = np.unique(np.asarray(keep if keep is not None else [], dtype=np.int64))[:n]
    rest = np.setdiff1d(np.arange(len(labels)), keep)
    budget = n - len(keep)
    groups, inverse = np.unique(labels[rest], return_inverse=True)
    sizes = np.bincount(inverse, minlength=len(groups))
    exact = sizes * budget / sizes.sum()
    quotas = np.floor(exact).astype(int)
    for g in np.argsort(-(exact - quotas), kind="stable")[: budget - quotas.sum()]:
        quotas[g] += 1
    rng = np.random.default_rng(seed)
    drawn = [
        rng.choice(rest[inverse == g], size=quotas[g], replace=False) for g in range(len(groups))
    ]
    return np.sort(np.concatenate([keep, *drawn]).astype(np.int64))


def knn_label_agreement(vectors: np.ndarray, labels: np.ndarray, k: int = KNN_K) -> float:
    """Share of each item's ``k`` nearest (cosine) neighbours with the same label, averaged."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(vectors) - 1)
    if k < 1:
        raise fail(f"kNN agreement needs at least 2 items, got {len(vectors)}; raise --max-items")
    index = NearestNeighbors(n_neighbors=k, metric="cosine").fit(vectors)
    neighbours = index.kneighbors(return_distance=False)  # excludes each item itself
    labels = np.asarray(labels)
    return float((labels[neighbours] == labels[:, None]).mean())


def chance_agreement(labels: np.ndarray) -> float:
    """Agreement a space with random neighbours would score: the baseline for the kNN number."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    n = counts.sum()
    return float((counts * (counts - 1)).sum() / (n * (n - 1))) if n > 1 else 0.0


def tsne_2d(vectors: np.ndarray, seed: int) -> np.ndarray:
    """2-D t-SNE (cosine, PCA init, fixed seed) of one embedding space.

    One OpenMP thread: reproducible, and on a busy 2-core machine the Barnes-Hut gradient was
    many times slower with spinning threads than with one.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = float(min(30.0, max(2.0, (len(vectors) - 1) / 3)))
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        metric="cosine",
        init="pca",
        random_state=seed,
        n_jobs=1,
    )
    with threadpool_limits(limits=1):
        return tsne.fit_transform(np.asarray(vectors, dtype=np.float32))


@dataclass
class Space:
    """One embedding space of the t-SNE figure: name, vectors of the sampled items, its 2-D map."""

    name: str
    description: str
    vectors: np.ndarray
    coords: np.ndarray | None = None
    agreement: float | None = None


def _label_palette() -> list[tuple[float, float, float]]:
    """tab20's strong colours first, then its light ones, without the greys: the most frequent
    labels get the most distinct colours."""
    colours = plt.get_cmap("tab20").colors
    return [colours[i] for i in [*range(0, 20, 2), *range(1, 20, 2)] if i not in (14, 15)]


LABEL_FONT = 7.5
_RINGS = (4.0, 14.0, 26.0, 40.0, 56.0)  # label offsets tried, in points from the point
_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (0, 1), (0, -1), (1, 0), (-1, 0))


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Area shared by two (left, bottom, right, top) boxes."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(
        0.0, min(a[3], b[3]) - max(a[1], b[1])
    )


def _place_labels(ax: Any, xy: np.ndarray, texts: dict[int, str]) -> None:
    """Name points with few overlaps: each label takes the free-most of 40 nearby spots inside
    the panel (boxes estimated in points from the font size)."""
    to_points = 72.0 / ax.figure.dpi
    frame = tuple(np.asarray(ax.get_window_extent().extents) * to_points)
    placed: list[tuple[float, ...]] = []
    for pos, text in texts.items():
        px, py = ax.transData.transform(xy[pos]) * to_points
        width, height = 0.6 * LABEL_FONT * len(text), 1.2 * LABEL_FONT
        best = None
        for ring in _RINGS:
            for dx, dy in _DIRECTIONS:
                left = px + dx * ring - (width if dx < 0 else width / 2 if dx == 0 else 0)
                bottom = py + dy * ring - (height if dy < 0 else height / 2 if dy == 0 else 0)
                box = (left, bottom, left + width, bottom + height)
                outside = width * height - _overlap(box, frame)
                cost = sum(_overlap(box, other) for other in placed) + 10 * outside
                if best is None or cost < best[0]:
                    best = (cost, box, ring)
        _, box, ring = best
        placed.append(box)
        ax.annotate(
            text,
            xy[pos],
            xytext=(box[0] - px, box[1] - py),
            textcoords="offset points",
            fontsize=LABEL_FONT,
            ha="left",
            va="bottom",
            path_effects=[path_effects.withStroke(linewidth=2.2, foreground="white")],
            arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "#555555"} if ring > 4 else None,
        )


def plot_tsne(
    spaces: list[Space],
    labels: np.ndarray,
    label_kind: str,
    highlight: dict[int, str],
    title: str,
) -> Figure:
    """Side-by-side t-SNE panels of the same items, coloured by label, a few items named.

    ``highlight`` maps a row position (in every space) to the text shown next to that point.
    """
    labels = np.asarray(labels)
    names, counts = np.unique(labels, return_counts=True)
    palette = _label_palette()
    shown = list(names[np.argsort(-counts, kind="stable")][: len(palette)])
    colour_of = dict(zip(shown, palette))
    colours = [colour_of.get(label, "#c7c7c7") for label in labels]
    texts = {pos: textwrap.shorten(text, 28, placeholder="…") for pos, text in highlight.items()}
    fig, axes = plt.subplots(1, len(spaces), figsize=(6.4 * len(spaces), 6.6), squeeze=False)
    for ax, space in zip(axes[0], spaces):
        xy = space.coords
        ax.scatter(xy[:, 0], xy[:, 1], c=colours, s=9, alpha=0.75, linewidths=0)
        marked = xy[list(texts)] if texts else np.empty((0, 2))
        ax.scatter(marked[:, 0], marked[:, 1], s=22, facecolors="none", edgecolors="black", lw=0.8)
        agreement = f"kNN {label_kind} agreement@{KNN_K} = {space.agreement:.3f}"
        ax.set_title(f"{space.description}\n{agreement}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=colour_of[name], label=name) for name in shown
    ]
    if len(names) > len(shown):
        handles.append(plt.Line2D([], [], marker="o", ls="", color="#c7c7c7", label=OTHER))
    fig.legend(handles=handles, loc="lower center", ncol=min(7, len(handles)), frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.04 + 0.025 * (len(handles) // 7), 1, 1))
    for ax, space in zip(axes[0], spaces):  # after the layout, so label spacing is final
        _place_labels(ax, space.coords, texts)
    return fig


@dataclass
class TsneInputs:
    """What the t-SNE command gathered: item ids, their labels and up to two spaces."""

    item_idx: np.ndarray
    labels: np.ndarray
    label_kind: str
    spaces: list[Space]
    notes: list[str] = field(default_factory=list)


def draw_tsne(
    inputs: TsneInputs, titles: pd.Series, popular: np.ndarray, max_items: int, seed: int
) -> tuple[Figure, dict[str, Any]]:
    """Sample, embed and score every space; the figure and the agreement record to save."""
    keep = np.flatnonzero(np.isin(inputs.item_idx, popular[:N_LABELLED]))
    rows = stratified_sample(inputs.labels, max_items, seed, keep=keep)
    labels = inputs.labels[rows]
    spaces = []
    for space in inputs.spaces:
        vectors = space.vectors[rows]
        agreement = knn_label_agreement(vectors, labels)
        spaces.append(
            replace(space, vectors=vectors, coords=tsne_2d(vectors, seed), agreement=agreement)
        )
    chosen = inputs.item_idx[rows]
    highlight = {
        int(pos): titles.loc[int(chosen[pos])]
        for pos in np.flatnonzero(np.isin(chosen, popular[:N_LABELLED]))
    }
    n_total = len(inputs.item_idx)
    used = f"{len(rows)} of {n_total} items" + (
        " (stratified sample)" if len(rows) < n_total else ""
    )
    title = (
        f"t-SNE of the item spaces: {used}, coloured by {inputs.label_kind}; "
        f"the {len(highlight)} most popular items are named; seed {seed}"
    )
    fig = plot_tsne(spaces, labels, inputs.label_kind, highlight, title)
    record = {
        "k": KNN_K,
        "label": inputs.label_kind,
        "metric": "cosine",
        "n_items_used": int(len(rows)),
        "n_items_total": int(n_total),
        "sampled": bool(len(rows) < n_total),
        "seed": seed,
        "chance_agreement": chance_agreement(labels),
        "spaces": {
            s.name: {"description": s.description, "agreement": s.agreement} for s in spaces
        },
        "notes": inputs.notes,
    }
    return fig, record


# --------------------------------------------------------------------------- training curves


def plot_curves(logs: dict[str, pd.DataFrame]) -> Figure:
    """Train loss, validation loss and validation NDCG@10 per epoch, one line per run; a star
    marks each run's best epoch (the checkpoint evaluation uses)."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    panels = [
        ("train_loss", "training loss"),
        ("val_loss", "validation loss"),
        ("val_ndcg@10", "validation NDCG@10"),
    ]
    for ax, (column, label) in zip(axes, panels):
        for run_name, log in logs.items():
            points = log[["epoch", column]].dropna()
            (line,) = ax.plot(points["epoch"], points[column], marker="o", ms=3, label=run_name)
            if column == "val_ndcg@10" and len(points):
                best = points.loc[points[column].idxmax()]
                ax.plot(best["epoch"], best[column], "*", ms=11, color=line.get_color())
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- metrics


def metric_rows(report: dict[str, Any], split: str, metric: str) -> pd.DataFrame:
    """``name, kind, value, low, high`` of one metric for every model of a metrics JSON."""
    rows = []
    for model in report.get("models", []):
        cell = (model.get(split) or {}).get(metric)
        if cell is None or cell.get("value") is None:
            continue
        value = float(cell["value"])
        low, high = cell.get("low"), cell.get("high")  # None when run with --bootstrap 0
        rows.append(
            {
                "name": model["name"],
                "kind": model.get("kind", "trained"),
                "value": value,
                "low": value if low is None else float(low),
                "high": value if high is None else float(high),
            }
        )
    return pd.DataFrame(rows, columns=["name", "kind", "value", "low", "high"])


def plot_metrics(report: dict[str, Any], split: str = "test") -> Figure:
    """Models against baselines on NDCG@10 and HR@10, bootstrap CIs as error bars."""
    metrics = ["ndcg@10", "hr@10"]
    tables = {m: metric_rows(report, split, m) for m in metrics}
    if all(t.empty for t in tables.values()):
        raise fail(
            f"the metrics report of {report.get('dataset', '?')} has no {split} NDCG@10 or "
            "HR@10 values; re-run 'make evaluate'"
        )
    by = "ndcg@10" if not tables["ndcg@10"].empty else "hr@10"
    order = tables[by].sort_values("value")["name"].tolist()
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.4 * len(order) + 1.8), sharey=True)
    for ax, metric in zip(axes, metrics):
        table = tables[metric].set_index("name").reindex(order)
        y = np.arange(len(order))
        colours = [TRAINED_COLOUR if k == "trained" else BASELINE_COLOUR for k in table["kind"]]
        errors = np.vstack([table["value"] - table["low"], table["high"] - table["value"]])
        ax.barh(y, table["value"], xerr=errors, color=colours, capsize=3, ecolor="#333333")
        for yi, value, high in zip(y, table["value"], table["high"]):
            if not np.isnan(value):
                ax.text(high, yi, f"  {value:.4f}", va="center", fontsize=8)
        ax.set_yticks(y, order)
        ax.set_title(f"{split} {metric.upper()}")
        ax.set_xlim(0, max(1e-9, float(np.nanmax(table["high"]))) * 1.25)
        ax.grid(axis="x", alpha=0.3)
    confidence = report.get("bootstrap", {}).get("confidence")
    ci = f"{confidence:.0%} bootstrap CI" if isinstance(confidence, (int, float)) else "CI"
    fig.legend(
        handles=[
            plt.Rectangle((0, 0), 1, 1, color=TRAINED_COLOUR, label="trained model"),
            plt.Rectangle((0, 0), 1, 1, color=BASELINE_COLOUR, label="baseline"),
        ],
        loc="lower center",
        ncol=2,
        frameon=False,
    )
    fig.suptitle(f"{report.get('dataset', '')}: models vs baselines, error bars = {ci}")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


# --------------------------------------------------------------------------- recommendations


@dataclass
class UserRecs:
    """One sample user: their last items, the model's top-k, the held-out item and its rank."""

    user_idx: int
    user_id: str
    history_length: int
    last_items: list[dict[str, Any]]
    recommendations: list[dict[str, Any]]
    held_out: dict[str, Any]
    held_out_rank: int


def plot_recs(recs: list[UserRecs], k: int = 10) -> Figure:
    """A readable sheet: per user, last items on the left and the top-k on the right."""
    lines_per_user = k + 3
    fig = plt.figure(figsize=(14, 0.19 * lines_per_user * len(recs) + 0.6))
    line = 1.0 / (lines_per_user * len(recs) + 1)
    y = 1.0 - line
    for user in recs:
        held_out = textwrap.shorten(user.held_out["title"], 45, placeholder="…")
        header = (
            f"User {user.user_id}  ({user.history_length} items before the held-out one; "
            f"held-out next item: {held_out}, ranked {user.held_out_rank})"
        )
        fig.text(0.01, y, header, fontsize=10, weight="bold", va="top")
        y -= line
        fig.text(0.01, y, "last items, oldest first", fontsize=8.5, style="italic", va="top")
        fig.text(0.51, y, f"top {k} recommendations", fontsize=8.5, style="italic", va="top")
        for i in range(k):
            y -= line
            if i < len(user.last_items):
                text = textwrap.shorten(user.last_items[i]["caption"], 80, placeholder="…")
                fig.text(0.02, y, f"{i + 1:>2}. {text}", fontsize=8.5, va="top")
            if i < len(user.recommendations):
                rec = user.recommendations[i]
                mark = "  ✓ held-out item" if rec["item_idx"] == user.held_out["item_idx"] else ""
                text = textwrap.shorten(rec["caption"], 80, placeholder="…")
                colour = "#1a7f37" if mark else "black"
                fig.text(
                    0.52, y, f"{i + 1:>2}. {text}{mark}", fontsize=8.5, va="top", color=colour
                )
        y -= 2 * line
    return fig


# --------------------------------------------------------------------------- tuning


def plot_tuning_history(trials: list[dict[str, Any]]) -> Figure:
    """Validation NDCG@10 of each trial of a study and the best so far; pruned trials show the
    best value they reached before they were stopped (``trials`` as the tuner's JSON lists them).
    """
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    done = [t for t in trials if t.get("state") == "complete" and t.get("value") is not None]
    pruned = [t for t in trials if t.get("state") == "pruned" and t.get("best_reported")]
    if done:
        x = [t["number"] for t in done]
        ax.plot(x, [t["value"] for t in done], "o", color=TRAINED_COLOUR, label="complete")
        best = np.maximum.accumulate([t["value"] for t in done])
        ax.step(x, best, where="post", color=TRAINED_COLOUR, alpha=0.6, label="best so far")
    if pruned:
        x = [t["number"] for t in pruned]
        y = [t["best_reported"] for t in pruned]
        ax.plot(x, y, "x", color=BASELINE_COLOUR, label="pruned (best before stopping)")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation NDCG@10")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if done or pruned:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_param_importances(importances: dict[str, float]) -> Figure:
    """Each searched parameter's share of the variance of validation NDCG@10 (fANOVA), largest
    on top."""
    names = sorted(importances, key=importances.get)
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(names) + 1.2))
    values = [importances[n] for n in names]
    ax.barh(names, values, color=TRAINED_COLOUR)
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.2f}", va="center", fontsize=8)
    ax.set_xlim(0, max(values + [0.0]) * 1.15 or 1.0)
    ax.set_xlabel("importance for validation NDCG@10")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- semantic IDs


def plot_code_usage(ids: np.ndarray, codebook_size: int, slug: str) -> Figure:
    """Items per code at each semantic-ID level, codes sorted by use: a flat profile near the
    uniform share means the codebook is spread, a steep head with an empty tail means collapse.
    ``ids`` is the loader's array (row 0 padding, last column the collision token, both left out).
    """
    codes = ids[1:, :-1]
    levels = codes.shape[1]
    fig, axes = plt.subplots(1, levels, figsize=(3.2 * levels, 2.8), sharey=True, squeeze=False)
    uniform = len(codes) / codebook_size
    for level, ax in enumerate(axes[0]):
        counts = np.sort(np.bincount(codes[:, level], minlength=codebook_size))[::-1]
        ax.bar(np.arange(codebook_size), counts, width=1.0, color=TRAINED_COLOUR)
        ax.axhline(uniform, color=BASELINE_COLOUR, linestyle="--", linewidth=1, label="uniform")
        used = (counts > 0).mean()
        ax.set_title(f"level {level + 1}: {used:.0%} of {codebook_size} codes used", fontsize=9)
        ax.set_xlabel("code (sorted by items)")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("items")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"semantic-ID code usage ({slug})", fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- saving


def save_figure(fig: Figure, folder: Path, name: str) -> list[Path]:
    """Write ``name``.png and .svg atomically and free the figure."""
    paths = []
    try:
        for ext in ("png", "svg"):
            target = folder / f"{name}.{ext}"
            with atomic_path(target) as tmp:
                fig.savefig(
                    tmp, format=ext, dpi=150, bbox_inches="tight", metadata=_FIG_METADATA[ext]
                )
            paths.append(target)
    finally:
        plt.close(fig)
    logger.info("wrote {}", ", ".join(str(p) for p in paths))
    return paths
