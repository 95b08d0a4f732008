"""Integration tests of the data pipeline on the data mirror (../shared/data)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from recsys.data.interim import interim
from recsys.data.sources import MIRROR_ENV, download, read_manifest
from recsys.data.split import process
from recsys.processed import TEST, VALID, load_processed, user_sequences

pytestmark = pytest.mark.integration
PROJ_ROOT = Path(__file__).resolve().parents[1]


def run_chain(name: str, mirror: Path, root: Path):
    raw = download(name, raw_root=root / "raw", mirror=mirror)
    interim(name, root / "raw", root / "interim")
    process(name, root / "interim", root / "processed")
    return raw, load_processed(name, root / "processed")


def assert_leave_one_out(events) -> None:
    """Exactly one valid and one test event per user: the last two, in that order."""
    per_user = events.groupby("user_idx")["split"]
    assert (per_user.apply(lambda s: (s == VALID).sum()) == 1).all()
    assert (per_user.apply(lambda s: (s == TEST).sum()) == 1).all()
    assert (per_user.nth(-1) == TEST).all() and (per_user.nth(-2) == VALID).all()
    time_sorted = events.groupby("user_idx")["timestamp"].apply(
        lambda t: bool(np.all(np.diff(t.to_numpy()) >= 0))
    )
    assert time_sorted.all()


def test_ml_100k_from_mirror(mirror, tmp_path, capsys):
    raw, data = run_chain("ml-100k", mirror, tmp_path)
    manifest = read_manifest(raw)
    assert all(entry["verified"] for entry in manifest["files"].values())
    assert len(manifest["files"]) == 23
    assert (data.n_users, data.n_items, data.n_catalogue) == (943, 1682, 1682)
    assert len(data.events) == 100_000
    assert_leave_one_out(data.events)
    assert data.events["split"].value_counts().to_dict() == {0: 100_000 - 2 * 943, 1: 943, 2: 943}
    toy_story = data.items.set_index("item_id").loc[1]
    assert toy_story["title"] == "Toy Story (1995)"
    assert toy_story["genres"] == "Animation|Children's|Comedy"
    assert toy_story["year"] == 1995
    stats = json.loads((tmp_path / "processed" / "ml-100k" / "stats.json").read_text())
    assert stats["raw_files"]["u.data"]["md5"] == "6e47046882bad158b0efbb84cd5cb987"
    assert stats["n_interactions"] == 100_000 and stats["sequence_length"]["min"] == 20
    capsys.readouterr()
    download("ml-100k", raw_root=tmp_path / "raw", mirror=mirror)
    assert "already in" in capsys.readouterr().err


def test_ml_latest_small_from_mirror(mirror, tmp_path):
    _, data = run_chain("ml-latest-small", mirror, tmp_path)
    assert (data.n_users, data.n_items, data.n_catalogue) == (610, 9724, 9742)
    assert len(data.events) == 100_836
    assert_leave_one_out(data.events)
    cold = data.items[data.items["item_idx"] > data.n_items]
    assert len(cold) == 18 and (cold["n_interactions"] == 0).all()
    toy_story = data.items.set_index("item_id").loc[1]
    assert toy_story["genres"] == "Adventure|Animation|Children|Comedy|Fantasy"
    assert "pixar" in toy_story["tags"].split("|")
    assert toy_story["imdb_id"] == "0114709"


def test_ml_latest_small_ties_no_longer_follow_the_movie_id(mirror, tmp_path):
    """ratings.csv is sorted by user, then movie id: in file order every tied test item has the
    larger id; the default seeded shuffle breaks that link."""
    _, data = run_chain("ml-latest-small", mirror, tmp_path)
    ties = data.stats["ties"]
    assert (ties["policy"], ties["seed"]) == ("shuffle", 0)
    events, ids = data.events, data.items.set_index("item_idx")["item_id"]
    valid = events[events["split"] == VALID].set_index("user_idx")
    test = events[events["split"] == TEST].set_index("user_idx")
    tied = test.index[test["timestamp"].to_numpy() == valid.loc[test.index, "timestamp"]]
    assert len(tied) == ties["users_test_target_tied"] > 50
    larger = (
        ids.loc[test.loc[tied, "item_idx"]].to_numpy()
        > ids.loc[valid.loc[tied, "item_idx"]].to_numpy()
    )
    assert 0.25 < larger.mean() < 0.75  # file order: 1.0


@pytest.fixture
def beauty_mirror(mirror) -> Path:
    if not (mirror / "amazon-beauty").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI must have amazon-beauty in the mirror, but {mirror} lacks it")
        pytest.skip(f"no amazon-beauty in the mirror {mirror}")
    return mirror


def test_amazon_beauty_from_mirror(beauty_mirror, tmp_path):
    raw, data = run_chain("amazon-beauty", beauty_mirror, tmp_path)
    manifest = read_manifest(raw)
    assert sorted(manifest["files"]) == ["Beauty.txt", "items.tsv"]
    assert all(entry["verified"] for entry in manifest["files"].values())
    assert (data.n_users, data.n_items, data.n_catalogue) == (22_363, 12_101, 12_101)
    assert len(data.events) == 198_502
    assert data.stats["filter"]["interactions_removed"] == 0
    assert (
        data.stats["sequence_length"]["min"] == 5 and data.stats["sequence_length"]["max"] == 204
    )
    assert data.stats["ties"]["events_in_tied_groups"] == 0
    assert_leave_one_out(data.events)
    # Each user's processed sequence is their line of Beauty.txt, in the line's order.
    lines = (beauty_mirror / "amazon-beauty" / "Beauty.txt").read_text().split("\n")[:-1]
    user_of = data.users.set_index("user_idx")["user_id"]
    item_of = data.items.set_index("item_idx")["item_id"].to_numpy()
    written = {int(parts[0]): parts[1:] for parts in map(str.split, lines)}
    for user_idx, seq in user_sequences(data.events).items():
        assert written[int(user_of[user_idx])] == [str(i) for i in item_of[seq - 1]]
    item = data.items.set_index("item_id").loc[1]
    assert item["asin"] == "B004756YJA" and item["brand"] == "OPI"
    assert item["categories"] == "Beauty > Makeup > Nails > Nail Polish"
    assert (data.items["title"].str.count('"') % 2 == 1).sum() > 0  # unbalanced quotes kept


def test_ml_1m_mirror_without_ratings_is_one_line_saying_what_to_do(mirror, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env |= {"RECSYS_DATA_DIR": str(tmp_path / "data"), MIRROR_ENV: str(mirror)}
    proc = subprocess.run(
        [sys.executable, "-m", "recsys.dataset", "download", "--dataset", "ml-1m"],
        cwd=PROJ_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ml-1m: ratings.dat (1,000,209 lines")
    assert f"put ratings.dat in {tmp_path / 'data' / 'raw' / 'ml-1m'}/" in lines[0]
    assert "https://files.grouplens.org/datasets/movielens/ml-1m.zip" in lines[0]
    assert not (tmp_path / "data" / "raw" / "ml-1m").exists()
