"""The report generator on hand-written stage outputs: numbers only from files, strict mkdocs."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from report_helpers import metrics_report, write_processed

from recsys import report
from recsys.cli import RecsysError
from recsys.io import write_json

PROJ_ROOT = Path(__file__).resolve().parents[1]
FOUR_DECIMALS = re.compile(r"(?<![\d.])\d+\.\d{4}(?![\d])")


def folders(tmp_path: Path) -> dict[str, Path]:
    configs = tmp_path / "configs"
    configs.mkdir(exist_ok=True)
    (configs / "sasrec-ce.yaml").write_text("item_repr: id\nlr: 0.001\nmax_epochs: 50\n")
    return {
        "metrics_dir": tmp_path / "metrics",
        "figures_dir": tmp_path / "figures",
        "models_dir": tmp_path / "models",
        "processed_dir": tmp_path / "processed",
        "configs_dir": configs,
    }


def numbers_in(obj: object) -> set[str]:
    """Every float of a JSON document, formatted as the report formats metric values."""
    if isinstance(obj, dict):
        return set().union(*(numbers_in(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(numbers_in(v) for v in obj)) if obj else set()
    return {f"{obj:.4f}"} if isinstance(obj, float) else set()


def test_results_show_exactly_the_numbers_of_the_metrics_file(tmp_path: Path) -> None:
    dirs = folders(tmp_path)
    metrics = metrics_report("toy")
    write_json(metrics, dirs["metrics_dir"] / "toy.json")
    pages = report.render_pages([report.collect("toy", **dirs)])
    results = pages["results"]
    for model in metrics["models"]:
        row = next(line for line in results.splitlines() if line.startswith(f"| {model['name']} "))
        for key in ("hr@10", "ndcg@10", "mrr@10", "coverage@10", "popularity@10"):
            cell = model["test"][key]
            assert f"{cell['value']:.4f} <small>[{cell['low']:.4f}, {cell['high']:.4f}]" in row
    shown = set(FOUR_DECIMALS.findall(results))
    assert shown and shown <= numbers_in(metrics)
    sig = metrics["significance"]
    assert f"{sig['delta']:.4f} [{sig['low']:.4f}, {sig['high']:.4f}]" in results
    assert "p = 0.0009" in results
    cold = metrics["cold_start"]["models"][0]
    assert f"| {cold['name']} | text | yes | {cold['hr@10']['value']:.4f}" in results
    assert "There is no metrics file" not in results


def test_a_missing_metrics_file_shows_not_yet_run_and_the_command(tmp_path: Path) -> None:
    pages = report.render_pages([report.collect("ml-100k", **folders(tmp_path))])
    results = pages["results"]
    assert "Not yet run" in results
    assert "make evaluate DATASET=ml-100k" in results
    assert not FOUR_DECIMALS.findall(results)
    for page in ("index", "embeddings", "recommendations", "training", "reproducibility"):
        assert "Not yet run" in pages[page], page
        assert not FOUR_DECIMALS.findall(pages[page]), page
    assert "make plots DATASET=ml-100k" in pages["embeddings"]
    assert "make data DATASET=ml-100k" in pages["index"]


def test_missing_sections_of_a_metrics_file_are_said_so(tmp_path: Path) -> None:
    dirs = folders(tmp_path)
    metrics = metrics_report("toy", cold_start=False)
    metrics["significance"] = None
    write_json(metrics, dirs["metrics_dir"] / "toy.json")
    results = report.render_pages([report.collect("toy", **dirs)])["results"]
    assert "has no significance test" in results
    assert 'EVALUATE_ARGS="--cold-items 0.1"' in results


def test_results_show_seeds_and_the_spread_of_a_config_run_with_several(tmp_path: Path) -> None:
    dirs = folders(tmp_path)
    metrics = metrics_report("toy")
    seeded = metrics["models"][1]  # sasrec-ce, now the mean of three seeds
    seeded.update(n_seeds=3, seeds=[42, 1, 2], runs=["a-seed42", "a-seed1", "a-seed2"])
    for split in ("test", "valid"):
        for i, key in enumerate(("ndcg@10", "hr@10")):
            seeded[split][key].update(std=0.0071 + i / 1000, min=0.2391 + i, max=0.2547 + i)
    metrics["models"][0].update(n_seeds=1, seeds=[42], runs=["gpt-hybrid"])
    metrics["significance"].update(model="sasrec-ce", n_seeds=3)
    write_json(metrics, dirs["metrics_dir"] / "toy.json")
    results = report.render_pages([report.collect("toy", **dirs)])["results"]
    lines = results.splitlines()

    def main_row(name: str, kind: str) -> str:
        return next(line for line in lines if line.startswith(f"| {name} | {kind} |"))

    assert "| 23,456 | 3 | " in main_row("sasrec-ce", "trained")
    assert "| 12,345 | 1 | " in main_row("gpt-hybrid", "trained")
    assert "| — | — | " in main_row("ease", "baseline")  # a baseline has no params and no seeds
    assert (
        "| sasrec-ce | 3 | test | 0.0071 | 0.2391..0.2547 | 0.0081 | 1.2391..1.2547 |" in results
    )
    assert "| sasrec-ce | 3 | valid | 0.0071 |" in results
    assert "sasrec-ce (mean of 3 seeds) against ease" in results
    shown = set(FOUR_DECIMALS.findall(results))
    assert shown and shown <= numbers_in(metrics)

    del metrics["models"][1]["n_seeds"]
    write_json(metrics, dirs["metrics_dir"] / "toy.json")
    results = report.render_pages([report.collect("toy", **dirs)])["results"]
    assert "run with one seed" in results and "SEEDS=42,1,2" in results


def write_run(models_dir: Path, dataset: str, name: str, **changes: object) -> Path:
    """A run folder as training writes it: the resolved config of configs/sasrec-ce.yaml."""
    from recsys.modeling.configs import resolve_config

    run_dir = models_dir / dataset / name
    run_dir.mkdir(parents=True)
    config = resolve_config(
        "sasrec-ce", dataset, changes, configs_dir=models_dir.parent / "configs"
    )
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    summary = {"run": name, "best_epoch": 3, "best_val_ndcg@10": 0.1234, "tokens_per_s": 12345.6}
    write_json(summary, run_dir / "metrics.json")
    return run_dir


def test_other_pages_quote_their_files(tmp_path: Path) -> None:
    dirs = folders(tmp_path)
    write_processed(dirs["processed_dir"], "toy")
    write_run(dirs["models_dir"], "toy", "sasrec-ce", lr=0.002, cold_items=0.1, max_epochs=3)
    tsne = {
        "k": 10,
        "label": "primary genre",
        "n_items_used": 55,
        "n_items_total": 60,
        "sampled": True,
        "seed": 0,
        "run": "models/toy/sasrec-ce",
        "chance_agreement": 0.1502,
        "spaces": {"text": {"description": "frozen BERT text vectors", "agreement": 0.7361}},
        "notes": ["no trained run, so only the text space is drawn"],
    }
    write_json(tsne, dirs["figures_dir"] / "toy" / "tsne_knn_agreement.json")
    pages = report.render_pages([report.collect("toy", **dirs)])
    assert "| text | frozen BERT text vectors | 0.736 |" in pages["embeddings"]
    assert "| chance | random neighbours, same genre mix | 0.150 |" in pages["embeddings"]
    assert "55 of 60 items (a stratified sample" in pages["embeddings"]
    assert "| `best_val_ndcg@10` | 0.1234 |" in pages["training"]
    assert "| `tokens_per_s` | 12,345.6 |" in pages["training"]
    repro = pages["reproducibility"]
    assert 'make all DATASET=toy CONFIGS="sasrec-ce"' in repro
    assert "    config_name: sasrec-ce\n    family: sasrec\n    item_repr: id" in repro
    assert (
        "python -m recsys.modeling.train --dataset toy --config sasrec-ce \\\n    "
        "--set lr=0.002 \\\n    --set max_epochs=3 \\\n    --set cold_items=0.1 \\\n    "
        "--run-name sasrec-ce\n" in repro
    )
    assert "| ratings.csv | 4,321 | `0123456789abcdef0123456789abcdef` | yes |" in repro
    assert f"| torch | {importlib.metadata.version('torch')} |" in repro
    assert "| toy | 40 | 60 | 64 |" in pages["index"]
    for text in pages.values():
        body = text.split("---\n")[-1] if text.startswith("---") else text
        assert body.startswith("<!-- GENERATED by `python -m recsys.report`")


def test_config_values_are_written_so_that_set_reads_them_back() -> None:
    for value in ["cosine", "true", "1", None, 0.002, 3, True]:
        assert yaml.safe_load(report._scalar(value)) == value


def test_markdown_cells_escape_titles_and_numbers_keep_their_digits() -> None:
    assert report.md("Film | part *1* <b>") == r"Film \| part \*1\* \<b\>"
    assert report.number(0.12345) == "0.1235"
    assert report.number(1682) == "1,682"
    assert report.number(None) == "—"
    assert report.with_ci({"value": 0.5, "low": None, "high": None}) == "0.5000"
    assert report.split_name({"kind": "temporal"}) == "temporal"


@pytest.mark.slow
def test_make_report_builds_a_strict_site_with_the_figures(tmp_path: Path) -> None:
    dirs = folders(tmp_path)
    write_json(metrics_report("toy"), dirs["metrics_dir"] / "toy.json")
    figure_dir = dirs["figures_dir"] / "toy"
    figure_dir.mkdir(parents=True)
    from recsys.plots import make_metrics

    make_metrics("toy", dirs["metrics_dir"], dirs["figures_dir"])
    report.make_report(
        ["toy", "toy"],
        **dirs,
        docs_dir=tmp_path / "docs",
        site_dir=tmp_path / "site",
        bench_dir=tmp_path / "bench",
    )
    assert (tmp_path / "docs" / "figures" / "toy" / "metrics.svg").exists()
    html = (tmp_path / "site" / "results.html").read_text()
    assert "0.3152" in html and 'src="figures/toy/metrics.png"' in html
    assert html.count('<h2 id="toy"') == 1
    for page in report.PAGES:
        assert (tmp_path / "site" / f"{page}.html").exists()


@pytest.mark.slow
def test_corrupt_inputs_are_one_line_errors(tmp_path: Path) -> None:
    dirs = folders(tmp_path)
    dirs["metrics_dir"].mkdir()
    (dirs["metrics_dir"] / "toy.json").write_text("{not json")
    with pytest.raises(RecsysError, match="toy.json is not valid JSON"):
        report.collect("toy", **dirs)
    (dirs["metrics_dir"] / "toy.json").write_text('{"dataset": "toy"}')
    with pytest.raises(RecsysError, match="no 'models' list"):
        report.collect("toy", **dirs)
    run_dir = write_run(dirs["models_dir"], "other", "broken")
    (run_dir / "config.yaml").write_text("a: [unclosed")
    with pytest.raises(RecsysError, match="config.yaml is not valid YAML"):
        report.collect("other", **dirs)
    with pytest.raises(RecsysError, match="no page templates"):
        report.render_pages([], templates_dir=tmp_path)

    done = subprocess.run(
        [sys.executable, "-m", "recsys.report", "--dataset", "toy", "--no-build"]
        + [f"--{key.replace('_', '-')}={value}" for key, value in dirs.items()]
        + [f"--docs-dir={tmp_path / 'docs'}"],
        capture_output=True,
        text=True,
        cwd=PROJ_ROOT,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: " + f"{dirs['metrics_dir'] / 'toy.json'} has no 'models' list; "
        "re-run 'make evaluate DATASET=toy'"
    ]
    assert not (tmp_path / "docs").exists()


def test_a_strict_mkdocs_warning_fails_the_build_and_keeps_the_old_site(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for page in report.PAGES:
        (docs / f"{page}.md").write_text(f"# {page}\n")
    (docs / "training.md").write_text("# training\n\n![curves](figures/toy/missing.png)\n")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("old site")
    with pytest.raises(RecsysError, match="mkdocs build --strict .*missing.png"):
        report.build_site(docs, site)
    assert (site / "index.html").read_text() == "old site"


def test_results_show_the_generative_test_and_blank_cutoffs(tmp_path: Path) -> None:
    dirs = folders(tmp_path)
    metrics = metrics_report("toy")
    tiger = metrics["models"][0]
    tiger.update(name="tiger", item_repr="semantic", max_k=20)
    tiger["test"]["hr@50"] = {"value": None, "low": None, "high": None}
    metrics["generative"] = {
        **metrics["significance"],
        "model": "tiger",
        "baseline": "sasrec-ce",
        "delta": -0.0123,
        "low": -0.0201,
        "high": -0.0044,
        "p_value": 0.002,
    }
    write_json(metrics, dirs["metrics_dir"] / "toy.json")
    results = report.render_pages([report.collect("toy", **dirs)])["results"]
    flat = " ".join(results.split())
    assert "Generative retrieval: tiger against sasrec-ce on the same test users" in flat
    assert "difference -0.0123 [-0.0201, -0.0044], p = 0.0020" in flat


def test_training_page_shows_the_loss_study_or_how_to_run_it(tmp_path: Path) -> None:
    dirs = folders(tmp_path)
    bench = tmp_path / "bench"
    assert report.read_loss_study(bench) is None
    pages = report.render_pages([report.collect("toy", **dirs)])
    assert "make bench BENCH=losses" in pages["training"]
    chosen = [
        {
            "dataset": "toy",
            "architecture": "mf",
            "loss": "ccl",
            "negatives_drawn": "16 per position",
            "lr": 0.003,
            "best_val_ndcg@10": 0.05123,
            "test_ndcg@10": 0.04321,
            "test_hr@10": 0.0876,
            "seconds_per_epoch": 0.35,
        }
    ]
    write_json({"runs": chosen}, bench / "losses.json")  # still running: none chosen yet
    study = report.read_loss_study(bench)
    page = report.render_pages([report.collect("toy", **dirs)], loss_study=study)["training"]
    assert "The loss study has not finished: 1 runs so far." in page
    study = {"runs": chosen, "chosen": chosen, "selection": "lr chosen on validation"}
    write_json(study, bench / "losses.json")
    study = report.read_loss_study(bench)
    assert study is not None and not study["figure"]
    page = report.render_pages([report.collect("toy", **dirs)], loss_study=study)["training"]
    assert "| toy | mf | ccl | 16 per position | 0.003 | 0.0512 | 0.0432 | 0.0876 | 0.35 |" in page
    write_json({"chosen": 3}, bench / "losses.json")
    with pytest.raises(RecsysError, match="losses.json is not a loss study"):
        report.read_loss_study(bench)
