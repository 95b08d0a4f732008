"""Plot functions on small synthetic data, and the plot commands' errors and skips."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from report_helpers import metrics_report, write_processed

from recsys import figures, plots
from recsys.cli import RecsysError
from recsys.io import write_json
from recsys.processed import cold_item_set, eval_examples, load_processed

PROJ_ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "recsys.plots", *args],
        capture_output=True,
        text=True,
        cwd=PROJ_ROOT,
    )


@pytest.fixture()
def processed(tmp_path: Path) -> Path:
    root = tmp_path / "processed"
    write_processed(root, "toy")
    return root


def test_primary_labels_take_the_first_genre_or_the_product_group() -> None:
    items = pd.DataFrame(
        {"item_idx": [1, 2, 3, 4], "genres": ["Drama|Comedy", "Action, Crime", ["Horror"], None]}
    )
    labels, kind = figures.primary_labels(items)
    assert labels.to_dict() == {1: "Drama", 2: "Action", 3: "Horror", 4: "(none)"}
    assert kind == "primary genre"
    hm = pd.DataFrame({"item_idx": [1, 2], "product_group_name": ["Garment Upper body", None]})
    labels, kind = figures.primary_labels(hm)
    assert labels.to_dict() == {1: "Garment Upper body", 2: "(none)"}
    assert kind == "product group"
    with pytest.raises(RecsysError, match="neither a 'genres' nor a 'product_group_name'"):
        figures.primary_labels(pd.DataFrame({"item_idx": [1], "title": ["x"]}))


def test_stratified_sample_keeps_the_forced_items_and_the_label_shares() -> None:
    labels = np.array(["a"] * 600 + ["b"] * 300 + ["c"] * 100)
    keep = np.array([950, 951])
    rows = figures.stratified_sample(labels, 100, seed=0, keep=keep)
    assert len(rows) == 100 and len(np.unique(rows)) == 100
    assert set(keep) <= set(rows)
    shares = {label: int((labels[rows] == label).sum()) for label in "abc"}
    # 98 drawn in proportion 6:3:1 (59/29/10 after rounding) plus the two forced "c" items
    assert shares == {"a": 59, "b": 29, "c": 12}
    assert np.array_equal(rows, figures.stratified_sample(labels, 100, seed=0, keep=keep))
    assert np.array_equal(figures.stratified_sample(labels, 5000, seed=0), np.arange(1000))


def test_knn_agreement_is_high_for_clustered_labels_and_near_chance_for_noise() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.array(["x", "y", "z"]), 50)
    centres = {"x": [10, 0, 0], "y": [0, 10, 0], "z": [0, 0, 10]}
    clustered = np.stack([np.array(centres[lab]) + rng.normal(size=3) for lab in labels])
    assert figures.knn_label_agreement(clustered, labels) == pytest.approx(1.0)
    noise = rng.normal(size=(150, 16))
    chance = figures.chance_agreement(labels)
    assert chance == pytest.approx(3 * 50 * 49 / (150 * 149))
    assert abs(figures.knn_label_agreement(noise, labels) - chance) < 0.1
    assert figures.chance_agreement(np.array(["a", "a", "b", "b"])) == pytest.approx(1 / 3)


def test_draw_tsne_gives_two_panels_the_same_items_and_a_record(processed: Path) -> None:
    data = load_processed("toy", processed)
    labels, kind = figures.primary_labels(data.items)
    idx = np.arange(1, data.n_items + 1)
    rng = np.random.default_rng(1)
    inputs = figures.TsneInputs(
        idx,
        labels.loc[idx].to_numpy(),
        kind,
        [
            figures.Space("text", "text vectors", rng.normal(size=(len(idx), 12))),
            figures.Space("learned", "learned table", rng.normal(size=(len(idx), 6))),
        ],
    )
    popular = figures.most_popular(data.items, figures.N_LABELLED)
    fig, record = figures.draw_tsne(inputs, figures.item_titles(data.items), popular, 40, seed=0)
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.collections]
    assert len(panels) == 2
    assert [len(ax.collections[0].get_offsets()) for ax in panels] == [40, 40]
    named = {t.get_text() for t in panels[0].texts}
    top_title = figures.item_titles(data.items).loc[popular[0]]
    assert any(top_title.startswith(text.rstrip("…")) for text in named)
    assert len(panels[0].texts) == figures.N_LABELLED
    assert record["n_items_used"] == 40 and record["n_items_total"] == data.n_items
    assert record["sampled"] is True
    assert set(record["spaces"]) == {"text", "learned"}
    assert all(0.0 <= s["agreement"] <= 1.0 for s in record["spaces"].values())
    assert "40 of 60 items" in fig._suptitle.get_text()


def test_make_tsne_without_features_or_runs_says_what_to_run(processed: Path, tmp_path) -> None:
    with pytest.raises(RecsysError, match="make features DATASET=toy"):
        plots.make_tsne(
            "toy",
            figures_dir=tmp_path / "figures",
            processed_dir=processed,
            models_dir=tmp_path / "models",
        )
    with pytest.raises(RecsysError, match="--max-items must be at least 2"):
        plots.make_tsne("toy", max_items=1, processed_dir=processed)


def test_without_text_features_the_learned_space_is_drawn_alone(
    processed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import recsys.modeling.runs as runs

    data = load_processed("toy", processed)

    class Table:
        def item_table(self) -> torch.Tensor:
            return torch.randn(data.n_catalogue + 1, 8, generator=torch.Generator().manual_seed(0))

    def fake_load_run(run_dir: Path) -> runs.TrainedRun:
        config = {"item_repr": "id", "cold_items": 0.1, "seed": 42, "cold_seed": 3}
        return runs.TrainedRun(model=Table(), config=config, dataset="toy", run_dir=run_dir)

    monkeypatch.setattr(runs, "load_trained_run", fake_load_run)
    inputs = plots.gather_tsne_inputs(data, tmp_path / "sasrec-ce", None, processed)
    assert [s.name for s in inputs.spaces] == ["learned"]
    assert inputs.notes[0].startswith("no text features, so only the learned space is drawn")
    cold = set(cold_item_set(data.n_items, 0.1, 3))
    assert len(inputs.item_idx) == data.n_items - len(cold) and not cold & set(inputs.item_idx)
    assert inputs.spaces[0].vectors.shape == (len(inputs.item_idx), 8)


@pytest.mark.parametrize(
    "model, path, label",
    [
        ("org/some-encoder", None, "org/some-encoder"),
        ("/models/e5-small", "/models/e5-small", "e5-small"),
    ],
)
def test_the_text_panel_names_the_model_its_manifest_records(
    processed: Path, model: str, path: str | None, label: str
) -> None:
    from recsys import text_features

    data = load_processed("toy", processed)
    texts = text_features.write_item_texts("toy", processed_root=processed).table["text"].tolist()
    npy, manifest = text_features.feature_paths("toy", text_features.model_slug(None), processed)
    npy.parent.mkdir(parents=True)
    vectors = np.random.default_rng(0).normal(size=(data.n_catalogue + 1, 6)).astype(np.float32)
    vectors[0] = 0.0
    np.save(npy, vectors)
    record = {"model": model, "path": path, "encoder": "sentence-transformers", "dim": 6}
    record |= {"pooling": "mean", "max_length": 256, "normalize": True, "n_items": len(texts)}
    write_json({**record, "texts_sha256": text_features.texts_sha256(texts)}, manifest)
    inputs = plots.gather_tsne_inputs(data, None, None, processed)
    assert [s.description for s in inputs.spaces] == [f"frozen text vectors of {label}"]


def write_log(run_dir: Path, rows: int = 4) -> None:
    log = pd.DataFrame(
        {
            "epoch": range(rows),
            "train_loss": np.linspace(4, 2, rows),
            "val_loss": np.linspace(4.5, 3, rows),
            "val_ndcg@10": np.linspace(0.01, 0.2, rows),
            "val_hr@10": np.linspace(0.02, 0.3, rows),
        }
    )
    (run_dir / "logs").mkdir(parents=True)
    log.to_csv(run_dir / "logs" / "metrics.csv", index=False)


def test_curves_draw_every_run_and_reject_bad_logs(tmp_path: Path) -> None:
    models = tmp_path / "models"
    write_log(models / "toy" / "sasrec-ce", rows=4)
    write_log(models / "toy" / "gpt-text", rows=6)
    paths = plots.make_curves("toy", figures_dir=tmp_path / "figures", models_dir=models)
    assert [p.name for p in paths] == ["curves.png", "curves.svg"]
    assert all(p.stat().st_size > 1000 for p in paths)
    logs = {r.name: plots.read_curves(r) for r in plots.run_dirs_with_logs("toy", models)}
    fig = figures.plot_curves(logs)
    assert [len(ax.lines) for ax in fig.axes] == [2, 2, 4]  # NDCG: a line and a star per run
    gpt_line, gpt_star, sasrec_line, sasrec_star = fig.axes[2].lines  # runs in name order
    assert [len(gpt_line.get_xdata()), len(sasrec_line.get_xdata())] == [6, 4]
    assert list(gpt_star.get_xdata()) == [5] and list(sasrec_star.get_xdata()) == [3]

    broken = models / "toy" / "broken"
    (broken / "logs").mkdir(parents=True)
    (broken / "logs" / "metrics.csv").write_text("epoch,train_loss\n0,1.0\n")
    with pytest.raises(RecsysError, match="lacks columns val_loss, val_ndcg@10"):
        plots.read_curves(broken)
    with pytest.raises(RecsysError, match="make train DATASET=toy"):
        plots.make_curves("toy", models_dir=tmp_path / "empty")
    with pytest.raises(RecsysError, match="no run 'nope'.*choose one of broken, gpt-text"):
        plots.make_curves("toy", run_name="nope", models_dir=models)


def test_metrics_plot_has_one_bar_and_error_bar_per_model(tmp_path: Path) -> None:
    report = metrics_report("toy")
    fig = figures.plot_metrics(report)
    ndcg_ax, hr_ax = fig.axes[:2]
    assert len(ndcg_ax.patches) == len(report["models"])
    widths = sorted(round(p.get_width(), 4) for p in ndcg_ax.patches)
    expected = sorted(m["test"]["ndcg@10"]["value"] for m in report["models"])
    assert widths == expected
    labels = {t.get_text().strip() for t in ndcg_ax.texts}
    assert {f"{v:.4f}" for v in expected} == labels
    assert [t.get_text() for t in ndcg_ax.get_yticklabels()][-1] == "gpt-hybrid"

    write_json(report, tmp_path / "metrics" / "toy.json")
    paths = plots.make_metrics("toy", tmp_path / "metrics", tmp_path / "figures")
    assert {p.suffix for p in paths} == {".png", ".svg"}
    assert not list((tmp_path / "figures" / "toy").glob(".*tmp"))
    with pytest.raises(RecsysError, match="make evaluate DATASET=other"):
        plots.make_metrics("other", tmp_path / "metrics", tmp_path / "figures")
    (tmp_path / "metrics" / "bad.json").write_text('{"models": "nope"}')
    with pytest.raises(RecsysError, match="no 'models' list"):
        plots.make_metrics("bad", tmp_path / "metrics", tmp_path / "figures")


def test_sample_recommendations_mask_the_history_and_rank_the_held_out_item(
    processed: Path,
) -> None:
    data = load_processed("toy", processed)

    class ById:
        """Scores every catalogue item by its id: cold items (> n_items) would win unmasked."""

        def score(self, item_seq: torch.Tensor) -> torch.Tensor:
            return torch.arange(data.n_catalogue + 1.0).repeat(len(item_seq), 1)

    recs = plots.sample_recommendations(
        data.events, data.items, data.users, data.n_items, ById(), n_users=3, k=10, seed=0
    )
    assert len(recs) == 3
    examples = eval_examples(data.events, "test")
    for user in recs:
        history = examples.histories[int(np.flatnonzero(examples.users == user.user_idx)[0])]
        rec_ids = [r["item_idx"] for r in user.recommendations]
        assert len(rec_ids) == 10 and all(1 <= i <= data.n_items for i in rec_ids)
        assert rec_ids == sorted(rec_ids, reverse=True)
        assert not set(history) & set(rec_ids)
        assert [i["item_idx"] for i in user.last_items] == list(history[-10:])
        target = user.held_out["item_idx"]
        better = set(range(target + 1, data.n_items + 1)) - set(history)
        assert user.held_out_rank == len(better) + 1
        assert user.recommendations[0]["caption"].endswith(")")
    fig = figures.plot_recs(recs)
    texts = [t.get_text() for t in fig.texts]
    assert sum(t.startswith("User ") for t in texts) == 3
    assert any(recs[0].recommendations[0]["title"] in t for t in texts)


def test_save_figure_writes_png_and_svg_atomically(tmp_path: Path) -> None:
    fig = figures.plot_curves({"r": pd.DataFrame({c: [0, 1] for c in figures.CURVE_COLUMNS})})
    paths = figures.save_figure(fig, tmp_path / "figs", "curves")
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in paths[1].read_bytes()[:500]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["curves.png", "curves.svg"]


@pytest.mark.slow
def test_all_skips_what_is_missing_and_errors_when_nothing_can_be_drawn(tmp_path: Path) -> None:
    write_json(metrics_report("toy"), tmp_path / "metrics" / "toy.json")
    common = [
        "--figures-dir",
        str(tmp_path / "figures"),
        "--processed-dir",
        str(tmp_path / "processed"),
        "--models-dir",
        str(tmp_path / "models"),
        "--metrics-dir",
        str(tmp_path / "metrics"),
    ]
    done = run_cli("all", "--dataset", "toy", *common)
    assert done.returncode == 0, done.stderr
    assert "metrics: drawn" in done.stdout
    assert "curves: skipped: no training logs" in done.stdout
    assert "tsne: skipped: processed data for 'toy' is missing" in done.stdout
    assert (tmp_path / "figures" / "toy" / "metrics.png").exists()

    nothing = run_cli("all", "--dataset", "none", *common)
    assert nothing.returncode == 1
    assert nothing.stderr.strip().splitlines()[-1].startswith("error: no figure could be drawn")
    assert "Traceback" not in nothing.stderr


@pytest.mark.slow
def test_metrics_command_without_a_metrics_file_is_one_line(tmp_path: Path) -> None:
    done = run_cli("metrics", "--dataset", "toy", "--metrics-dir", str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"error: {tmp_path / 'toy.json'} does not exist; run 'make evaluate DATASET=toy' first"
    )


@pytest.mark.slow
def test_the_figure_library_imports_neither_modeling_nor_serving() -> None:
    """The tuner (in modeling) draws with recsys.figures, so figures must not reach back up."""
    layers = ("recsys.modeling", "recsys.serving", "recsys.api")
    source = (PROJ_ROOT / "recsys" / "figures.py").read_text()
    assert not any(layer in source for layer in layers)
    probe = f"import recsys.figures, sys; print(any(m.startswith({layers}) for m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=PROJ_ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
