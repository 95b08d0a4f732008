"""Unit tests of the data pipeline on small synthetic files (no mirror, no internet)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsys.cli import RecsysError
from recsys.data.custom import CustomSource, parse_custom
from recsys.data.interim import clean, interim
from recsys.data.readers import (
    INTERACTION_COLUMNS,
    aggregate_tags,
    parse_hm,
    parse_ml_csv,
    parse_ml_dat,
    read_ratings,
)
from recsys.data.sources import (
    DATASETS,
    MANIFEST_FILE,
    MIRROR_ENV,
    download,
    get_spec,
    read_manifest,
)
from recsys.data.split import FilterSettings, SplitSettings, build_processed, filter_mask, process
from recsys.processed import TEST, TRAIN, VALID, eval_examples, load_processed

PROJ_ROOT = Path(__file__).resolve().parents[1]
GENRES = ["unknown", "Action", "Children's", "Comedy"]
# A synthetic ml-100k: the registry entry without the original's checksums or URL.
SPEC = replace(DATASETS["ml-100k"], url=None, archive_bytes=None, archive_md5=None, file_md5={})


@pytest.fixture(autouse=True)
def no_mirror(monkeypatch):
    """CI exports RECSYS_DATA_MIRROR; these tests choose their sources themselves.

    They also serve files on 127.0.0.1, which must not go through a proxy from the environment.
    """
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


def ml100k_files(
    ratings: list[tuple] | None = None, items: list[tuple] | None = None
) -> dict[str, bytes]:
    """The three ml-100k files: u.data (tab), u.item (Latin-1, '|', genre flags), u.genre."""
    ratings = ratings or [
        (1, 10, 4, 100),
        (1, 20, 3, 100),  # same second as the row above: file order must decide
        (1, 30, 5, 90),
        (1, 40, 2, 300),
        (2, 10, 5, 50),
        (2, 30, 1, 60),
        (2, 20, 4, 70),
        (3, 10, 3, 10),
        (3, 40, 3, 20),
    ]
    items = items or [
        (10, "Toy Story (1995)", "0110"),
        (20, "Café Society (1995)", "0001"),
        (30, "Heat (1995)", "0100"),
        (40, "Cold One (1996)", "0000"),
        (50, "Never Rated (1997)", "0001"),
    ]
    u_data = "".join("\t".join(map(str, row)) + "\n" for row in ratings)
    u_item = "".join(
        f"{i}|{title}|01-Jan-1995||http://imdb/{i}|{'|'.join(flags)}\n"
        for i, title, flags in items
    )
    u_genre = "".join(f"{name}|{k}\n" for k, name in enumerate(GENRES)) + "\n"
    return {
        "u.data": u_data.encode(),
        "u.item": u_item.encode("latin-1"),
        "u.genre": u_genre.encode(),
    }


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def make_raw(root: Path, files: dict[str, bytes] | None = None) -> Path:
    """A raw folder installed the way a user would: files placed, then ``download``."""
    write_files(root / "raw" / SPEC.name, files or ml100k_files())
    return download(SPEC, raw_root=root / "raw")


def build(root: Path, **kwargs) -> Path:
    """raw -> interim -> processed under ``root`` for the synthetic ml-100k."""
    interim(SPEC, root / "raw", root / "interim", strict=kwargs.pop("strict", False))
    return process(SPEC, root / "interim", root / "processed", **kwargs)


def zipped(files: dict[str, bytes], top: str = "ml-100k") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(f"{top}/{name}", content)
    return buffer.getvalue()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: md5(p.read_bytes()) for p in sorted(folder.iterdir())}


# --------------------------------------------------------------------------------------------
# registry and download
# --------------------------------------------------------------------------------------------


def test_registry_points_at_grouplens_with_known_checksums():
    for name in ("ml-100k", "ml-1m", "ml-20m", "ml-32m", "ml-latest-small"):
        spec = DATASETS[name]
        assert spec.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
    assert DATASETS["ml-1m"].archive_bytes == 5_917_549
    assert DATASETS["ml-1m"].archive_md5 == "c4d9eecfca2ab87c1945afe126590906"
    assert DATASETS["ml-100k"].archive_md5 == "0e33842e24a9c977be4e0107933c0723"
    assert len(DATASETS["ml-100k"].file_md5) == 23
    assert DATASETS["hm"].url is None and "kaggle" in DATASETS["hm"].homepage


def test_unknown_dataset_name_lists_the_choices():
    with pytest.raises(RecsysError, match="unknown dataset 'ml-5m'; choose one of ml-100k"):
        get_spec("ml-5m")


class _Server:
    """Serves a folder over HTTP on 127.0.0.1 and counts the requests."""

    def __init__(self, folder: Path):
        self.requests = 0
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                server.requests += 1
                super().do_GET()

            def log_message(self, *args):
                pass

        handler = functools.partial(Handler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_archive(tmp_path):
    """A good and a corrupted copy (same size) of a synthetic ml-100k.zip served over HTTP."""
    files = ml100k_files()
    data = zipped(files)
    write_files(tmp_path / "www" / "good", {"ml-100k.zip": data})
    corrupted = bytearray(data)
    corrupted[len(data) // 2] ^= 0xFF
    write_files(tmp_path / "www" / "bad", {"ml-100k.zip": bytes(corrupted)})
    server = _Server(tmp_path / "www")
    spec = replace(
        SPEC,
        url=f"{server.url}/good/ml-100k.zip",
        archive_bytes=len(data),
        archive_md5=md5(data),
        file_md5={"u.data": md5(files["u.data"])},
    )
    yield server, spec, files
    server.close()


def test_http_download_verifies_extracts_and_is_idempotent(tmp_path, http_archive, capsys):
    server, spec, files = http_archive
    raw = tmp_path / "raw"
    target = download(spec, raw_root=raw)
    assert (target / "u.data").read_bytes() == files["u.data"]  # top folder stripped
    assert (raw / "ml-100k.zip").is_file()  # kept for a later re-extraction
    manifest = read_manifest(target)
    assert manifest["files"]["u.data"] == {
        "bytes": len(files["u.data"]),
        "md5": md5(files["u.data"]),
        "verified": True,
    }
    assert server.requests == 1
    capsys.readouterr()
    download(spec, raw_root=raw)
    assert "already in" in capsys.readouterr().err
    assert server.requests == 1


def test_http_download_refuses_a_corrupted_copy(tmp_path, http_archive):
    server, spec, _ = http_archive
    raw = tmp_path / "raw"
    bad = replace(spec, url=f"{server.url}/bad/ml-100k.zip")
    with pytest.raises(RecsysError, match=r"has md5 \w+ but the original ml-100k.zip has"):
        download(bad, raw_root=raw)
    assert server.requests == 1
    assert not (raw / "ml-100k").exists()
    assert list(raw.iterdir()) == []  # neither the archive nor a temp file is left


def test_offline_without_mirror_says_where_to_put_the_files(tmp_path):
    spec = replace(SPEC, url="http://127.0.0.1:9/ml-100k.zip")  # discard port: refused
    with pytest.raises(RecsysError) as err:
        download(spec, raw_root=tmp_path / "raw")
    message = str(err.value)
    assert "could not download http://127.0.0.1:9/ml-100k.zip" in message
    assert f"put ml-100k.zip in {tmp_path / 'raw'}/" in message
    assert f"in {tmp_path / 'raw' / 'ml-100k'}/" in message and MIRROR_ENV in message
    assert "\n" not in message


def test_truncated_archive_is_refused_by_size(tmp_path):
    data = zipped(ml100k_files())
    write_files(tmp_path / "raw", {"ml-100k.zip": data[: len(data) // 2]})
    spec = replace(SPEC, url="http://unused/ml-100k.zip", archive_bytes=len(data))
    with pytest.raises(RecsysError, match="truncated or a different file"):
        download(spec, raw_root=tmp_path / "raw")
    assert not (tmp_path / "raw" / "ml-100k").exists()


def test_corrupt_archive_without_known_md5_is_refused_when_extracting(tmp_path):
    data = zipped(ml100k_files())
    write_files(tmp_path / "raw", {"ml-100k.zip": data[: len(data) - 30]})
    spec = replace(SPEC, url="http://unused/ml-100k.zip")
    with pytest.raises(RecsysError, match="is corrupt or truncated"):
        download(spec, raw_root=tmp_path / "raw")
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["ml-100k.zip"]


def test_failed_extraction_leaves_the_users_files_untouched(tmp_path):
    files = ml100k_files()
    data = bytearray(zipped(files))  # members in order u.data, u.item, u.genre
    data[data.index(b"ml-100k/u.item") + 40] ^= 0xFF  # damage u.item's compressed bytes
    write_files(tmp_path / "raw", {"ml-100k.zip": bytes(data)})
    mine = b"1\t10\t4\t100\n"
    write_files(tmp_path / "raw" / "ml-100k", {"u.data": mine})
    spec = replace(SPEC, url="http://unused/ml-100k.zip")
    with pytest.raises(RecsysError, match="is corrupt or truncated"):
        download(spec, raw_root=tmp_path / "raw")
    assert [p.name for p in (tmp_path / "raw" / "ml-100k").iterdir()] == ["u.data"]
    assert (tmp_path / "raw" / "ml-100k" / "u.data").read_bytes() == mine


def test_mirror_from_env_read_at_call_time(tmp_path, monkeypatch):
    files = ml100k_files()
    write_files(tmp_path / "mirror" / "ml-100k", files)
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    spec = replace(SPEC, file_md5={name: md5(content) for name, content in files.items()})
    target = download(spec, raw_root=tmp_path / "raw")
    assert snapshot(target) == {
        MANIFEST_FILE: md5((target / MANIFEST_FILE).read_bytes()),
        **{name: md5(content) for name, content in files.items()},
    }
    assert not os.path.samefile(target / "u.data", tmp_path / "mirror" / "ml-100k" / "u.data")
    assert read_manifest(target)["source"] == f"mirror {tmp_path / 'mirror' / 'ml-100k'}"


def test_mirror_file_with_wrong_md5_is_refused(tmp_path):
    files = ml100k_files()
    spec = replace(SPEC, file_md5={name: md5(content) for name, content in files.items()})
    write_files(
        tmp_path / "mirror" / "ml-100k", {**files, "u.data": files["u.data"] + b"9\t9\t9\t9\n"}
    )
    with pytest.raises(RecsysError, match="u.data from mirror .* has md5 .* but the original has"):
        download(spec, raw_root=tmp_path / "raw", mirror=tmp_path / "mirror")
    assert not (tmp_path / "raw" / "ml-100k").exists()


def test_incomplete_mirror_names_the_missing_file_and_never_downloads(tmp_path):
    files = ml100k_files()
    del files["u.data"]
    write_files(tmp_path / "mirror" / "ml-100k", files)
    spec = replace(SPEC, url="http://127.0.0.1:9/ml-100k.zip", hints={"u.data": "100,000 lines"})
    with pytest.raises(RecsysError) as err:
        download(spec, raw_root=tmp_path / "raw", mirror=tmp_path / "mirror")
    message = str(err.value)
    assert message.startswith("ml-100k: u.data (100,000 lines) is missing from")
    assert f"put u.data in {tmp_path / 'raw' / 'ml-100k'}/" in message
    assert "could not download" not in message


def test_archive_in_mirror_is_verified_and_extracted(tmp_path):
    files = ml100k_files()
    data = zipped(files)
    write_files(tmp_path / "mirror" / "ml-100k", {"ml-100k.zip": data})
    spec = replace(SPEC, url="http://127.0.0.1:9/ml-100k.zip", archive_md5=md5(data))
    target = download(spec, raw_root=tmp_path / "raw", mirror=tmp_path / "mirror")
    assert (target / "u.item").read_bytes() == files["u.item"]
    assert read_manifest(target)["source"].endswith("mirror/ml-100k/ml-100k.zip")
    wrong = replace(spec, archive_md5="0" * 32)
    with pytest.raises(RecsysError, match="has md5 .* but the original ml-100k.zip has 0000"):
        download(wrong, raw_root=tmp_path / "raw2", mirror=tmp_path / "mirror")


def test_missing_mirror_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(RecsysError, match=f"the mirror folder {tmp_path / 'nowhere'} does not"):
        download(SPEC, raw_root=tmp_path / "raw")


def test_user_placed_file_completes_an_incomplete_mirror(tmp_path):
    files = ml100k_files()
    write_files(tmp_path / "mirror" / "ml-100k", {k: v for k, v in files.items() if k != "u.data"})
    write_files(tmp_path / "raw" / "ml-100k", {"u.data": files["u.data"]})
    target = download(SPEC, raw_root=tmp_path / "raw", mirror=tmp_path / "mirror")
    assert sorted(read_manifest(target)["files"]) == ["u.data", "u.genre", "u.item"]


def test_hm_without_files_points_to_kaggle(tmp_path):
    with pytest.raises(
        RecsysError, match="transactions_train.csv, articles.csv are missing.*kaggle"
    ):
        download("hm", raw_root=tmp_path / "raw")


# --------------------------------------------------------------------------------------------
# readers and interim
# --------------------------------------------------------------------------------------------


def test_double_colon_ratings_are_read_exactly(tmp_path):
    rng = np.random.default_rng(0)
    rows = rng.integers(1, 10**6, size=(500, 4))
    text = "".join(f"{u}::{i}::{r % 5 + 0.5}::{t}\r\n" for u, i, r, t in rows)
    (tmp_path / "ratings.dat").write_text(text[:-2])  # no newline after the last row
    frame = read_ratings(tmp_path / "ratings.dat", "::", ("u", "i", "r", "t"), header=False)
    assert list(frame.columns) == INTERACTION_COLUMNS
    np.testing.assert_array_equal(frame["user_id"], rows[:, 0])
    np.testing.assert_array_equal(frame["item_id"], rows[:, 1])
    np.testing.assert_array_equal(frame["timestamp"], rows[:, 3])
    np.testing.assert_allclose(frame["rating"], rows[:, 2] % 5 + 0.5)


@pytest.mark.parametrize(
    "line, expected",
    [
        (b"1:10:5:978300760\n", "Expected 7 columns, got 4"),
        (b"1::10::5\n", "Expected 7 columns, got 5"),
        (b"1:x:10::5::978300760\n", "conversion error to null: invalid value 'x'"),
        (b"1::10::five::978300760\n", "conversion error to float: invalid value 'five'"),
    ],
)
def test_malformed_double_colon_lines_are_refused(tmp_path, line, expected):
    (tmp_path / "ratings.dat").write_bytes(b"1::20::4::978300761\n" + line)
    with pytest.raises(RecsysError, match=expected) as err:
        read_ratings(tmp_path / "ratings.dat", "::", ("u", "i", "r", "t"), header=False)
    assert "separated by '::'" in str(err.value)


def test_ml_dat_parser_reads_latin1_titles_and_genres(tmp_path):
    write_files(
        tmp_path,
        {
            "ratings.dat": b"1::1::5::978300760\n1::2::3::978302109\n",
            "movies.dat": "1::Toy Story (1995)::Animation|Children's|Comedy\n"
            "2::Cité des enfants perdus, La (1995)::Adventure|Sci-Fi\n".encode("latin-1"),
        },
    )
    interactions, items = parse_ml_dat(tmp_path)
    assert items["title"].tolist()[1] == "Cité des enfants perdus, La (1995)"
    assert items["genres"].tolist()[0] == "Animation|Children's|Comedy"
    assert items["year"].tolist() == [1995, 1995]
    assert interactions["timestamp"].tolist() == [978300760, 978302109]


@pytest.mark.parametrize(
    "u_data, expected",
    [
        (
            b"1,10,4,100\n",
            r"cannot parse .*u.data at line 1: CSV parse error: Expected 4 columns, got 1",
        ),
        (b"1\t10\t4\n", r"Expected 4 columns, got 3"),
        (b"1\t10\t4\t100\nabc\t10\t4\t100\n", r"conversion error to int64: invalid value 'abc'"),
        (b"1\t10\t4\t2020-01-01\n", r"conversion error to int64: invalid value '2020-01-01'"),
        (b"", r"u.data is empty"),
    ],
    ids=["wrong-delimiter", "missing-column", "non-numeric-id", "non-numeric-time", "empty"],
)
def test_bad_raw_files_are_one_line_errors_and_keep_previous_interim(tmp_path, u_data, expected):
    make_raw(tmp_path)
    out = interim(SPEC, tmp_path / "raw", tmp_path / "interim")
    before = snapshot(out)
    (tmp_path / "raw" / "ml-100k" / "u.data").write_bytes(u_data)
    with pytest.raises(RecsysError, match=expected) as err:
        interim(SPEC, tmp_path / "raw", tmp_path / "interim")
    assert "\n" not in str(err.value)
    assert snapshot(out) == before
    assert sorted(p.name for p in (tmp_path / "interim").iterdir()) == ["ml-100k"]


def test_csv_with_missing_column_names_it(tmp_path):
    write_files(
        tmp_path,
        {
            "ratings.csv": b"userId,movieId,rating\n1,1,4.0\n",
            "movies.csv": b"movieId,title,genres\n1,Toy Story (1995),Comedy\n",
        },
    )
    with pytest.raises(RecsysError, match="Column 'timestamp' in include_columns does not exist"):
        parse_ml_csv(tmp_path)


def test_header_only_file_is_refused(tmp_path):
    write_files(tmp_path, {"ratings.csv": b"userId,movieId,rating,timestamp\n"})
    with pytest.raises(RecsysError, match="has no data rows"):
        read_ratings(
            tmp_path / "ratings.csv", ",", ("userId", "movieId", "rating", "timestamp"), True
        )


def test_interim_tables_keep_file_order_original_ids_and_readable_genres(tmp_path):
    make_raw(tmp_path)
    out = interim(SPEC, tmp_path / "raw", tmp_path / "interim")
    interactions = pd.read_parquet(out / "interactions.parquet")
    items = pd.read_parquet(out / "items.parquet")
    assert list(interactions.columns) == ["user_id", "item_id", "timestamp", "rating"]
    assert interactions["item_id"].tolist() == [10, 20, 30, 40, 10, 30, 20, 10, 40]
    assert str(interactions["timestamp"].dtype) == "int64"
    assert items.set_index("item_id").loc[10, "genres"] == "Action|Children's"
    assert items.set_index("item_id").loc[20, "title"] == "Café Society (1995)"
    assert items.set_index("item_id").loc[40, "genres"] == ""
    assert items["year"].tolist() == [1995, 1995, 1995, 1996, 1997]
    assert {"release_date", "imdb_url"} <= set(items.columns)


def test_duplicates_are_dropped_and_counted(tmp_path):
    ratings = [(1, 10, 4, 100), (1, 10, 4, 100), (1, 20, 4, 100), (1, 30, 4, 200)]
    make_raw(tmp_path, ml100k_files(ratings=ratings))
    out = interim(SPEC, tmp_path / "raw", tmp_path / "interim")
    assert len(pd.read_parquet(out / "interactions.parquet")) == 3
    assert json.loads((out / "manifest.json").read_text())["duplicates_dropped"] == 1


def test_unknown_items_are_dropped_and_counted_or_refused_with_strict(tmp_path):
    ratings = [(1, 10, 4, 1), (1, 20, 4, 2), (1, 99, 4, 3), (1, 30, 4, 4), (1, 99, 2, 5)]
    make_raw(tmp_path, ml100k_files(ratings=ratings))
    with pytest.raises(
        RecsysError, match=r"2 interactions refer to item ids missing .*\(e.g. 99\)"
    ):
        interim(SPEC, tmp_path / "raw", tmp_path / "interim", strict=True)
    assert not (tmp_path / "interim" / "ml-100k").exists()
    out = interim(SPEC, tmp_path / "raw", tmp_path / "interim")
    assert pd.read_parquet(out / "interactions.parquet")["item_id"].tolist() == [10, 20, 30]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["unknown_item_interactions_dropped"] == 2
    assert manifest["unknown_item_examples"] == [99]
    with pytest.raises(RecsysError, match="interim dropped 2 interactions .* --strict refuses"):
        process(SPEC, tmp_path / "interim", tmp_path / "processed", strict=True)
    process(SPEC, tmp_path / "interim", tmp_path / "processed")
    stats = json.loads((tmp_path / "processed" / "ml-100k" / "stats.json").read_text())
    assert stats["interim"]["unknown_item_interactions_dropped"] == 2


def test_duplicate_item_ids_in_item_table_are_refused(tmp_path):
    items = [(10, "A (1995)", "0100"), (10, "B (1995)", "0100")]
    make_raw(tmp_path, ml100k_files(ratings=[(1, 10, 4, 1)], items=items))
    with pytest.raises(RecsysError, match="lists item id 10 more than once"):
        interim(SPEC, tmp_path / "raw", tmp_path / "interim")


def test_interim_before_download_names_the_fix(tmp_path):
    with pytest.raises(
        RecsysError, match="run 'python -m recsys.dataset download --dataset ml-100k'"
    ):
        interim(SPEC, tmp_path / "raw", tmp_path / "interim")


def test_tags_are_aggregated_most_used_first_case_insensitively():
    tags = pd.DataFrame(
        {
            "movieId": [1, 1, 1, 1, 2, 1],
            "tag": ["funny", "Pixar", "pixar ", "", "dark", "clever"],
        }
    )
    assert aggregate_tags(tags).to_dict() == {1: "Pixar|funny|clever", 2: "dark"}


def test_hm_parser_keeps_string_ids_and_article_text(tmp_path):
    write_files(
        tmp_path,
        {
            "transactions_train.csv": b"t_dat,customer_id,article_id,price,sales_channel_id\n"
            b"2018-09-20,%s,0108775015,0.05,2\n2018-09-20,%s,0108775044,0.03,2\n"
            b"2018-09-21,%s,0108775015,0.05,1\n" % (b"a" * 64, b"a" * 64, b"d" * 64),
            "articles.csv": (
                "article_id,prod_name,product_type_name,product_group_name,"
                "graphical_appearance_name,colour_group_name,perceived_colour_value_name,"
                "index_name,section_name,detail_desc,extra\n"
                "0108775015,Strap top,Vest top,Garment Upper body,Solid,Black,Dark,Ladieswear,"
                'Womens Basics,"Jersey top, narrow straps",x\n'
                "0108775044,Strap top,Vest top,Garment Upper body,Solid,White,Light,Ladieswear,"
                "Womens Basics,Jersey top,y\n"
            ).encode(),
        },
    )
    interactions, items = parse_hm(tmp_path)
    assert interactions["item_id"].astype(str).tolist() == [
        "0108775015",
        "0108775044",
        "0108775015",
    ]
    assert interactions["timestamp"].tolist() == [1537401600, 1537401600, 1537488000]
    assert items["title"].tolist() == ["Strap top", "Strap top"]
    assert items["detail_desc"].tolist()[0] == "Jersey top, narrow straps"
    assert "extra" not in items.columns
    kept, _, report = clean(interactions, items, strict=True, items_file="articles.csv")
    assert len(kept) == 3 and report.unknown_item_interactions_dropped == 0


def test_custom_csv_with_string_ids_dates_and_column_mapping(tmp_path):
    write_files(
        tmp_path,
        {
            "log.csv": b"who,what,when,stars\nu1,b,2020-01-02,5\nu1,a,2020-01-01,4\n"
            b"u1,c,2020-01-03,3\nu2,a,2020-01-01,2\nu2,b,2020-01-05,1\nu2,c,2020-01-06,1\n",
        },
    )
    pd.DataFrame(
        {"sku": ["a", "b", "c", "d"], "name": ["A", "B", "C", "D"], "blurb": list("wxyz")}
    ).to_parquet(tmp_path / "items.parquet")
    source = CustomSource(
        interactions=tmp_path / "log.csv",
        items=tmp_path / "items.parquet",
        user_col="who",
        item_col="what",
        time_col="when",
        rating_col="stars",
        items_id_col="sku",
        title_col="name",
    )
    interim("custom", interim_root=tmp_path / "interim", custom=source)
    process("custom", tmp_path / "interim", tmp_path / "processed")
    data = load_processed("custom", tmp_path / "processed")
    assert (data.n_users, data.n_items, data.n_catalogue) == (2, 3, 4)
    assert data.items["title"].tolist() == ["A", "B", "C", "D"]
    assert data.items["blurb"].tolist() == list("wxyz")
    first_user = data.events[data.events["user_idx"] == 1]
    assert first_user["item_idx"].tolist() == [1, 2, 3]  # a (Jan 1), b (Jan 2), c (Jan 3)
    assert first_user["timestamp"].iloc[0] == 1577836800


def test_custom_ids_keep_zero_padding_and_numbers_stay_numbers(tmp_path):
    write_files(
        tmp_path,
        {
            "log.csv": b"user_id,item_id,timestamp\n7,0012,1\n7,0100,2\n7,0012,3\n",
            "items.csv": b"item_id,title,colour\n0012,Top,red\n0100,Skirt,\n",
        },
    )
    interactions, items = parse_custom(
        CustomSource(interactions=tmp_path / "log.csv", items=tmp_path / "items.csv")
    )
    assert interactions["user_id"].tolist() == [7, 7, 7]
    assert interactions["item_id"].tolist() == ["0012", "0100", "0012"]
    assert items.to_dict("list") == {
        "item_id": ["0012", "0100"],
        "title": ["Top", "Skirt"],
        "colour": ["red", ""],
    }


def test_custom_errors_name_the_column(tmp_path):
    write_files(tmp_path, {"log.csv": b"user,item,time\n1,2,soon\n1,3,later\n"})
    source = CustomSource(interactions=tmp_path / "log.csv", user_col="user", item_col="item")
    with pytest.raises(RecsysError, match="Column 'timestamp' in include_columns does not exist"):
        parse_custom(source)
    with pytest.raises(RecsysError, match="column 'time' holds non-numeric timestamps"):
        parse_custom(replace(source, time_col="time"))
    with pytest.raises(RecsysError, match="need --dataset custom, not ml-100k"):
        interim("ml-100k", interim_root=tmp_path, custom=source)


# --------------------------------------------------------------------------------------------
# processed data
# --------------------------------------------------------------------------------------------


def test_processed_ids_order_and_leave_one_out(tmp_path):
    make_raw(tmp_path)
    out = build(tmp_path, split=SplitSettings(ties="file"))
    data = load_processed("ml-100k", tmp_path / "processed")
    # Users 1, 2 have >= 3 events; user 3 (2 events) is filtered out by the default minimum.
    assert data.users["user_id"].tolist() == [1, 2]
    assert (data.n_users, data.n_items, data.n_catalogue) == (2, 4, 5)
    items = data.items.set_index("item_id")
    assert items["item_idx"].tolist() == [1, 2, 3, 4, 5]  # item 50 has no events: cold, last
    assert items["n_interactions"].tolist() == [2, 2, 2, 1, 0]
    assert data.events["item_idx"].min() >= 1
    user1 = data.events[data.events["user_idx"] == 1]
    # time order 90, 100, 100, 300; the tie at 100 keeps file order (item 10 before 20).
    assert user1["timestamp"].tolist() == [90, 100, 100, 300]
    assert user1["item_idx"].tolist() == [3, 1, 2, 4]
    assert user1["split"].tolist() == [TRAIN, TRAIN, VALID, TEST]
    for split in ("valid", "test"):
        examples = eval_examples(data.events, split)
        assert examples.users.tolist() == [1, 2]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["split"]["events"] == {"train": 3, "valid": 2, "test": 2}
    assert stats["raw_files"]["u.data"]["md5"] == md5(ml100k_files()["u.data"])
    assert stats["sequence_length"]["min"] == 3 and stats["sequence_length"]["max"] == 4
    assert stats["density"] == pytest.approx(7 / (2 * 4))
    assert stats["ties"] == {
        "policy": "file",
        "seed": None,
        "users_test_target_tied": 0,
        "users_valid_target_tied": 1,  # user 1: valid item 20 at 100, like item 10 before it
        "events_in_tied_groups": 2,
    }


def test_timestamp_ties_keep_file_order_at_scale():
    rng = np.random.default_rng(1)
    n = 400
    interactions = pd.DataFrame(
        {
            "user_id": rng.integers(0, 3, n),
            "item_id": np.arange(n),  # item id = file row
            "timestamp": rng.integers(0, 4, n),  # many ties
            "rating": 1.0,
        }
    )
    items = pd.DataFrame({"item_id": np.arange(n), "title": "t"})
    events = build_processed(interactions, items, split=SplitSettings(ties="file")).events
    rows = events["item_idx"].to_numpy() - 1  # items are numbered in id order = file row
    expected = interactions.sort_values(["user_id", "timestamp"], kind="stable").index
    np.testing.assert_array_equal(rows, expected)


def tied_log(n: int = 400, seed: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Interactions with many same-second ties; item id = file row, so ids reveal file order."""
    rng = np.random.default_rng(seed)
    interactions = pd.DataFrame(
        {
            "user_id": rng.integers(0, 5, n),
            "item_id": np.arange(n),
            "timestamp": rng.integers(0, 60, n),  # ~300 (user, second) cells: many ties
            "rating": 1.0,
        }
    )
    return interactions, pd.DataFrame({"item_id": np.arange(n), "title": "t"})


