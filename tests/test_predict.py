"""Prediction: readable tables, files, ad-hoc sequences, generation, cold items, bad input."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from evaluate_helpers import DATASET, N_COLD_CATALOGUE, N_ITEMS, TITLES
from rich.console import Console

from recsys.api.run import Run
from recsys.api.loading import load_run
from recsys.catalogue import Catalogue
from recsys.cli import RecsysError
from recsys.modeling import predict as P
from recsys.modeling.runs import BEST_CKPT, load_trained_run
from recsys.processed import user_sequences

N_CATALOGUE = N_ITEMS + N_COLD_CATALOGUE


@pytest.fixture(scope="module")
def catalogue(data):
    return Catalogue(data.items)


@pytest.fixture(scope="module")
def id_run(world):
    return load_run(world.id_run, DATASET, processed_dir=world.processed)


def top_k(run, histories, k, keep_history=False):
    """The run API's top-k for ad-hoc histories, as predict asks for it."""
    users = np.zeros(len(histories), dtype=np.int64)
    return run.top_k(histories, users, k, exclude=None if keep_history else histories)


def run_predict(world, **kwargs):
    console = Console(file=io.StringIO(), width=200)
    options = dict(
        processed_dir=world.processed,
        models_dir=world.models,
        run_dir=world.id_run,
        device="cpu",
        console=console,
    )
    frame = P.predict(DATASET, **{**options, **kwargs})
    return frame, console.file.getvalue()


# --------------------------------------------------------------------------- recommending


def test_user_tables_show_recent_history_and_recommendations(world, data, catalogue, id_run):
    _, text = run_predict(world, users=["5"], k=4, n_history=3)
    history = user_sequences(data.events)[6]  # original user id 5 is user_idx 6
    assert f"user 5: history (last 3 of {len(history)})" in text
    for item in history[-3:]:
        assert catalogue.describe(int(item))["title"] in text
    top, scores = top_k(id_run, [history], 4)
    assert "user 5: top 4 recommendations" in text
    positions = [text.index(catalogue.describe(int(i))["title"] + " ") for i in top[0]]
    assert positions == sorted(positions)  # printed in rank order
    assert "Drama, Comedy" in text or "Action" in text
    assert f"{scores[0, 0]:.3f}" in text


def test_recommendations_skip_history_and_come_in_score_order(data, id_run):
    histories = list(user_sequences(data.events).values())
    top, scores = top_k(id_run, histories, 10)
    assert top.shape == scores.shape == (60, 10)
    for history, items, row_scores in zip(histories, top.tolist(), scores):
        left = N_ITEMS - len(set(history.tolist()))  # some users have seen most of the items
        picks = [i for i in items if i]
        assert len(set(picks)) == min(10, left) and items[len(picks) :] == [0] * (10 - len(picks))
        assert not set(picks) & set(history.tolist()) and max(picks) <= N_ITEMS
        shown = row_scores[: len(picks)]
        assert (shown[:-1] >= shown[1:]).all() and not np.isfinite(row_scores[len(picks) :]).any()
    assert any(N_ITEMS - len(set(h.tolist())) < 10 for h in histories)
    kept, _ = top_k(id_run, histories, 10, keep_history=True)
    assert any(set(k) & set(h.tolist()) for k, h in zip(kept.tolist(), histories))


def test_all_users_without_output_shows_each_users_table(world, data):
    _, text = run_predict(world, all_users=True, k=2, n_history=1)
    for user_id in data.users["user_id"].astype(str):
        assert f"user {user_id}: top 2 recommendations" in text


