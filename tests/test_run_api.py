"""The public run API (``from recsys import load_run``): what predict and the service use."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from evaluate_helpers import DATASET, N_COLD_CATALOGUE, N_ITEMS, TITLES

import recsys
from recsys.api.run import ADDED_ITEMS_FILE, NotFound, Unsupported
from recsys.api.loading import load_run
from recsys.cli import RecsysError
from recsys.processed import user_sequences

N_CATALOGUE = N_ITEMS + N_COLD_CATALOGUE


@pytest.fixture(scope="module")
def id_run(world):
    return recsys.load_run(world.id_run, DATASET, processed_dir=world.processed)


@pytest.fixture()
def text_run(world, tmp_path):
    """A writable copy of the text run, with a stand-in encoder of its 8-dim feature space."""
    folder = tmp_path / "tiny-text"
    shutil.copytree(world.text_run, folder)
    run = load_run(folder, DATASET, processed_dir=world.processed)
    run.text_encoder = fake_encoder(world.features)
    return run


def fake_encoder(features: np.ndarray):
    """Texts naming an existing item ("... like Item 7 ...") get that item's vector."""

    def encode(texts: list[str]) -> np.ndarray:
        rows = []
        for text in texts:
            digits = [int(word) for word in text.replace(".", " ").split() if word.isdigit()]
            rows.append(features[digits[0] if digits else 1])
        return np.asarray(rows, dtype=np.float32)

    return encode


def exhaustive_top(run, history: np.ndarray, k: int) -> list[int]:
    """The model's own full scores, history masked: what every answer must equal."""
    item_seq = torch.tensor(history[-run.max_len :][None, :], dtype=torch.long)
    scores = run.model.score(item_seq)[0]
    scores[torch.tensor(history, dtype=torch.long)] = float("-inf")
    scores[~torch.from_numpy(run.rankable)] = float("-inf")
    return scores.topk(k).indices.tolist()


def test_a_users_recommendations_are_the_models_full_ranking(id_run, data):
    history = user_sequences(data.events)[6]  # original user id 5
    frame = id_run.recommend(user_id="5", k=5)
    assert list(frame.columns[:3]) == ["rank", "item_id", "title"] and frame.columns[-1] == "score"
    assert frame["rank"].tolist() == [1, 2, 3, 4, 5]
    expected = [id_run.catalogue.record(i)["item_id"] for i in exhaustive_top(id_run, history, 5)]
    assert frame["item_id"].tolist() == expected
    assert frame["score"].is_monotonic_decreasing
    assert not set(frame["item_id"]) & {
        id_run.catalogue.record(int(i))["item_id"] for i in history
    }


def test_many_rows_at_once_are_the_frames_of_each_row_stacked(id_run):
    """predict --output reads every user's fields in one lookup: the same as row by row."""
    ids = np.array([[3, 1, 0], [2, 0, 0], [0, 0, 0], [5, 4, 6]])
    scores = np.array([[0.9, 0.5, -np.inf], [0.7, -np.inf, -np.inf], [-np.inf] * 3, [3, 2, 1.0]])
    rows, frame = id_run.frames(ids, scores)
    expected = pd.concat([id_run.frame(i, s) for i, s in zip(ids, scores)], ignore_index=True)
    pd.testing.assert_frame_equal(frame, expected, check_dtype=False)
    assert rows.tolist() == [0, 0, 1, 3, 3, 3]
    assert id_run.user_ids_of(np.array([6, 1])) == ["5", "0"]


def test_adhoc_histories_by_ids_and_titles_agree(id_run):
    by_titles = id_run.recommend(titles=["toy story", "Heat (1995)"], k=4)
    by_items = id_run.recommend(items=["1", "2"], k=4)
    pd.testing.assert_frame_equal(by_titles, by_items)
    assert not {TITLES[1], TITLES[2]} & set(by_titles["title"])
    kept = id_run.recommend(items=["1", "2"], k=N_ITEMS, exclude_seen=False)
    assert {TITLES[1], TITLES[2]} <= set(kept["title"])


def test_filters_exclude_items_and_keep_only_the_asked_categories(id_run):
    first = id_run.recommend(user_id="5", k=3)
    skipped = id_run.recommend(user_id="5", k=3, exclude_items=first["item_id"].tolist()[:1])
    assert first["item_id"].iloc[0] not in set(skipped["item_id"])
    assert skipped["item_id"].iloc[0] == first["item_id"].iloc[1]
    drama = id_run.recommend(user_id="5", k=10, categories=["drama"])
    assert len(drama) == 10 and drama["genres"].str.contains("Drama").all()


def test_many_queries_answer_like_single_ones(id_run):
    queries = [dict(user_id="5", k=3), dict(items=["3"], k=2), dict(user_id="9", k=3)]
    from recsys.api.run import Query

    together = id_run.recommend_many([Query(**q) for q in queries])
    for query, frame in zip(queries, together):
        pd.testing.assert_frame_equal(frame, id_run.recommend(**query))


def test_similar_items_are_the_nearest_rows_by_cosine(id_run):
    frame = id_run.similar("3", k=4)
    table = torch.nn.functional.normalize(id_run.table, dim=1)
    item = id_run.item_index("3")
    cosine = table @ table[item]
    cosine[0], cosine[item] = float("-inf"), float("-inf")
    cosine[~torch.from_numpy(id_run.rankable)] = float("-inf")
    expected = [id_run.catalogue.record(i)["item_id"] for i in cosine.topk(4).indices.tolist()]
    assert frame["item_id"].tolist() == expected
    assert np.allclose(frame["score"], cosine.topk(4).values.numpy(), atol=1e-5)