def tied_groups(events: pd.DataFrame) -> pd.Series:
    """The set of items of each (user, timestamp) group."""
    return events.groupby(["user_idx", "timestamp"])["item_idx"].agg(frozenset)


def shuffled(seed: int | None) -> pd.DataFrame:
    split = SplitSettings(ties="file") if seed is None else SplitSettings(ties_seed=seed)
    return build_processed(*tied_log(), split=split).events


def test_tie_shuffle_is_seeded_and_moves_only_tied_events():
    file_order, first, again, other = shuffled(None), shuffled(0), shuffled(0), shuffled(1)
    pd.testing.assert_frame_equal(first, again)  # same seed, same order
    assert not first["item_idx"].equals(other["item_idx"])  # another seed, another order
    assert not first["item_idx"].equals(file_order["item_idx"])
    for events in (first, other):
        # Users and timestamps sit exactly where the file order puts them: only the items of
        # a (user, timestamp) group trade places, and the time order is never violated.
        for column in ("user_idx", "timestamp", "split"):
            np.testing.assert_array_equal(events[column], file_order[column])
        pd.testing.assert_series_equal(tied_groups(events), tied_groups(file_order))
        alone = ~file_order.duplicated(["user_idx", "timestamp"], keep=False).to_numpy()
        assert alone.any()
        np.testing.assert_array_equal(
            events["item_idx"].to_numpy()[alone], file_order["item_idx"].to_numpy()[alone]
        )


