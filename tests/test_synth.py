"""The synthetic H&M and MovieLens files: real schemas, read by the project's own parsers."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from benchmarks import synth
from recsys.cli import RecsysError
from recsys.data.interim import clean
from recsys.data.readers import parse_hm, parse_ml_csv
from recsys.data.sources import DATASETS, ML_CSV_REQUIRED

ROWS = 5_000
HM_FILES = ["articles.csv", "customers.csv", "synth.json", "transactions_train.csv"]
ML_FILES = ["movies.csv", "ratings.csv", "synth.json"]
# code column -> name column of articles.csv: each code has one name and each name one code
HM_CODED = {
    "product_type_no": "product_type_name",
    "graphical_appearance_no": "graphical_appearance_name",
    "colour_group_code": "colour_group_name",
    "perceived_colour_value_id": "perceived_colour_value_name",
    "perceived_colour_master_id": "perceived_colour_master_name",
    "department_no": "department_name",
    "index_code": "index_name",
    "index_group_no": "index_group_name",
    "section_no": "section_name",
    "garment_group_no": "garment_group_name",
}


@pytest.fixture(scope="module")
def hm(tmp_path_factory):
    out = tmp_path_factory.mktemp("hm")
    synth.write_hm(out, ROWS, seed=0)
    return out


def test_scaling_rule_gives_the_real_sizes_at_full_size_and_a_tail_when_small():
    assert (synth.HM.users_for(synth.HM.rows), synth.HM.items_for(synth.HM.rows)) == (
        1_362_281,
        105_542,
    )
    assert (synth.HM.users_for(ROWS), synth.HM.items_for(ROWS)) == (214, 1_324)
    assert synth.ML_32M.users_for(synth.ML_32M.rows) == 200_948


def test_hm_files_have_the_real_layout(hm):
    assert sorted(p.name for p in hm.iterdir()) == HM_FILES  # no temporary files left
    lines = (hm / "transactions_train.csv").read_text().splitlines()
    assert lines[0] == "t_dat,customer_id,article_id,price,sales_channel_id"
    assert len(lines) == ROWS + 1
    raw = pd.read_csv(hm / "transactions_train.csv", dtype=str)
    days = pd.to_datetime(raw["t_dat"], format="%Y-%m-%d")
    assert days.is_monotonic_increasing
    assert days.min() == pd.Timestamp("2018-09-20") and days.max() == pd.Timestamp("2020-09-22")
    assert raw["customer_id"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert raw["article_id"].str.fullmatch(r"0\d{9}").all()
    assert set(raw["sales_channel_id"]) == {"1", "2"}
    price = raw["price"].astype(float)
    assert price.between(0.001, 0.6).all() and price.nunique() > 20

    articles = pd.read_csv(hm / "articles.csv", dtype=str, keep_default_na=False)
    assert list(articles.columns) == synth.HM_ARTICLE_COLUMNS and len(articles.columns) == 25
    assert articles["article_id"].is_unique and articles["article_id"].is_monotonic_increasing
    assert (articles["article_id"].str[:7] == articles["product_code"]).all()
    for code, name in HM_CODED.items():
        pairs = articles[[code, name]].drop_duplicates()
        assert pairs[code].is_unique and pairs[name].is_unique, (code, name)
    assert articles["prod_name"].str.fullmatch(r"[A-Z][a-z]+ [a-z -]+").all()
    described = articles["detail_desc"][articles["detail_desc"] != ""]
    assert described.str.fullmatch(r"[A-Z][a-z]+-fit [a-z -]+ in [a-z -]+ with .+ and .+\.").all()
    assert len(described) > 0.99 * len(articles)

    customers = pd.read_csv(hm / "customers.csv", dtype=str)
    assert list(customers.columns) == synth.HM_CUSTOMER_HEADER.split(",")
    assert set(raw["customer_id"]) <= set(customers["customer_id"])
    assert customers["age"].dropna().astype(int).between(16, 99).all()
    assert set(customers["FN"].dropna()) == {"1.0"}


def test_project_reader_accepts_hm_and_sees_baskets_and_a_long_tail(hm):
    interactions, items = parse_hm(hm)
    item_ids = interactions["item_id"].astype(str)
    assert len(interactions) == ROWS
    assert item_ids.str.len().eq(10).all() and item_ids.str.startswith("0").all()
    assert set(item_ids) <= set(items["item_id"])
    kept, _, report = clean(interactions, items, strict=True, items_file="articles.csv")
    assert report.unknown_item_interactions_dropped == 0
    assert interactions["user_id"].astype(str).str.fullmatch(r"[0-9a-f]{64}").all()
    days = pd.to_datetime(interactions["timestamp"], unit="s")
    assert days.min() >= pd.Timestamp("2018-09-20") and days.max() <= pd.Timestamp("2020-09-22")
    assert (days == days.dt.normalize()).all()  # day resolution, as the original

    basket = interactions.groupby(["user_id", "timestamp"], observed=True).size()
    assert basket.max() > 1 and (basket > 1).mean() > 0.3  # same-day baskets
    per_customer = interactions.groupby("user_id", observed=True).size()
    assert per_customer.max() > 5 * per_customer.median()  # heavy-tailed activity
    sales = np.sort(item_ids.value_counts().to_numpy())[::-1]
    assert sales[: len(items) // 10].sum() > 0.4 * ROWS  # top 10 % of articles
    assert items["title"].ne("").all() and items["colour_group_name"].ne("").all()


@pytest.mark.parametrize("scale", [synth.ML_20M, synth.ML_32M], ids=lambda s: s.name)
def test_movielens_files_parse_with_the_ml_csv_reader(tmp_path, scale):
    synth.write_movielens(tmp_path, scale, ROWS, seed=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ML_FILES
    assert DATASETS[scale.name].parser == "ml-csv"
    assert set(ML_CSV_REQUIRED) <= set(ML_FILES)
    interactions, items = parse_ml_csv(tmp_path)
    assert len(interactions) == ROWS
    users, movies = interactions["user_id"].to_numpy(), interactions["item_id"].to_numpy()
    # sorted by userId, then movieId, as the originals; each movie rated once per user
    assert ((np.diff(users) > 0) | ((np.diff(users) == 0) & (np.diff(movies) > 0))).all()
    assert np.bincount(users)[1:].min() >= synth.ML_MIN_RATINGS
    assert set(np.unique(users)) == set(range(1, scale.users_for(ROWS) + 1))
    assert set(movies) <= set(items["item_id"])
    ratings = interactions["rating"].to_numpy()
    assert ratings.min() >= 0.5 and ratings.max() == 5.0 and (ratings * 2 % 1 == 0).all()
    last = synth.ML_LAST_TIME[scale.name]
    assert interactions["timestamp"].between(synth.ML_FIRST_TIME, last).all()

    assert items["year"].notna().all() and items["title"].str.fullmatch(r".+ \(\d{4}\)").all()
    genres = set("|".join(items["genres"]).split("|"))
    assert genres <= set(synth.ML_GENRES) | {synth.ML_NO_GENRES}
    text = (tmp_path / "movies.csv").read_text()
    with_commas = items["title"][items["title"].str.contains(",")]
    assert len(with_commas) > 0 and all(f'"{title}"' in text for title in with_commas)
    lines = (tmp_path / "ratings.csv").read_text().splitlines()
    assert lines[0] == "userId,movieId,rating,timestamp"
    assert all(re.fullmatch(r"\d+,\d+,[0-5]\.[05],\d{9,10}", line) for line in lines[1:])


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        synth.write_hm(tmp_path / name / "hm", 2_000, seed)
        synth.write_movielens(tmp_path / name / "ml", synth.ML_20M, 2_000, seed)

    def contents(name: str) -> dict[str, bytes]:
        folder = tmp_path / name
        return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*.csv")}

    assert len(contents("a")) == 5
    assert contents("a") == contents("b")
    assert all(contents("a")[k] != v for k, v in contents("c").items())


def test_cli_writes_the_files_and_rejects_a_bad_row_count(tmp_path):
    result = CliRunner().invoke(
        synth.app, ["ml-32m", "--rows", "500", "--out", str(tmp_path), "--seed", "1"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ratings.csv").read_text().count("\n") == 501
    with pytest.raises(RecsysError, match="--rows must be at least 1"):
        synth.write_hm(tmp_path / "hm", 0, seed=0)


def test_files_written_in_several_blocks_keep_one_header_and_the_order(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "CHUNK_ROWS", 700)
    synth.write_hm(tmp_path / "hm", 3_000, seed=1)
    synth.write_movielens(tmp_path / "ml", synth.ML_20M, 3_000, seed=1)
    interactions, _ = parse_hm(tmp_path / "hm")
    assert len(interactions) == 3_000 and interactions["timestamp"].is_monotonic_increasing
    ratings, _ = parse_ml_csv(tmp_path / "ml")
    assert len(ratings) == 3_000 and ratings["user_id"].is_monotonic_increasing
    for path in (tmp_path / "hm" / "transactions_train.csv", tmp_path / "ml" / "ratings.csv"):
        lines = path.read_text().splitlines()
        assert sum(line == lines[0] for line in lines) == 1 and len(lines) == 3_001