def test_output_writes_every_users_top_k(world, tmp_path):
    frame, _ = run_predict(world, k=3, output=tmp_path / "recs.parquet")
    written = pd.read_parquet(tmp_path / "recs.parquet")
    columns = list(written.columns)  # the run API's fields, the dataset's text fields included
    assert columns[:4] == ["user_id", "rank", "item_id", "title"] and columns[-1] == "score"
    assert {"genres", "year"} <= set(columns)
    assert len(written) == 60 * 3 and written["rank"].tolist()[:3] == [1, 2, 3]
    assert written.equals(frame)
    run_predict(world, users=["0", "7"], k=2, output=tmp_path / "recs.csv")
    csv = pd.read_csv(tmp_path / "recs.csv")
    assert csv["user_id"].tolist() == [0, 0, 7, 7]
    assert csv["title"].tolist()[:2] == written["title"].tolist()[:2]
    with pytest.raises(RecsysError, match="use a .parquet or .csv"):
        run_predict(world, output=tmp_path / "recs.txt")


def test_titles_match_fuzzily(catalogue):
    assert catalogue.match_title("Toy Story (1995)") == 1
    assert catalogue.match_title("toy story") == 1
    assert catalogue.match_title("Toy Stroy") == 1
    assert catalogue.match_title("The Usual Suspects") == 3
    assert catalogue.match_title("Heat") == 2  # the exact title, not "Heathers"
    assert catalogue.match_title("heathers (1989)") == 4
    assert catalogue.match_title("Qwerty zzz") is None
    found, warnings = catalogue.titles("Heat (1995); Qwerty zzz; ")
    assert found == [2] and len(warnings) == 1
    assert warnings[0].startswith("unknown title 'Qwerty zzz'; nearest: \"")
    assert warnings[0].count('"') == 6  # the three nearest titles
    found, warnings = catalogue.item_ids("1, 999,3")
    assert found == [1, 3] and warnings == ["unknown item id '999'; it is not in the item table"]


def test_adhoc_sequences_by_title_or_id(world, catalogue):
    _, by_title = run_predict(world, history="Toy Story; Heat (1995)", k=3)
    _, by_id = run_predict(world, items="1,2", k=3)
    assert "your sequence: history (last 2 of 2)" in by_title
    assert TITLES[1] in by_title and TITLES[2] in by_title
    assert by_title == by_id


# ----------------------------------------------------------------------------- generation


@pytest.mark.slow
def test_generation_never_repeats_and_greedy_follows_the_top_pick(data, id_run):
    model, allowed = id_run.model, torch.from_numpy(id_run.rankable)
    history = user_sequences(data.events)[3]
    greedy = P.generate(model, history, 8, allowed)
    items = [s.item for s in greedy]
    assert len(set(items)) == 8 and not set(items) & set(history.tolist())
    assert all(0 < s.probability <= 1 for s in greedy)
    top, _ = top_k(id_run, [history], 1)
    assert items[0] == top[0, 0]
    again = P.generate(model, np.concatenate([history, items[:1]]), 7, allowed)
    assert [s.item for s in again] == items[1:]  # it feeds its own picks back
    narrow = P.generate(model, history, 8, allowed, strategy=P.Strategy.beam, beam_width=1)
    assert [s.item for s in narrow] == items
    beam = P.generate(model, history, 8, allowed, strategy=P.Strategy.beam, beam_width=4)
    assert len({s.item for s in beam}) == 8


@pytest.mark.slow
def test_sampling_is_seeded(data, id_run):
    model, allowed = id_run.model, torch.from_numpy(id_run.rankable)
    history = user_sequences(data.events)[3]

    def draw(seed, temperature=5.0):
        steps = P.generate(
            model,
            history,
            10,
            allowed,
            strategy=P.Strategy.sample,
            temperature=temperature,
            seed=seed,
        )
        return [s.item for s in steps]

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    assert len(set(draw(3))) == 10


def test_generate_from_the_cli_function(world):
    _, text = run_predict(world, users=["2"], n_generate=4, strategy=P.Strategy.beam)
    assert "user 2: generated session (beam)" in text


# ---------------------------------------------------------------------------- cold items