def test_tie_shuffle_is_not_file_order_within_groups():
    """Within tied groups the shuffled order is not the file (= id) order: the leak is gone."""
    events = shuffled(0)
    keys = ["user_idx", "timestamp"]
    groups = events[events.duplicated(keys, keep=False)].groupby(keys)["item_idx"]
    increasing = groups.agg(lambda s: bool(np.all(np.diff(s.to_numpy()) > 0)))
    assert len(increasing) > 20 and increasing.mean() < 0.5


def test_tie_counts_on_a_hand_made_log():
    rows = {  # user: timestamps in file order
        "a": [1, 2, 2],  # test ties with valid
        "b": [5, 5, 5, 6],  # valid ties with the train event before it
        "c": [1, 2, 3],  # no ties
        "d": [7, 7, 7],  # both tie
    }
    interactions = pd.DataFrame(
        [(user, f"{user}{k}", t, 1.0) for user, ts in rows.items() for k, t in enumerate(ts)],
        columns=INTERACTION_COLUMNS,
    )
    items = pd.DataFrame({"item_id": interactions["item_id"], "title": "t"})
    for split in (SplitSettings(ties="file"), SplitSettings(ties_seed=3)):
        stats = build_processed(interactions, items, split=split).stats
        assert stats["ties"] == {
            "policy": split.ties,
            "seed": None if split.ties == "file" else 3,
            "users_test_target_tied": 2,
            "users_valid_target_tied": 2,
            "events_in_tied_groups": 8,
        }


