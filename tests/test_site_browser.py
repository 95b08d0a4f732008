"""The report site of a tiny real run, opened in headless Chromium.

The pipeline runs for real on a small synthetic dataset in a temporary folder: processed data ->
item texts and BERT vectors -> a 3-epoch training run -> evaluation with bootstrap CIs -> every
plot -> the report pages -> ``mkdocs build --strict``. Chromium then checks what a reader sees.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SCREENSHOTS
from report_helpers import write_processed

from recsys.io import read_json

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DATASET = "toy"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every stage of ``make all`` on synthetic data, with the stages' own functions."""
    from recsys.text_features import embed_items, write_item_texts
    from recsys.modeling.evaluate import evaluate
    from recsys.modeling.training import train
    from recsys.plots import make_all
    from recsys.report import make_report
    from recsys.semantic_ids import SemanticIdOptions, build_semantic_ids

    root = tmp_path_factory.mktemp("pipeline")
    dirs = {
        "processed_dir": root / "processed",
        "models_dir": root / "models",
        "metrics_dir": root / "metrics",
        "figures_dir": root / "figures",
    }
    write_processed(dirs["processed_dir"], DATASET)
    write_item_texts(DATASET, processed_root=dirs["processed_dir"])
    embed_items(DATASET, processed_root=dirs["processed_dir"], progress=False)
    # 64 items: fewer than the default 256 codes a level, so a small residual k-means.
    small = SemanticIdOptions(method="rqkmeans", levels=2, codebook_size=8)
    build_semantic_ids(DATASET, small, processed_root=dirs["processed_dir"])
    tiny = {"d_model": 16, "n_layers": 1, "max_len": 16, "batch_size": 64}
    train(
        DATASET,
        "sasrec-ce",
        tiny,
        max_epochs=3,
        processed_root=dirs["processed_dir"],
        models_dir=dirs["models_dir"],
        progress_bar=False,
    )
    metrics_path = evaluate(
        DATASET,
        n_bootstrap=50,
        processed_dir=dirs["processed_dir"],
        models_dir=dirs["models_dir"],
        metrics_dir=dirs["metrics_dir"],
        device="cpu",
    )
    drawn = make_all(
        DATASET,
        figures_dir=dirs["figures_dir"],
        processed_dir=dirs["processed_dir"],
        models_dir=dirs["models_dir"],
        metrics_dir=dirs["metrics_dir"],
    )
    figures = ("metrics", "curves", "tsne", "recs", "semantic_ids")
    assert drawn == {name: "drawn" for name in figures}
    site = {"docs_dir": root / "docs", "site_dir": root / "site", "bench_dir": root / "bench"}
    make_report([DATASET], **dirs, **site)
    return {"site": root / "site", "metrics": read_json(metrics_path)}


@pytest.fixture(scope="module")
def site_url(tiny_run: dict[str, Any]) -> Iterator[str]:
    """The built site over HTTP on 127.0.0.1 (search and relative links as a user gets them)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tiny_run["site"]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.fixture()
def open_page(browser: Any, site_url: str) -> Iterator[Any]:
    """Open a page of the site, fail on any request that did not load, save a screenshot."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    failed: list[str] = []

    def visit(name: str) -> Any:
        page = context.new_page()
        page.on("requestfailed", lambda request: failed.append(request.url))
        page.on("response", lambda resp: failed.append(resp.url) if resp.status >= 400 else None)
        page.goto(f"{site_url}/{name}.html")
        page.wait_for_load_state("networkidle")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
        return page

    yield visit
    context.close()
    assert not failed, f"requests that failed: {failed}"


def first_table_after(page: Any, heading_id: str) -> tuple[list[str], dict[str, list[str]]]:
    """Header cells and rows (first cell -> cells) of the first table after a heading."""
    header, rows = page.eval_on_selector(
        f"#{heading_id}",
        """h => {
            let el = h.nextElementSibling;
            while (el && el.tagName !== 'TABLE' && !el.querySelector('table')) {
                el = el.nextElementSibling;
            }
            const table = el.tagName === 'TABLE' ? el : el.querySelector('table');
            const text = cells => [...cells].map(c => c.innerText.trim());
            return [text(table.querySelectorAll('thead th')),
                    [...table.querySelectorAll('tbody tr')].map(tr => text(tr.cells))];
        }""",
    )
    return header, {cells[0]: cells for cells in rows}


def test_results_table_shows_the_metrics_file(open_page: Any, tiny_run: dict) -> None:
    header, rows = first_table_after(open_page("results"), "test-split-cutoff-10")
    models = tiny_run["metrics"]["models"]
    assert set(rows) == {m["name"] for m in models}
    assert {"sasrec-ce", "most-popular"} <= set(rows)
    for model in models:
        for metric in ("HR@10", "NDCG@10"):
            cell = model["test"][metric.lower()]
            shown = rows[model["name"]][header.index(metric)]
            assert shown.startswith(f"{cell['value']:.4f}"), (model["name"], metric, shown)
            assert f"[{cell['low']:.4f}, {cell['high']:.4f}]" in shown


@pytest.mark.parametrize("name", ["embeddings", "training"])
def test_every_figure_loads(open_page: Any, name: str) -> None:
    page = open_page(name)
    images = page.eval_on_selector_all(
        "article img", "imgs => imgs.map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
    )
    assert images, f"{name} shows no figure"
    for src, complete, width in images:
        assert complete and width > 0, f"{src} did not load on {name}"


@pytest.mark.parametrize("name", ["index", "recommendations", "reproducibility"])
def test_other_pages_render(open_page: Any, name: str) -> None:
    page = open_page(name)
    text = page.inner_text("article")
    assert "Not yet run" not in text
    if name == "recommendations":
        assert text.count("last items (oldest first)") == 3
    if name == "reproducibility":
        assert "python -m recsys.modeling.train --dataset toy --config sasrec-ce" in text