def test_unknown_users_items_and_titles_say_what_is_wrong(id_run):
    with pytest.raises(NotFound, match="unknown user id '12345'"):
        id_run.recommend(user_id="12345")
    with pytest.raises(NotFound, match="unknown item id '999'"):
        id_run.recommend(items=["3", "999"])
    with pytest.raises(NotFound, match="unknown title 'Qwerty zzz'; nearest: ") as err:
        id_run.recommend(titles=["Toy Story", "Qwerty zzz"])
    assert len(err.value.nearest) == 3 and set(err.value.nearest) <= set(
        id_run.catalogue.items.title
    )
    with pytest.raises(NotFound, match="no item has categories"):
        id_run.recommend(user_id="5", categories=["western"])
    with pytest.raises(RecsysError, match="k must be between 1 and the 60 rankable items"):
        id_run.recommend(user_id="5", k=0)
    with pytest.raises(RecsysError, match="exactly one of user_id, items or titles"):
        id_run.recommend(user_id="5", items=["3"])


def test_new_items_are_refused_by_id_runs_with_the_reason(id_run):
    with pytest.raises(Unsupported, match="only by retraining"):
        id_run.add_items([{"item_id": "new-1", "title": "Brand New (2026)"}])


def test_new_items_of_a_text_run_rank_at_once_and_survive_a_reload(text_run, world):
    history_top = text_run.recommend(items=["4"], k=1)
    twin_of = int(text_run.item_index(history_top["item_id"].iloc[0]))
    added = text_run.add_items(
        [{"item_id": "new-1", "title": f"A film like {twin_of}", "genres": "Drama"}]
    )
    assert added["item_idx"].tolist() == [N_CATALOGUE + 1] and text_run.n_items == N_CATALOGUE + 1
    top = text_run.recommend(items=["4"], k=2)
    assert "new-1" in set(top["item_id"])  # same text vector as the top pick: it ranks beside it
    assert text_run.similar("new-1", k=1)["item_id"].iloc[0] == history_top["item_id"].iloc[0]
    assert text_run.recommend(items=["new-1"], k=3)["item_id"].ne("new-1").all()
    again = load_run(text_run.run_dir, DATASET, processed_dir=world.processed)
    assert (text_run.run_dir / ADDED_ITEMS_FILE).is_file() and again.n_items == N_CATALOGUE + 1
    pd.testing.assert_frame_equal(again.recommend(items=["4"], k=2), top)


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([], "no items given"),
        ([{"item_id": "x"}], "need the fields item_id, title; missing: title"),
        ([{"item_id": "3", "title": "Taken"}], "item id '3' already exists"),
        ([{"item_id": "a", "title": "A"}, {"item_id": "a", "title": "B"}], "'a' repeats"),
        ([{"item_id": "b", "title": "B", "colour": "red"}], "unknown item field"),
    ],
)
def test_bad_new_items_are_user_errors(text_run, items, message):
    with pytest.raises(RecsysError, match=message):
        text_run.add_items(items)
    assert text_run.n_items == N_CATALOGUE


def test_a_wrong_encoder_dimension_is_refused(text_run):
    text_run.text_encoder = lambda texts: np.zeros((len(texts), 3), np.float32)
    with pytest.raises(RecsysError, match="trained on 8-dim text vectors"):
        text_run.add_items([{"item_id": "n", "title": "N"}])


def test_runs_that_do_not_match_the_data_are_refused(world, tmp_path):
    with pytest.raises(RecsysError, match="trained on 'synthetic', not 'other'"):
        load_run(world.id_run, "other", processed_dir=world.processed)
    with pytest.raises(RecsysError, match="give a run folder or a dataset"):
        load_run()
    shrunk = tmp_path / "processed"
    shutil.copytree(world.processed / DATASET, shrunk / DATASET)
    stats = (shrunk / DATASET / "stats.json").read_text()
    (shrunk / DATASET / "stats.json").write_text(
        stats.replace(f'"n_catalogue": {N_CATALOGUE}', f'"n_catalogue": {N_CATALOGUE - 1}')
    )
    with pytest.raises(RecsysError, match="the data changed since training"):
        load_run(world.id_run, DATASET, processed_dir=shrunk)


def test_best_run_is_the_default(world):
    run = load_run(dataset=DATASET, processed_dir=world.processed, models_dir=world.models)
    assert run.run_dir.parent == world.models / DATASET and run.info()["dataset"] == DATASET


def test_info_names_the_config_that_trained_the_run(world, tmp_path):
    folder = shutil.copytree(world.text_run, tmp_path / "renamed-run")
    info = load_run(folder, DATASET, processed_dir=world.processed).info()
    assert (info["run"], info["model"], info["item_repr"]) == ("renamed-run", "tiny-text", "text")
    assert info["index"] == "exact" and info["n_items"] == N_CATALOGUE


def test_concurrent_adds_number_their_items_apart(text_run):
    from concurrent.futures import ThreadPoolExecutor

    batches = [
        [{"item_id": f"c{t}-{i}", "title": f"Like {i + 1}"} for i in range(3)] for t in range(4)
    ]
    with ThreadPoolExecutor(4) as pool:
        added = list(pool.map(text_run.add_items, batches))
    numbers = sorted(int(i) for frame in added for i in frame["item_idx"])
    assert numbers == list(range(N_CATALOGUE + 1, N_CATALOGUE + 13))
    assert text_run.n_items == N_CATALOGUE + 12 and len(text_run.rankable) == N_CATALOGUE + 13
    answer = text_run.recommend(items=["c0-0", "c3-2"], k=3)
    assert len(answer) == 3 and not {"c0-0", "c3-2"} & set(answer["item_id"])
    saved = pd.read_parquet(text_run.run_dir / ADDED_ITEMS_FILE)
    assert sorted(saved["item_id"]) == sorted(f"c{t}-{i}" for t in range(4) for i in range(3))