def test_density_uses_items_with_interactions():
    interactions = pd.DataFrame(
        {"user_id": [1, 1, 1], "item_id": [5, 6, 7], "timestamp": [1, 2, 3], "rating": 1.0}
    )
    items = pd.DataFrame({"item_id": [5, 6, 7, 8], "title": list("abcd")})
    result = build_processed(interactions, items)
    assert result.stats["density"] == 1.0
    assert result.stats["n_cold_items"] == 1
    assert result.items["item_id"].tolist() == [5, 6, 7, 8]


def test_filters_and_k_core_reach_a_fixed_point():
    # user a: items 1,2,3; user b: items 1,2; user c: items 1,3; item 4 only by user d.
    users = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3])
    items = np.array([0, 1, 2, 0, 1, 0, 2, 3, 0])
    one_pass = filter_mask(users, items, FilterSettings(2, 2))
    assert one_pass.tolist() == [True] * 7 + [False, False]  # d loses item 4, then has 1 < 2
    core = filter_mask(users, items, FilterSettings(1, 1, k_core=3))
    # 3-core: item 0 has 4 users but every user drops below 3 after items 1, 2 (2 users) go.
    assert not core.any()
    core2 = filter_mask(users, items, FilterSettings(1, 1, k_core=2))
    assert core2.tolist() == [True] * 7 + [False, False]


