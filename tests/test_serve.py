"""The HTTP service: every endpoint and every bad request through FastAPI's TestClient, the CLI's
one-line errors, and a real server process that reloads under concurrent load without a failure.

Runs are copied out of the shared ``world`` first: loading one writes its item index into the
run folder, and adding items writes ``added_items.parquet`` there.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from evaluate_helpers import DATASET, N_COLD_CATALOGUE, N_ITEMS, TITLES
from fastapi.testclient import TestClient

from recsys import serve
from recsys.api.run import ADDED_ITEMS_FILE
from recsys.api.loading import load_run
from recsys.catalogue import Catalogue
from recsys.cli import run as run_cli
from recsys.serving.app import MAX_BODY_BYTES, MAX_K, create_app, run_loader
from recsys.text_features import write_item_texts

KEY = "s3cret-key"
HEADERS = {"X-API-Key": KEY}
N_CATALOGUE = N_ITEMS + N_COLD_CATALOGUE
PROJ_ROOT = Path(__file__).resolve().parents[1]


def copy_run(source: Path, root: Path) -> Path:
    return Path(shutil.copytree(source, root / source.name))


def fake_encoder(features: np.ndarray):
    """A stand-in for the run's text encoder: "... like Item 7 ..." gets item 7's vector."""

    def encode(texts: list[str]) -> np.ndarray:
        rows = []
        for text in texts:
            found = re.search(r"like Item (\d+)", text)
            rows.append(features[int(found.group(1)) if found else 1])
        return np.asarray(rows, dtype=np.float32)

    return encode


@contextmanager
def client_for(
    run_dir: Path,
    world,
    api_key: str | None = KEY,
    encoder: bool = True,
    processed: Path | None = None,
) -> Iterator[TestClient]:
    """A started app (lifespan run) over ``run_dir``; reloads get the stand-in encoder too."""
    processed = processed or world.processed
    base = run_loader(DATASET, run_dir, processed_dir=processed, models_dir=world.models)

    def loader(path: str | None):
        loaded = base(path)
        if encoder:
            loaded.text_encoder = fake_encoder(world.features)
        return loaded

    app = create_app(loader(None), api_key=api_key, loader=loader)
    with TestClient(app) as client:
        yield client


@pytest.fixture(scope="module")
def runs(world, tmp_path_factory) -> dict[str, Path]:
    """Read-only copies of the two runs, shared by the module's read-only clients."""
    root = tmp_path_factory.mktemp("serve-runs")
    return {"id": copy_run(world.id_run, root), "text": copy_run(world.text_run, root)}


@pytest.fixture(scope="module")
def client(runs, world) -> Iterator[TestClient]:
    """The id run, served with an API key; tests through it must not add items."""
    with client_for(runs["id"], world) as test_client:
        yield test_client


@pytest.fixture()
def text_client(world, tmp_path) -> Iterator[TestClient]:
    """A writable copy of the text run (cold items, accepts new items by their text)."""
    with client_for(copy_run(world.text_run, tmp_path), world) as test_client:
        yield test_client


def current_run(client: TestClient):
    return client.app.state.service.current.run


def recommend(client: TestClient, **body) -> httpx.Response:
    return client.post("/v1/recommend", json=body)


def ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def metric(text: str, line_start: str) -> float:
    """The value of the one exposition line starting with ``line_start``."""
    lines = [line for line in text.splitlines() if line.startswith(line_start)]
    assert len(lines) == 1, (line_start, lines)
    return float(lines[0].rsplit(" ", 1)[1])


# ------------------------------------------------------------------------------ recommending


def test_recommend_for_a_user_leaves_out_the_history(client):
    run = current_run(client)
    _, history = run.user_history("5")
    response = recommend(client, user_id="5", k=7)
    body = response.json()
    assert response.status_code == 200
    assert (body["run"], body["item_repr"]) == (run.name, "id")
    assert body["model"] == run.info()["model"]
    items = body["items"]
    assert [item["rank"] for item in items] == list(range(1, 8))
    assert {"item_id", "title", "genres", "year", "score"} <= set(items[0])
    scores = [item["score"] for item in items]
    assert scores == sorted(scores, reverse=True)
    seen = {str(run.catalogue.record(int(i))["item_id"]) for i in history}
    assert not seen & set(ids(response))
    assert recommend(client, user_id=5, k=7).json() == body  # a JSON number is the same id


