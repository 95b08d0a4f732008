"""Sequence files (one user per line, no timestamps): the reader, ``custom --format sequences``
and the ``amazon-beauty`` registry entry, on small synthetic files (no mirror, no internet)."""

from __future__ import annotations

import json
from dataclasses import replace
import pytest
from test_dataset import assert_one_line_error, md5, run_cli, write_files

from recsys.cli import RecsysError
from recsys.data.custom import CustomSource, parse_custom
from recsys.data.interim import POSITION_TIME, interim
from recsys.data.readers import INTERACTION_COLUMNS, read_sequences
from recsys.data.sources import DATASETS, DatasetSpec, MIRROR_ENV, download, read_manifest
from recsys.data.split import SplitSettings, process
from recsys.text_features import build_item_texts
from recsys.processed import TEST, TRAIN, VALID, load_processed, user_sequences

BEAUTY = DATASETS["amazon-beauty"]
BEAUTY_TXT = b"1 1 2 3\n2 4 1 3 2\n3 2 4 3\n"
ITEMS_TSV = (
    "item_id\tasin\ttitle\tbrand\tcategories\n"
    '1\t0123456789\tClip in Hair Extensions 23" Straight\tWorld Pride\tBeauty > Hair Care\n'
    '2\tB004756YJA\tOPI "Simmer\tOPI\tBeauty > Makeup > Nails\n'
    "3\tB0020YLEYK\t\t\tBeauty > Skin Care\n"
    "4\tB00AAAAAAA\tFace Cream\tUnknown\tBeauty > Skin Care > Face\n"
).encode()


def beauty_spec() -> DatasetSpec:
    """amazon-beauty with checksums of the synthetic files instead of the real ones."""
    return replace(BEAUTY, file_md5={"Beauty.txt": md5(BEAUTY_TXT), "items.tsv": md5(ITEMS_TSV)})


# --------------------------------------------------------------------------------------------
# the reader
# --------------------------------------------------------------------------------------------