def test_temporal_split_by_date_and_by_fraction(tmp_path):
    rows = [(u, i, 3, t) for u in (1, 2) for i, t in zip((10, 20, 30, 40), (10, 20, 30, 40))]
    make_raw(tmp_path, ml100k_files(ratings=rows))
    by_time = SplitSettings("temporal", valid_start="30", test_start="1970-01-01T00:00:40")
    build(tmp_path, split=by_time)
    events = load_processed("ml-100k", tmp_path / "processed").events
    assert events.groupby("split")["timestamp"].agg(["min", "max"]).values.tolist() == [
        [10, 20],
        [30, 30],
        [40, 40],
    ]
    stats = json.loads((tmp_path / "processed" / "ml-100k" / "stats.json").read_text())
    assert stats["split"]["test_start_iso"] == "1970-01-01T00:00:40+00:00"
    process(
        SPEC,
        tmp_path / "interim",
        tmp_path / "processed",
        split=SplitSettings("temporal", valid_frac=0.25, test_frac=0.25),
    )
    events = load_processed("ml-100k", tmp_path / "processed").events
    assert (events["split"] == TEST).sum() == 2 and (events["split"] == VALID).sum() == 2


@pytest.mark.parametrize(
    "filters, split, expected",
    [
        (FilterSettings(2), SplitSettings(), "leave-one-out needs at least 3"),
        (FilterSettings(), SplitSettings("random"), "unknown --split 'random'"),
        (FilterSettings(), SplitSettings("temporal", test_frac=1.5), "--test-frac must be"),
        (
            FilterSettings(),
            SplitSettings("temporal", valid_start="2020-01-01", test_start="2019-01-01"),
            "validation cut-off .* is after the test cut-off",
        ),
        (
            FilterSettings(),
            SplitSettings("temporal", test_start="2030-01-01"),
            "leave no test events",
        ),
        (FilterSettings(), SplitSettings("temporal", test_start="soon"), "neither unix"),
        (FilterSettings(), SplitSettings(ties="random"), "unknown --ties 'random'"),
        (FilterSettings(), SplitSettings(ties_seed=-1), "--ties-seed must be a non-neg"),
        (FilterSettings(50), SplitSettings(), "filtering left no interactions"),
    ],
)
def test_bad_split_or_filter_options_are_user_errors(tmp_path, filters, split, expected):
    make_raw(tmp_path)
    interim(SPEC, tmp_path / "raw", tmp_path / "interim")
    with pytest.raises(RecsysError, match=expected):
        process(SPEC, tmp_path / "interim", tmp_path / "processed", filters, split)
    assert not (tmp_path / "processed").exists()


