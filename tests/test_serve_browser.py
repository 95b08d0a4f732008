"""The service's demo page in headless Chromium: type a title, pick the suggestion, recommend.

The app runs under a real uvicorn server in a thread (same origin for the page and the API);
Chromium is found and skipped or failed the way ``test_site_browser.py`` does.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from evaluate_helpers import DATASET, TITLES
from conftest import SCREENSHOTS

from recsys.api.loading import load_run
from recsys.serving.app import create_app

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def service_url(world, tmp_path_factory) -> Iterator[str]:
    """The id run (a copy: loading writes its index) served on a free 127.0.0.1 port."""
    import uvicorn

    run_dir = shutil.copytree(world.id_run, tmp_path_factory.mktemp("demo") / "tiny-id")
    app = create_app(load_run(run_dir, DATASET, processed_dir=world.processed))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_a_history_from_suggestions_gets_recommendations(browser: Any, service_url: str) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    failed: list[str] = []
    errors: list[str] = []
    page = context.new_page()
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.on("response", lambda resp: failed.append(resp.url) if resp.status >= 400 else None)
    page.on("pageerror", lambda err: errors.append(str(err)))
    try:
        page.goto(service_url)
        page.wait_for_selector("#run-info:has-text('tiny-id')")

        page.fill("#title-input", "toy")
        suggestion = page.locator("#suggestions li").first
        suggestion.wait_for()
        assert suggestion.inner_text().startswith(TITLES[1])
        suggestion.dispatch_event("mousedown")
        page.type("#title-input", "heat")  # key by key, as a person types
        page.wait_for_selector(f"#suggestions li:first-child:has-text('{TITLES[2]}')")
        page.press("#title-input", "Enter")  # picks the highlighted (first) suggestion
        history = page.eval_on_selector_all(
            "#history li", "items => items.map(li => li.firstChild.textContent)"
        )
        assert history == [TITLES[1], TITLES[2]]

        page.fill("#k-input", "5")
        page.click("#recommend")
        rows = page.locator("#results tbody tr")
        rows.nth(4).wait_for()
        header = page.locator("#results thead th").all_inner_texts()
        assert header[:2] == ["rank", "title"] and header[-1] == "score"
        cells = [row.locator("td").all_inner_texts() for row in rows.all()]
        assert [c[0] for c in cells] == ["1", "2", "3", "4", "5"]
        titles = [c[1] for c in cells]
        assert all(titles) and not {TITLES[1], TITLES[2]} & set(titles)
        scores = [float(c[-1]) for c in cells]
        assert scores == sorted(scores, reverse=True)
        assert "tiny-id" in page.inner_text("#answered-by")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "serve-demo.png"), full_page=True)
    finally:
        context.close()
    assert not failed, f"requests that failed: {failed}"
    assert not errors, f"script errors on the page: {errors}"
