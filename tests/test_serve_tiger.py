"""A generative (TIGER) run everywhere a scoring run goes: the run API, predict and the service.

Answers come from beam search over the items' semantic IDs, so they are checked against the
decoder itself: k distinct unseen items, best first, each scored by the log-probability
``item_log_probs`` gives its ID. Filters and new items are pruned from and put into the trie.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from evaluate_helpers import DATASET, TIGER_BEAM
from fastapi.testclient import TestClient
from rich.console import Console

from recsys.api.generative import GenerativeRun
from recsys.api.run import ADDED_ITEMS_FILE, NotFound, Query, Unsupported
from recsys.api.loading import load_run
from recsys.cli import RecsysError
from recsys.cli import run as run_cli
from recsys.io import read_json, write_json
from recsys.modeling import predict as P
from recsys.semantic_ids import RUN_QUANTISER, RUN_QUANTISER_MANIFEST, Quantiser
from recsys.serving.app import create_app
from recsys.serving.batching import MicroBatcher

KEY = "s3cret-key"
HEADERS = {"X-API-Key": KEY}
ACTION = "Action"  # the genre of the odd items of the tiny world


def copy_run(tiger, root: Path) -> Path:
    """A writable copy of the TIGER run (adding items writes into its folder)."""
    return Path(shutil.copytree(tiger.run, root / tiger.run.name))


def open_run(tiger, run_dir: Path | None = None) -> GenerativeRun:
    run = load_run(run_dir or tiger.run, DATASET, processed_dir=tiger.processed)
    assert isinstance(run, GenerativeRun)
    return run


@pytest.fixture(scope="module")
def tiger_run(tiger) -> GenerativeRun:
    """The TIGER run, read-only: tests through it add no items."""
    return open_run(tiger)


def encoder_of(vector: np.ndarray) -> Callable[[list[str]], np.ndarray]:
    """A stand-in text encoder that gives every text ``vector``."""
    return lambda texts: np.repeat(vector[None, :].astype(np.float32), len(texts), axis=0)


def code_groups(run: GenerativeRun) -> dict[tuple[int, ...], int]:
    """How many items share each tuple of quantiser codes (the ID without its last digit)."""
    counts: dict[tuple[int, ...], int] = {}
    for row in run.model.item_codes[1:, :-1].tolist():
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    return counts


def vector_with_room(run: GenerativeRun) -> np.ndarray:
    """A text vector whose codes the run's last level can still tell apart from other items'."""
    groups, spelled = code_groups(run), run.model.config.code_vocab[-1]
    rng = np.random.default_rng(0)
    for _ in range(1000):
        vector = rng.normal(size=run.text_dim) * rng.uniform(0.5, 3.0)
        codes = tuple(run.quantiser.quantiser.encode(vector[None, :])[0].tolist())
        if groups.get(codes, 0) < spelled:
            return vector
    raise AssertionError("no text vector with room found")


def log_probs_of(run: GenerativeRun, history: np.ndarray, items: list[int]) -> np.ndarray:
    """The decoder's own log-probability of each item's ID after ``history`` (teacher forced)."""
    item_seq = torch.tensor(history[-run.max_len :], dtype=torch.long)[None, :]
    wanted = torch.tensor(items, dtype=torch.long)
    return run.model.item_log_probs(item_seq.expand(len(items), -1), wanted).numpy()


def indices(run: GenerativeRun, frame: pd.DataFrame) -> list[int]:
    return [run.item_index(i) for i in frame["item_id"]]


# ------------------------------------------------------------------------------- the run API


def test_recommend_gives_k_unseen_items_best_first_by_their_log_probability(tiger_run):
    user_idx, history = tiger_run.user_history("5")
    frame = tiger_run.recommend(user_id="5", k=5)
    items = indices(tiger_run, frame)
    assert list(frame.columns) == tiger_run.columns and frame["rank"].tolist() == [1, 2, 3, 4, 5]
    assert len(set(items)) == 5 and not set(items) & set(history.tolist())
    scores = frame["score"].to_numpy()
    assert np.all(scores[:-1] >= scores[1:]) and np.all(scores < 0)
    np.testing.assert_allclose(scores, log_probs_of(tiger_run, history, items), atol=1e-4)
    # exactly the decoder's beams, with the history pruned from the trie
    item_seq = torch.tensor(history[-tiger_run.max_len :])[None, :]
    beams, _ = tiger_run.model.generate(item_seq, TIGER_BEAM, torch.tensor(history)[None, :])
    assert items == beams[0, :5].tolist()
    kept = tiger_run.recommend(user_id="5", k=TIGER_BEAM, exclude_seen=False)
    assert len(kept) == TIGER_BEAM and user_idx > 0


def test_k_above_the_beam_size_is_refused_naming_both(tiger_run):
    with pytest.raises(RecsysError, match=f"k {TIGER_BEAM + 1} is more than the beam size 10"):
        tiger_run.recommend(user_id="5", k=TIGER_BEAM + 1)
    with pytest.raises(RecsysError, match="k must be between 1 and"):
        tiger_run.recommend(user_id="5", k=0)
    assert tiger_run.info()["index"] == f"beam search over semantic IDs (beam {TIGER_BEAM})"


def test_filters_are_pruned_from_the_trie_so_k_items_still_come_back(tiger_run, data):
    history = ["1", "3", "5"]
    frame = tiger_run.recommend(
        items=history, k=TIGER_BEAM, categories=[ACTION], exclude_items=["7", "9"]
    )
    action = set(data.items.loc[data.items["genres"] == ACTION, "item_id"].astype(str))
    assert len(frame) == TIGER_BEAM  # a post-filter would have kept about half the beams
    assert set(frame["item_id"]) <= action - {"1", "3", "5", "7", "9"}
    scores = frame["score"].to_numpy()
    assert np.all(scores[:-1] >= scores[1:])
    history_idx = np.asarray([tiger_run.item_index(i) for i in history])
    expected = log_probs_of(tiger_run, history_idx, indices(tiger_run, frame))
    np.testing.assert_allclose(scores, expected, atol=1e-4)


def test_many_queries_in_one_beam_search_answer_like_single_ones(tiger_run):
    queries = [Query(user_id=u, k=3 + int(u) % 4) for u in ["1", "2", "5", "9", "12"]]
    queries += [Query(items=["2", "4"], k=4, categories=[ACTION]), Query(items=["6"], k=2)]
    together = tiger_run.recommend_many(queries)
    for query, answer in zip(queries, together):
        alone = tiger_run.recommend_many([query])[0]
        assert answer["item_id"].tolist() == alone["item_id"].tolist()
        np.testing.assert_allclose(answer["score"], alone["score"], atol=1e-4)


def test_unknown_items_users_and_titles_are_not_found(tiger_run):
    with pytest.raises(NotFound, match="unknown item id 'nope'"):
        tiger_run.recommend(items=["nope"], k=3)
    with pytest.raises(NotFound, match="unknown user id"):
        tiger_run.recommend(user_id="nobody", k=3)
    with pytest.raises(NotFound, match="unknown item id 'gone'"):
        tiger_run.recommend(items=["1"], exclude_items=["gone"], k=3)


def test_a_new_item_gets_codes_joins_the_trie_at_once_and_survives_a_reload(tiger, tmp_path):
    run = open_run(tiger, copy_run(tiger, tmp_path))
    n_before = run.n_items
    run.text_encoder = encoder_of(vector_with_room(run))
    added = run.add_items([{"item_id": "new-1", "title": "A new film", "genres": "Horror"}])
    new = n_before + 1
    assert added["item_idx"].tolist() == [new] and run.n_items == new
    codes = run.model.item_codes[new].tolist()
    assert codes[:-1] == run.quantiser.quantiser.encode(vector_with_room(run)[None, :])[0].tolist()
    assert codes[-1] == code_groups(run)[tuple(codes[:-1])] - 1  # the next collision digit
    # the only allowed item: generated, at its log-probability
    only = run.recommend(items=["1", "2"], k=3, categories=["Horror"])
    assert only["item_id"].tolist() == ["new-1"]
    expected = log_probs_of(run, np.array([1, 2]), [new])
    np.testing.assert_allclose(only["score"], expected, atol=1e-4)
    assert "new-1" not in set(run.recommend(items=["new-1"], k=TIGER_BEAM)["item_id"])
    again = open_run(tiger, run.run_dir)
    assert (run.run_dir / ADDED_ITEMS_FILE).is_file() and again.n_items == new
    assert torch.equal(again.model.item_codes, run.model.item_codes)
    pd.testing.assert_frame_equal(
        again.recommend(items=["1", "2"], k=3, categories=["Horror"]), only
    )


def test_a_new_item_whose_codes_the_last_level_cannot_tell_apart_is_refused(tiger, tmp_path):
    run = open_run(tiger, copy_run(tiger, tmp_path))
    groups, spelled = code_groups(run), run.model.config.code_vocab[-1]
    full = next(codes for codes, size in groups.items() if size == spelled)
    twin = next(
        i for i, row in enumerate(run.model.item_codes.tolist()) if tuple(row[:-1]) == full
    )
    run.text_encoder = encoder_of(tiger.features[twin])
    with pytest.raises(Unsupported, match=f"'twin'.*which {spelled} items already have.*retrain"):
        run.add_items([{"item_id": "twin", "title": "Twin", "genres": ACTION}])
    assert run.n_items == len(run.model.item_codes) - 1 == run.model.config.n_catalogue


def test_a_new_item_with_an_empty_title_is_refused_naming_the_field(tiger, tmp_path):
    run = open_run(tiger, copy_run(tiger, tmp_path))
    run.text_encoder = encoder_of(vector_with_room(run))
    with pytest.raises(RecsysError, match="'blank' has an empty title"):
        run.add_items([{"item_id": "blank", "title": "  ", "genres": ACTION}])
    assert run.n_items == run.model.config.n_catalogue


def _stored(run_dir: Path) -> tuple[Quantiser, dict]:
    return Quantiser.load(run_dir / RUN_QUANTISER), read_json(run_dir / RUN_QUANTISER_MANIFEST)


def _with_manifest(key: str, value) -> Callable[[Path], None]:
    def change(run_dir: Path) -> None:
        _, manifest = _stored(run_dir)
        write_json({**manifest, key: value}, run_dir / RUN_QUANTISER_MANIFEST)

    return change


def _with_codebooks(levels: int, size: int) -> Callable[[Path], None]:
    def change(run_dir: Path) -> None:
        quantiser, _ = _stored(run_dir)
        codebooks = np.resize(quantiser.codebooks, (levels, size, quantiser.codebooks.shape[2]))
        Quantiser(codebooks, quantiser.layers).save(run_dir / RUN_QUANTISER)

    return change


def _garbage(run_dir: Path) -> None:
    (run_dir / RUN_QUANTISER).write_bytes(b"PK\x03\x04 not an archive")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_with_codebooks(3, 8), "code levels 3, expected 2"),
        (_with_codebooks(2, 4), r"codebook sizes \[4, 4\], expected \[8, 8\]"),
        (_with_manifest("code_vocab", [8, 8, 99]), "vocabulary sizes"),
        (_with_manifest("n_items", 3), "items 3, expected"),
        (_with_manifest("ids_sha256", "0" * 64), "made other semantic IDs"),
        (_garbage, "missing or unreadable"),
    ],
    ids=["levels", "codebook", "vocab", "items", "ids", "garbage"],
)
def test_a_quantiser_that_does_not_match_its_run_is_one_line(tiger, tmp_path, change, message):
    run_dir = copy_run(tiger, tmp_path)
    change(run_dir)
    with pytest.raises(RecsysError, match=message) as err:
        open_run(tiger, run_dir)
    assert "\n" not in str(err.value)


def test_a_mismatching_quantiser_stops_predict_with_one_line_and_exit_1(
    tiger, tmp_path, monkeypatch, capsys
):
    run_dir = copy_run(tiger, tmp_path)
    _with_codebooks(3, 8)(run_dir)
    argv = ["predict", "--dataset", DATASET, "--run", str(run_dir), "--user", "5"]
    monkeypatch.setattr(sys, "argv", [*argv, "--processed-dir", str(tiger.processed)])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(P.app)
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1
    assert err.startswith("error: the quantiser of run") and "code levels 3" in err


def test_a_run_kept_without_a_quantiser_serves_but_takes_no_new_items(tiger, tmp_path):
    run_dir = copy_run(tiger, tmp_path)
    for name in (RUN_QUANTISER, RUN_QUANTISER_MANIFEST):
        (run_dir / name).unlink()
    run = open_run(tiger, run_dir)
    assert len(run.recommend(user_id="5", k=3)) == 3 and not run.accepts_new_items
    with pytest.raises(Unsupported, match="trained before runs kept their quantiser"):
        run.add_items([{"item_id": "n", "title": "N", "genres": ACTION}])


# ----------------------------------------------------------------------------------- predict


def test_predict_prints_and_writes_a_tiger_runs_recommendations(tiger, tiger_run, tmp_path):
    options = {"run_dir": tiger.run, "processed_dir": tiger.processed, "device": "cpu"}
    console = Console(file=io.StringIO(), width=200)
    P.predict(DATASET, users=["5"], k=4, console=console, **options)
    text = console.file.getvalue()
    assert "user 5: top 4 recommendations" in text
    for title in tiger_run.recommend(user_id="5", k=4)["title"]:
        assert title in text
    frame = P.predict(DATASET, all_users=True, k=3, output=tmp_path / "recs.parquet", **options)
    assert frame.groupby("user_id").size().eq(3).all()
    assert frame.groupby("user_id")["score"].apply(lambda s: s.is_monotonic_decreasing).all()
    one = frame[frame["user_id"] == "5"]
    assert one["item_id"].tolist() == tiger_run.recommend(user_id="5", k=3)["item_id"].tolist()
    with pytest.raises(RecsysError, match="--k 11 is more than the beam size 10"):
        P.predict(DATASET, users=["5"], k=11, console=console, **options)
    with pytest.raises(RecsysError, match="--generate .*leave out --generate"):
        P.predict(DATASET, users=["5"], n_generate=3, console=console, **options)


# ----------------------------------------------------------------------------------- service


@pytest.fixture()
def client(tiger, tmp_path) -> Iterator[TestClient]:
    """The service over a writable copy of the TIGER run, with a stand-in encoder."""
    run = open_run(tiger, copy_run(tiger, tmp_path))
    run.text_encoder = encoder_of(vector_with_room(run))
    with TestClient(create_app(run, api_key=KEY, loader=lambda path: run)) as test_client:
        yield test_client


def served_ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["item_id"] for item in response.json()["items"]]


def test_the_service_recommends_from_a_tiger_run(client, tiger_run):
    response = client.post("/v1/recommend", json={"user_id": "5", "k": 5})
    body = response.json()
    assert response.status_code == 200 and body["item_repr"] == "semantic"
    expected = tiger_run.recommend(user_id="5", k=5)
    assert served_ids(response) == expected["item_id"].tolist()
    np.testing.assert_allclose([i["score"] for i in body["items"]], expected["score"], atol=1e-5)
    filtered = {"items": ["1", "3"], "k": 4, "categories": [ACTION], "exclude_items": ["5"]}
    answer = client.post("/v1/recommend", json=filtered)
    assert len(served_ids(answer)) == 4 and not {"1", "3", "5"} & set(served_ids(answer))
    assert {item["genres"] for item in answer.json()["items"]} == {ACTION}
    too_many = client.post("/v1/recommend", json={"user_id": "5", "k": TIGER_BEAM + 1})
    assert too_many.status_code == 422
    assert too_many.json()["detail"].startswith(f"k {TIGER_BEAM + 1} is more than the beam size")
    unknown = client.post("/v1/recommend", json={"items": ["nope"], "k": 3})
    assert unknown.status_code == 404 and "unknown item id 'nope'" in unknown.json()["detail"]
    ready = client.get("/readyz").json()
    assert ready["item_repr"] == "semantic" and ready["index"].startswith("beam search")
    assert client.get("/").status_code == 200 and "recsys" in client.get("/").text
    similar = client.get("/v1/items/1/similar", params={"k": 3})
    assert similar.status_code == 200 and len(similar.json()["items"]) == 3


def test_the_service_adds_an_item_to_a_tiger_run_and_generates_it(client):
    new = {"item_id": "new-1", "title": "A new film", "genres": "Horror"}
    response = client.post("/v1/items", json={"items": [new]}, headers=HEADERS)
    assert response.status_code == 201, response.text
    body = {"items": ["1", "2"], "k": 2, "categories": ["Horror"]}
    assert served_ids(client.post("/v1/recommend", json=body)) == ["new-1"]
    empty = {"item_id": "e", "title": "", "genres": ACTION}
    refused = client.post("/v1/items", json={"items": [empty]}, headers=HEADERS)
    assert refused.status_code == 422 and "title" in refused.json()["detail"]
    assert "Traceback" not in refused.text
    blank = client.post("/v1/items", json={"items": [{**empty, "title": "   "}]}, headers=HEADERS)
    assert blank.status_code == 422
    assert blank.json()["detail"].startswith("new item 'e' has an empty title")


def test_concurrent_requests_share_one_beam_search(tiger_run):
    """The service's batcher over the run: a burst is answered in fewer passes than requests,
    each answer what the request gets alone."""
    users = ["1", "2", "3", "5", "8", "9", "12", "13"]
    resolved = [tiger_run.resolve(Query(user_id=u, k=4)) for u in users]
    sizes: list[int] = []

    async def burst() -> list:
        batcher = MicroBatcher(tiger_run.recommend_resolved, on_batch=sizes.append)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(r) for r in resolved))
        finally:
            await batcher.stop()

    answers = asyncio.run(burst())
    assert sum(sizes) == len(users) and max(sizes) > 1
    for user, answer in zip(users, answers):
        alone = tiger_run.recommend(user_id=user, k=4)
        assert [row["item_id"] for row in answer] == alone["item_id"].tolist()


def test_there_is_no_item_index_to_build_for_a_tiger_run(tiger):
    from recsys import serve

    with pytest.raises(RecsysError, match="beam search over semantic IDs.*no item index"):
        serve.build_index(DATASET, tiger.run, tiger.run.parent.parent)