def test_main_before_interim_names_the_fix(tmp_path):
    with pytest.raises(RecsysError, match="lacks interactions.parquet.*run 'python -m recsys"):
        process(SPEC, tmp_path / "interim", tmp_path / "processed")


def test_failure_while_writing_keeps_previous_processed_output(tmp_path, monkeypatch):
    make_raw(tmp_path)
    out = build(tmp_path)
    before = snapshot(out)
    real = pd.DataFrame.to_parquet
    calls = []

    def fail_second_write(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", fail_second_write)
    with pytest.raises(OSError, match="disk full"):
        process(SPEC, tmp_path / "interim", tmp_path / "processed", FilterSettings(4))
    assert snapshot(out) == before  # no new events.parquet next to the old stats.json


KILL_AT_FIRST_RENAME = """
import os, signal, sys
from pathlib import Path
from recsys.data.interim import interim
from recsys.data.split import FilterSettings, process
os.replace = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
root = Path(sys.argv[1])
if sys.argv[2] == "interim":
    interim("ml-100k", root / "raw", root / "interim")
else:
    process("ml-100k", root / "interim", root / "processed", FilterSettings(4))
"""


@pytest.mark.parametrize("stage", ["interim", "process"])
def test_stage_killed_by_sigkill_leaves_previous_output(tmp_path, stage):
    make_raw(tmp_path)
    build(tmp_path)
    out = tmp_path / ("interim" if stage == "interim" else "processed") / "ml-100k"
    before = snapshot(out)
    (tmp_path / "raw" / "ml-100k" / "u.data").write_bytes(b"7\t10\t1\t1\n7\t20\t1\t2\n")
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AT_FIRST_RENAME, str(tmp_path), stage],
        cwd=PROJ_ROOT,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -9
    after = snapshot(out)
    # A kill cannot run clean-up: hidden temp files may stay, but no output changed.
    assert {k: v for k, v in after.items() if not k.startswith(".")} == before
    assert all(k.endswith(".tmp") for k in after if k not in before)