def test_item_table_only_items_are_rankable_for_text_runs_only(world, data, id_run):
    assert id_run.rankable.nonzero()[0].tolist() == list(range(1, N_ITEMS + 1))
    trained = load_trained_run(world.text_run)
    text_run = Run(trained.model, trained.config, data, world.text_run, world.text_run / BEST_CKPT)
    assert text_run.rankable[1:].all() and len(text_run.rankable) == N_CATALOGUE + 1
    history = user_sequences(data.events)[1]
    top, _ = top_k(text_run, [history], 1)
    # give a never-interacted item the text vector of the top pick: it must rank beside it
    new_item = N_ITEMS + 1
    with torch.no_grad():
        trained.model.item_features[new_item] = trained.model.item_features[int(top[0, 0])]
    text_run = Run(trained.model, trained.config, data, world.text_run, world.text_run / BEST_CKPT)
    top2, _ = top_k(text_run, [history], 2)
    assert new_item in top2[0].tolist()
    id_all, _ = top_k(id_run, [history], N_ITEMS, keep_history=True)
    assert sorted(id_all[0].tolist()) == list(range(1, N_ITEMS + 1))


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"users": ["12345"]}, "unknown user id '12345'"),
        ({"users": ["1"], "k": 0}, r"--k must be between 1 and the 60 rankable items, got 0"),
        ({"users": ["1"], "k": 61}, r"--k must be between 1 and the 60 rankable items, got 61"),
        ({"history": " ; "}, "--history is empty"),
        ({"history": "Qwerty zzz; Xyzzy plugh"}, "--history: nothing known in it: unknown title"),
        ({"items": "998,999"}, "--items: nothing known in it: unknown item id '998'"),
        ({}, "say whom to recommend for"),
        ({"users": ["1"], "items": "1"}, "not several"),
        ({"users": ["1"], "all_users": True}, "not both"),
        ({"users": ["1"], "n_generate": 3, "temperature": 0.0}, "--temperature must be > 0"),
        ({"users": ["1"], "n_generate": 500}, "more than the"),
    ],
)
def test_bad_requests_are_user_errors(world, options, message):
    with pytest.raises(RecsysError, match=message):
        run_predict(world, **options)


def test_bad_runs_are_user_errors(world, tmp_path):
    with pytest.raises(RecsysError, match=r"no trained runs .*make train DATASET=synthetic"):
        run_predict(world, users=["1"], run_dir=None, models_dir=tmp_path / "none")
    with pytest.raises(RecsysError, match="trained on 'synthetic', not 'other'"):
        P.predict("other", users=["1"], run_dir=world.id_run, processed_dir=world.processed)
    broken = tmp_path / "broken"
    shutil.copytree(world.id_run, broken)
    (broken / "checkpoints" / "best.ckpt").unlink()
    with pytest.raises(RecsysError, match="does not exist"):
        run_predict(world, users=["1"], run_dir=broken)
    (broken / "checkpoints" / "best.ckpt").write_bytes(b"\x00garbage")
    with pytest.raises(RecsysError, match="corrupt or unreadable"):
        run_predict(world, users=["1"], run_dir=broken)
    with pytest.raises(RecsysError, match="is not a folder"):
        run_predict(world, users=["1"], run_dir=tmp_path / "missing")


def test_default_run_is_the_best_one(world):
    _, text = run_predict(world, users=["1"], run_dir=None, k=2)
    assert "user 1: top 2 recommendations" in text


@pytest.mark.slow
def test_cli_unknown_user_is_one_line(world):
    cmd = [
        sys.executable,
        "-m",
        "recsys.modeling.predict",
        "--dataset",
        DATASET,
        "--user",
        "nobody",
        "--run",
        str(world.id_run),
        "--processed-dir",
        str(world.processed),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [proc.stderr.strip().splitlines()[-1]]
    assert "unknown user id 'nobody'" in errors[0] and "Traceback" not in proc.stderr