def test_a_history_by_ids_or_titles_is_one_answer_and_exclude_seen_can_be_lifted(client):
    by_ids = recommend(client, items=["1", "2"], k=5)
    by_titles = recommend(client, titles=[TITLES[1], "heat"], k=5)
    assert ids(by_ids) == ids(by_titles)
    assert not {"1", "2"} & set(ids(by_ids))
    rankable = int(current_run(client).rankable.sum())
    everything = ids(recommend(client, items=["1", "2"], k=rankable, exclude_seen=False))
    assert {"1", "2"} <= set(everything)


def test_exclude_items_and_categories_are_honoured(client):
    top = ids(recommend(client, user_id="3", k=3))
    without = ids(recommend(client, user_id="3", k=3, exclude_items=top[:2]))
    assert not set(top[:2]) & set(without) and without[0] == top[2]
    action = recommend(client, user_id="3", k=10, categories=["action"]).json()["items"]
    assert len(action) == 10 and all("Action" in item["genres"] for item in action)


def test_unknown_user_item_and_title_are_404_with_nearest_titles(client):
    user = recommend(client, user_id="nobody")
    assert user.status_code == 404 and "unknown user id 'nobody'" in user.json()["detail"]
    item = recommend(client, items=["1", "999999"])
    assert item.status_code == 404 and "999999" in item.json()["detail"]
    title = recommend(client, titles=[TITLES[1], "Qwerty zzz"])
    body = title.json()
    assert title.status_code == 404 and body["detail"].startswith("unknown title 'Qwerty zzz'")
    titles = set(current_run(client).catalogue.items["title"])
    assert len(body["nearest"]) == 3 and set(body["nearest"]) <= titles
    excluded = recommend(client, user_id="3", exclude_items=["nope"])
    assert excluded.status_code == 404


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"user_id": "1", "k": 0}, "body.k: Input should be greater than or equal to 1"),
        (
            {"user_id": "1", "k": MAX_K + 1},
            f"body.k: Input should be less than or equal to {MAX_K}",
        ),
        ({"user_id": "1", "items": ["1"]}, "give exactly one of user_id, items or titles"),
        ({}, "give exactly one of user_id, items or titles"),
        ({"items": []}, "the given history has no history"),
        ({"user_id": "1", "colour": "red"}, "body.colour: Extra inputs are not permitted"),
        ({"user_id": "1", "k": 99}, "k must be between 1 and the"),
    ],
)
def test_bad_requests_are_422_with_one_line(client, body, expected):
    response = recommend(client, **body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert expected in detail and "\n" not in detail


def test_malformed_json_and_oversized_bodies(client):
    broken = client.post(
        "/v1/recommend", content=b'{"user_id": ', headers={"Content-Type": "application/json"}
    )
    assert broken.status_code == 422
    assert broken.json()["detail"].startswith("request body is not valid JSON")
    big = {"items": ["1"] * (MAX_BODY_BYTES // 4)}
    declared = recommend(client, **big)  # refused by its Content-Length
    assert declared.status_code == 413 and f"{MAX_BODY_BYTES} bytes" in declared.json()["detail"]
    chunks = iter([b'{"items": [', b'"1", ' * (MAX_BODY_BYTES // 4), b'"1"]}'])
    streamed = client.post(  # no Content-Length: refused by the bytes actually read
        "/v1/recommend", content=chunks, headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413


def test_an_unexpected_error_is_a_logged_500_without_traceback(client, monkeypatch):
    def broken(self, query, limit):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(Catalogue, "search", broken)
    response = client.get("/v1/items/search", params={"q": "toy"})
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error (RuntimeError); the service logged it"}


# ------------------------------------------------------------------------------------- items


def test_similar_items(client):
    response = client.get("/v1/items/1/similar", params={"k": 4})
    assert len(ids(response)) == 4 and "1" not in ids(response)
    scores = [item["score"] for item in response.json()["items"]]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0001 for s in scores)
    assert isinstance(response.json()["items"][0]["year"], int)
    assert client.get("/v1/items/424242/similar").status_code == 404
    assert client.get("/v1/items/1/similar", params={"k": 0}).status_code == 422


def test_title_search_for_autocomplete(client):
    toy = client.get("/v1/items/search", params={"q": "toy"}).json()
    assert toy["items"][0]["title"] == TITLES[1]
    heat = [item["title"] for item in client.get("/v1/items/search?q=HEAT").json()["items"]]
    assert heat[:2] == [TITLES[2], TITLES[4]]  # the exact title first
    usual = client.get("/v1/items/search", params={"q": "the usual"}).json()["items"]
    assert usual[0]["title"] == TITLES[3]
    fuzzy = client.get("/v1/items/search", params={"q": "toy stroy"}).json()["items"]
    assert fuzzy[0]["title"] == TITLES[1]
    assert len(client.get("/v1/items/search?q=item&limit=5").json()["items"]) == 5
    assert client.get("/v1/items/search?q=").status_code == 422
    assert client.get("/v1/items/search?q=item&limit=51").status_code == 422


def test_adding_items_needs_a_configured_and_matching_key(runs, world):
    with client_for(runs["id"], world, api_key=None) as no_key:
        for path in ("/v1/items", "/v1/admin/reload"):
            disabled = no_key.post(path, json={}, headers={"X-API-Key": "anything"})
            assert disabled.status_code == 403 and "RECSYS_API_KEY" in disabled.json()["detail"]
    with client_for(runs["id"], world) as keyed:
        item = {"items": [{"item_id": "n1", "title": "New (2026)"}]}
        assert keyed.post("/v1/items", json=item).status_code == 401
        wrong = keyed.post("/v1/items", json=item, headers={"X-API-Key": "guess"})
        assert wrong.status_code == 403 and "wrong API key" in wrong.json()["detail"]
        refused = keyed.post("/v1/items", json=item, headers={"X-API-Key": KEY})
        assert refused.status_code == 409
        assert "only by retraining" in refused.json()["detail"]
        assert not (runs["id"] / ADDED_ITEMS_FILE).exists()


def test_a_text_run_ranks_new_items_at_once(text_client):
    headers = {"X-API-Key": KEY}
    new = {"item_id": "n1", "title": "Brand New Film like Item 7 (2026)", "genres": "Action"}
    response = text_client.post("/v1/items", json={"items": [new]}, headers=headers)
    assert response.status_code == 201, response.text
    run = current_run(text_client)
    assert response.json() == {"run": run.name, "added": ["n1"], "n_items": N_CATALOGUE + 1}
    assert (run.run_dir / ADDED_ITEMS_FILE).is_file()
    everything = ids(recommend(text_client, user_id="4", k=N_CATALOGUE + 1, exclude_seen=False))
    assert "n1" in everything and len(everything) == N_CATALOGUE + 1
    assert ids(text_client.get("/v1/items/n1/similar", params={"k": 1})) == ["7"]
    assert "n1" not in ids(recommend(text_client, items=["n1"], k=3))
    action = recommend(text_client, items=["1"], k=N_CATALOGUE, categories=["Action"])
    assert "n1" in ids(action)
    found = text_client.get("/v1/items/search", params={"q": "brand new"}).json()["items"]
    assert found[0]["item_id"] == "n1"
    again = text_client.post("/v1/items", json={"items": [new]}, headers=headers)
    assert again.status_code == 409 and "already exists" in again.json()["detail"]
    odd = {"item_id": "n2", "title": "Odd", "colour": "red"}
    unknown = text_client.post("/v1/items", json={"items": [odd]}, headers=headers)
    assert unknown.status_code == 422 and "colour" in unknown.json()["detail"]
    metrics = text_client.get("/metrics").text
    assert metric(metrics, "recsys_index_items ") == N_CATALOGUE + 1


def test_a_new_item_without_a_text_field_of_the_catalogue_is_told_which_fields(world, tmp_path):
    processed = Path(shutil.copytree(world.processed, tmp_path / "processed"))
    write_item_texts(DATASET, ["title", "genres"], processed_root=processed)
    run_dir = copy_run(world.text_run, tmp_path)
    with client_for(run_dir, world, processed=processed) as text_client:
        untyped = {"item_id": "n1", "title": "Brand New Film like Item 7 (2026)"}
        response = text_client.post("/v1/items", json={"items": [untyped]}, headers=HEADERS)
        assert response.status_code == 422
        assert response.json()["detail"] == (
            f"new items of {DATASET} need the fields item_id, title, genres; missing: genres"
        )
        typed = {**untyped, "genres": "Drama"}
        assert text_client.post("/v1/items", json={"items": [typed]}, headers=HEADERS).is_success


# ----------------------------------------------------------------------------- ops and admin


@pytest.mark.slow
def test_reload_swaps_runs_and_a_failed_one_keeps_the_old(runs, world, tmp_path):
    text = copy_run(world.text_run, tmp_path)
    with client_for(runs["id"], world) as admin:
        headers = {"X-API-Key": KEY}
        same = admin.post("/v1/admin/reload", headers=headers)
        assert same.status_code == 200 and same.json()["run"] == runs["id"].name
        other = admin.post("/v1/admin/reload", json={"run": str(text)}, headers=headers)
        assert other.status_code == 200, other.text
        assert other.json()["previous"] == runs["id"].name
        assert recommend(admin, user_id="5").json()["item_repr"] == "text"
        bad = admin.post("/v1/admin/reload", json={"run": str(tmp_path / "no")}, headers=headers)
        assert bad.status_code == 422 and "is not a folder" in bad.json()["detail"]
        assert admin.get("/readyz").json()["run"] == text.name
        metrics = admin.get("/metrics").text
        assert metric(metrics, 'recsys_reloads_total{outcome="ok"}') == 2
        assert metric(metrics, 'recsys_reloads_total{outcome="failed"}') == 1


class BigRun:
    """A stand-in run holding ``BIG_RUN_BYTES`` in a reference cycle, as a model's modules and
    caches may be: only the collector frees it, and not while the collector is frozen."""

    dataset, item_repr, n_items = DATASET, "id", 1

    def __init__(self, path: str | None = None) -> None:
        self.name = self.run_dir = path or "big"
        self.table = np.ones(BIG_RUN_BYTES // 8)  # written, so resident
        self.myself = self

    def info(self) -> dict[str, str]:
        return {"model": "big"}

    def recommend_resolved(self, resolved: list) -> list[list]:
        return [[] for _ in resolved]


BIG_RUN_BYTES = 128 * 2**20


def resident_bytes() -> int:
    """This process's resident memory now (not its peak)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="reads /proc (Linux)")
def test_reloads_free_the_old_run(monkeypatch):
    monkeypatch.setattr("recsys.serving.app.warm_up", lambda run: None)
    app = create_app(BigRun(), api_key=KEY, loader=BigRun)
    with TestClient(app) as admin:
        before = resident_bytes()
        for _ in range(5):
            reloaded = admin.post("/v1/admin/reload", headers={"X-API-Key": KEY})
            assert reloaded.status_code == 200, reloaded.text
        grown = resident_bytes() - before
    assert grown < BIG_RUN_BYTES / 2, f"resident memory grew by {grown / 2**20:.0f} MiB"


def test_health_readiness_docs_metrics_and_the_demo_page(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["dataset"] == DATASET
    assert ready["n_items"] == N_CATALOGUE and "run_dir" not in ready
    docs = client.get("/docs")  # Swagger UI from the package, not a CDN: it works offline
    assert docs.status_code == 200 and "/static-offline-docs/swagger-ui-bundle.js" in docs.text
    assert "cdn." not in docs.text
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/recommend", "/v1/items", "/v1/admin/reload", "/v1/items/search"} <= set(paths)
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "fetch(" in client.get("/static/app.js").text
    assert client.get("/nowhere").json() == {"detail": "Not Found"}
    recommend(client, user_id="1")
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    ok = 'recsys_http_requests_total{method="POST",route="/v1/recommend",status="200"}'
    assert metric(text, ok) >= 1
    assert metric(text, 'recsys_http_requests_total{method="GET",route="unmatched",status="404"}')
    assert 'recsys_http_request_duration_seconds_bucket{le="0.005",route="/v1/recommend"}' in text
    assert metric(text, "recsys_batch_size_count ") >= 1
    assert metric(text, "recsys_index_items ") == N_CATALOGUE
    for route in ("/docs", "/static", "/"):
        assert metric(
            text, f'recsys_http_requests_total{{method="GET",route="{route}",status="200"}}'
        )


# ------------------------------------------------------------------------------------- CLI


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["recsys.serve", *args])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(serve.app)
    return exit_info.value.code, capsys.readouterr().err


def test_cli_errors_are_one_line(monkeypatch, capsys, world, tmp_path):
    dirs = ["--processed-dir", str(world.processed), "--models-dir", str(world.models)]
    missing = str(tmp_path / "missing")
    code, err = cli(monkeypatch, capsys, "--dataset", DATASET, "--run", missing, "--port", "0")
    assert err.startswith(f"error: run {missing} is not a folder") and err.count("\n") == 1
    assert code == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, err = cli(monkeypatch, capsys, "--dataset", DATASET, "--port", port, *dirs)
    assert code == 1 and err.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    code, err = cli(
        monkeypatch, capsys, "--dataset", "other", "--run", str(world.id_run), "--port", "0"
    )
    assert code == 1 and "was trained on 'synthetic', not 'other'" in err


def test_index_command_builds_the_run_index(monkeypatch, capsys, world, tmp_path):
    run_dir = copy_run(world.id_run, tmp_path)
    code, _ = cli(monkeypatch, capsys, "index", "--dataset", DATASET, "--run", str(run_dir))
    assert code == 0 and (run_dir / "index" / "manifest.json").is_file()
    assert load_run(run_dir, DATASET, processed_dir=world.processed).index.n_items == N_CATALOGUE


# ------------------------------------------------------------------- a real server, reloading


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_a_real_server_reloads_under_load_without_a_failure(world, tmp_path):
    run_dir = copy_run(world.id_run, tmp_path)
    port = free_port()
    env = {**os.environ, "RECSYS_API_KEY": KEY}
    command = [sys.executable, "-m", "recsys.serve", "--dataset", DATASET, "--run", str(run_dir)]
    dirs = ["--processed-dir", str(world.processed), "--models-dir", str(world.models)]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [*command, "--port", str(port), "--device", "cpu", *dirs],
        cwd=PROJ_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server was not ready within 60 s"
            time.sleep(0.2)

        statuses: list[int] = []
        stop = threading.Event()

        def hammer(seed: int) -> None:
            rng = np.random.default_rng(seed)
            with httpx.Client(base_url=url, timeout=10) as http:
                while not stop.is_set():
                    user = str(rng.integers(0, 60))
                    response = http.post("/v1/recommend", json={"user_id": user, "k": 5})
                    statuses.append(response.status_code)

        workers = [threading.Thread(target=hammer, args=(seed,)) for seed in range(8)]
        for worker in workers:
            worker.start()
        try:
            time.sleep(0.3)
            for _ in range(3):
                reload = httpx.post(
                    f"{url}/v1/admin/reload", headers={"X-API-Key": KEY}, timeout=30
                )
                assert reload.status_code == 200, reload.text
                time.sleep(0.2)
        finally:
            stop.set()
            for worker in workers:
                worker.join()
        assert len(statuses) > 50 and set(statuses) == {200}
        metrics = httpx.get(f"{url}/metrics").text
        assert metric(metrics, 'recsys_reloads_total{outcome="ok"}') == 3
        served = 'recsys_http_requests_total{method="POST",route="/v1/recommend",status="200"}'
        assert metric(metrics, served) == len(statuses)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    assert server.returncode == 0, (tmp_path / "server.log").read_text()