# --------------------------------------------------------------------------------------------
# the real command line: one line on stderr, non-zero exit, no traceback
# --------------------------------------------------------------------------------------------


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    # Only RECSYS_DATA_DIR places the data: drop the mirror and any per-stage folder override.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    env["RECSYS_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run(
        [sys.executable, "-m", "recsys.dataset", *args],
        cwd=PROJ_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.slow
def test_cli_unknown_dataset(tmp_path):
    proc = run_cli(tmp_path, "download", "--dataset", "ml-5m")
    assert_one_line_error(proc, "unknown dataset 'ml-5m'", "ml-latest-small")


@pytest.mark.slow
def test_cli_non_numeric_id_and_strict(tmp_path):
    ratings = [(1, 10, 4, 1), (1, 20, 4, 2), (1, 99, 4, 3), (1, 30, 4, 4)]
    make_raw(tmp_path / "data", ml100k_files(ratings=ratings))
    proc = run_cli(tmp_path, "interim", "--dataset", "ml-100k", "--strict")
    assert_one_line_error(proc, "1 interactions refer to item ids missing", "without --strict")
    u_data = tmp_path / "data" / "raw" / "ml-100k" / "u.data"
    u_data.write_bytes(b"1\t10\t4\t1\nx1\t20\t4\t2\n")
    proc = run_cli(tmp_path, "interim", "--dataset", "ml-100k")
    assert_one_line_error(proc, str(u_data), "invalid value 'x1'")