def test_sequences_become_events_with_positions_as_time(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_bytes(b"10 7 8 7\r\n  3\t9  8 \n5 1")  # CRLF, tabs, repeats, no final newline
    frame = read_sequences(path)
    assert list(frame.columns) == INTERACTION_COLUMNS
    assert frame["user_id"].tolist() == [10, 10, 10, 3, 3, 5]
    assert frame["item_id"].tolist() == [7, 8, 7, 9, 8, 1]
    assert frame["timestamp"].tolist() == [1, 2, 3, 1, 2, 1]
    assert frame["rating"].isna().all()
    assert str(frame["user_id"].dtype) == "int64" and str(frame["item_id"].dtype) == "int64"


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "is empty"),
        (b" \n\n", "is empty"),
        (b"1 2 3\n\n2 3 4\n", "line 2 is empty"),
        (b"1 2 3\n2 3 4\n   \n", "line 3 is empty"),
        (b"1 2 3\n2 3 4\n7\n", "line 3 has the user 7 but no items"),
        (b"1 2 3\n2 x9 4\n", "line 2: 'x9' is not a plain integer id"),
        (b"1 2 3\n2 3 4\n3 4 -5\n", "line 3: '-5' is not a plain integer id"),
        (b"1 2 3\n2 3 4.0\n", "line 2: '4.0' is not a plain integer id"),
        (b"1 2 3\n2 3 4\n1 5 6\n", "line 3: user 1 already has line 1"),
        (b"1 2 \xff\n", "is not UTF-8 text"),
    ],
    ids=[
        "empty",
        "blank",
        "empty-line-inside",
        "blank-last-line",
        "user-only",
        "word",
        "negative",
        "decimal",
        "repeated-user",
        "not-utf8",
    ],
)
def test_bad_sequence_files_are_one_line_errors_naming_the_line(tmp_path, content, expected):
    path = tmp_path / "seq.txt"
    path.write_bytes(content)
    with pytest.raises(RecsysError, match=expected) as err:
        read_sequences(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_missing_sequence_file_is_named(tmp_path):
    with pytest.raises(RecsysError, match="nowhere.txt does not exist"):
        read_sequences(tmp_path / "nowhere.txt")


# --------------------------------------------------------------------------------------------
# custom --format sequences
# --------------------------------------------------------------------------------------------


def test_custom_sequences_keep_the_line_order_under_any_tie_seed(tmp_path):
    write_files(
        tmp_path,
        {
            "seq.txt": b"7 30 10 20 10\n3 20 30 40\n",
            "items.csv": b"item_id,title,colour\n10,Ten,red\n20,Twenty,\n30,Thirty,blue\n"
            b"40,Forty,green\n50,Fifty,black\n",
        },
    )
    source = CustomSource(
        interactions=tmp_path / "seq.txt", items=tmp_path / "items.csv", format="sequences"
    )
    interim("custom", interim_root=tmp_path / "interim", custom=source)
    manifest = json.loads((tmp_path / "interim" / "custom" / "manifest.json").read_text())
    assert manifest["time"] == POSITION_TIME
    for seed in range(4):
        process(
            "custom",
            tmp_path / "interim",
            tmp_path / "processed",
            split=SplitSettings(ties_seed=seed),
        )
        data = load_processed("custom", tmp_path / "processed")
        original = data.items.set_index("item_idx")["item_id"]
        by_user = {
            int(data.users.set_index("user_idx").loc[u, "user_id"]): original.loc[seq].tolist()
            for u, seq in user_sequences(data.events).items()
        }
        assert by_user == {7: [30, 10, 20, 10], 3: [20, 30, 40]}
    assert data.items["title"].tolist() == ["Ten", "Twenty", "Thirty", "Forty", "Fifty"]
    assert data.n_catalogue == 5 and data.n_items == 4
    user7 = data.events[data.events["user_idx"] == 2]
    assert user7["split"].tolist() == [TRAIN, TRAIN, VALID, TEST]
    stats = data.stats
    assert stats["time"] == POSITION_TIME and stats["time_range"] is None
    assert stats["ties"]["events_in_tied_groups"] == 0


def test_custom_format_must_be_known(tmp_path):
    (tmp_path / "seq.txt").write_bytes(b"1 2 3\n")
    source = CustomSource(interactions=tmp_path / "seq.txt", format="lines")
    with pytest.raises(RecsysError, match="unknown --format 'lines'; choose events .* sequences"):
        parse_custom(source)


def test_sequences_refuse_a_temporal_split(tmp_path):
    (tmp_path / "seq.txt").write_bytes(b"1 2 3 4\n2 3 4 5\n")
    source = CustomSource(interactions=tmp_path / "seq.txt", format="sequences")
    interim("custom", interim_root=tmp_path / "interim", custom=source)
    with pytest.raises(RecsysError, match="has no timestamps .* use --split leave-one-out"):
        process(
            "custom",
            tmp_path / "interim",
            tmp_path / "processed",
            split=SplitSettings("temporal"),
        )


@pytest.mark.slow
def test_cli_custom_sequences(tmp_path):
    seq = tmp_path / "seq.txt"
    seq.write_text("1 5 6 7\n\n2 6 7 8\n")
    args = ("process", "--dataset", "custom", "--interactions", str(seq), "--format", "sequences")
    proc = run_cli(tmp_path, *args)
    assert_one_line_error(proc, str(seq), "line 2 is empty")
    assert not (tmp_path / "data" / "processed").exists()
    seq.write_text("1 5 6 7\n2 6 7 8\n")
    proc = run_cli(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    data = load_processed("custom", tmp_path / "data" / "processed")
    assert data.items["item_id"].tolist() == [5, 6, 7, 8]
    assert data.events["item_idx"].tolist() == [1, 2, 3, 2, 3, 4]
    proc = run_cli(tmp_path, *args[:-1], "lines")
    assert_one_line_error(proc, "unknown --format 'lines'")


# --------------------------------------------------------------------------------------------
# amazon-beauty
# --------------------------------------------------------------------------------------------


def test_amazon_beauty_registry_entry():
    assert BEAUTY.url is None and not BEAUTY.has_timestamps
    assert BEAUTY.required == ("Beauty.txt", "items.tsv")
    assert BEAUTY.file_md5 == {
        "Beauty.txt": "cb03635343187f36526ed4ba48102b53",
        "items.tsv": "25c11e338d887cd1157e1334005a1c9c",
    }


def test_amazon_beauty_without_files_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    with pytest.raises(RecsysError) as err:
        download("amazon-beauty", raw_root=tmp_path / "raw")
    message = str(err.value)
    assert message.startswith("amazon-beauty: Beauty.txt (")
    assert "there is no public download" in message and MIRROR_ENV in message
    assert f"put Beauty.txt and items.tsv in {tmp_path / 'raw' / 'amazon-beauty'}/" in message
    assert "\n" not in message and "None" not in message


def test_amazon_beauty_mirror_copy_with_wrong_md5_is_refused(tmp_path):
    write_files(
        tmp_path / "mirror" / "amazon-beauty", {"Beauty.txt": BEAUTY_TXT, "items.tsv": ITEMS_TSV}
    )
    with pytest.raises(RecsysError, match="Beauty.txt from mirror .* has md5 .* but the original"):
        download("amazon-beauty", raw_root=tmp_path / "raw", mirror=tmp_path / "mirror")
    assert not (tmp_path / "raw" / "amazon-beauty").exists()


def test_amazon_beauty_chain_reads_unbalanced_quotes_and_builds_texts(tmp_path):
    write_files(
        tmp_path / "mirror" / "amazon-beauty", {"Beauty.txt": BEAUTY_TXT, "items.tsv": ITEMS_TSV}
    )
    spec = beauty_spec()
    raw = download(spec, raw_root=tmp_path / "raw", mirror=tmp_path / "mirror")
    assert all(entry["verified"] for entry in read_manifest(raw)["files"].values())
    interim(spec, tmp_path / "raw", tmp_path / "interim")
    process(spec, tmp_path / "interim", tmp_path / "processed")
    data = load_processed("amazon-beauty", tmp_path / "processed")
    assert (data.n_users, data.n_items, len(data.events)) == (3, 4, 10)
    items = data.items.set_index("item_id")
    assert items.loc[1, "title"] == 'Clip in Hair Extensions 23" Straight'
    assert items.loc[2, "title"] == 'OPI "Simmer'  # quoting off: the quote is just a character
    assert items.loc[1, "asin"] == "0123456789"  # an asin is text, leading zero kept
    assert items.loc[3, "title"] == "" and items.loc[3, "brand"] == ""
    first = data.events[data.events["user_idx"] == 1]
    assert first["item_idx"].tolist() == [1, 2, 3] and first["timestamp"].tolist() == [1, 2, 3]
    texts = build_item_texts(data.items, "amazon-beauty").table["text"].tolist()
    assert texts[0] == (
        'Clip in Hair Extensions 23" Straight. Brand: World Pride. Categories: Beauty > Hair Care.'
    )
    assert texts[2] == "Categories: Beauty > Skin Care."
    assert not any("asin" in t.lower() or "B00" in t for t in texts)