@pytest.mark.slow
def test_cli_unwritable_output_folder(tmp_path):
    make_raw(tmp_path / "data")
    interim(SPEC, tmp_path / "data" / "raw", tmp_path / "data" / "interim")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    proc = run_cli(tmp_path, "process", "--dataset", "ml-100k", "--processed-dir", str(blocker))
    assert_one_line_error(proc, "cannot create output folder", str(blocker))
    assert blocker.read_text() == "a file where a folder should be"
    proc = run_cli(tmp_path, "process", "--dataset", "ml-100k", "--split", "random")
    assert_one_line_error(proc, "unknown --split 'random'")


@pytest.mark.slow
def test_cli_main_is_a_hidden_alias_of_process(tmp_path):
    """Older docs and scripts say ``main``: it still runs the process stage, unlisted."""
    listed = run_cli(tmp_path, "--help")
    assert listed.returncode == 0 and "process" in listed.stdout
    assert " main " not in listed.stdout
    proc = run_cli(tmp_path, "main", "--dataset", "ml-100k", "--split", "random")
    assert_one_line_error(proc, "unknown --split 'random'")


@pytest.mark.slow
def test_cli_ties_option(tmp_path):
    make_raw(tmp_path / "data")
    interim(SPEC, tmp_path / "data" / "raw", tmp_path / "data" / "interim")
    proc = run_cli(tmp_path, "process", "--dataset", "ml-100k", "--ties", "random")
    assert_one_line_error(proc, "unknown --ties 'random'", "choose shuffle", "or file")
    assert not (tmp_path / "data" / "processed").exists()
    proc = run_cli(tmp_path, "process", "--dataset", "ml-100k", "--ties-seed", "7")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((tmp_path / "data" / "processed" / "ml-100k" / "stats.json").read_text())
    assert (stats["ties"]["policy"], stats["ties"]["seed"]) == ("shuffle", 7)


@pytest.mark.slow
def test_cli_custom_dataset_with_column_mapping(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("who;what;when\nu1;a;3\nu1;b;1\nu1;c;2\nu2;a;5\nu2;c;6\nu2;b;7\n")
    proc = run_cli(tmp_path, "process", "--dataset", "custom")
    assert_one_line_error(proc, "--interactions FILE")
    proc = run_cli(
        tmp_path,
        "process",
        "--dataset",
        "custom",
        "--interactions",
        str(log),
        "--user-col",
        "who",
        "--item-col",
        "what",
        "--time-col",
        "when",
        "--delimiter",
        ";",
    )
    assert proc.returncode == 0, proc.stderr
    data = load_processed("custom", tmp_path / "data" / "processed")
    assert data.items["title"].tolist() == ["a", "b", "c"]
    assert data.events["item_idx"].tolist() == [2, 3, 1, 1, 3, 2]
