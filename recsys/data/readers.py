"""Readers: a dataset's raw folder -> canonical interactions and item table, one per format.

Interactions come out as ``user_id, item_id, timestamp, rating`` with the original ids, the item
table as ``item_id``, ``title`` and every text field. The readers are vectorized (Arrow's
multi-threaded C parser), so an ML-20M-sized file parses in seconds.

Sequence files (``amazon-beauty``, and custom ``--format sequences``) hold one user per line,
``user item item ...`` in time order and no timestamps: an event's position in its line stands in
for its time, so no two events of a user tie.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recsys.cli import fail
from recsys.text import VALUE_SEPARATOR, title_years

INTERACTION_COLUMNS = ["user_id", "item_id", "timestamp", "rating"]
# '::' in text files becomes this one-byte separator (never in MovieLens text) for the C parser.
UNIT_SEPARATOR = b"\x1f"
# amazon-beauty's items.tsv after item_id; the asin (Amazon's own id) maps items to the source.
AMAZON_ITEM_COLUMNS = ("asin", "title", "brand", "categories")
HM_TEXT_COLUMNS = [
    "prod_name",
    "product_type_name",
    "product_group_name",
    "graphical_appearance_name",
    "colour_group_name",
    "perceived_colour_value_name",
    "index_name",
    "section_name",
    "detail_desc",
]


def arrow_message(err: Exception) -> str:
    """An Arrow error as one short line, with separators shown as the file writes them."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    text = text.replace("\t", "\\t").replace("\x1f", "::")
    return text if len(text) <= 200 else text[:200] + "..."


def read_delimited(
    path: Path,
    columns: dict[str, pa.DataType | None],
    delimiter: str,
    header: bool = False,
    encoding: str = "utf8",
    quoted: bool = True,
) -> pa.Table:
    """Parse a delimited text file with Arrow's multi-threaded C reader.

    ``columns`` names the columns (in file order when there is no header; the wanted subset when
    there is one) and their types (None: inferred). The C reader takes one-byte separators only,
    and pandas' python engine is far too slow for ML-10M-sized files, so '::' files are read
    either with ':' as separator and a must-be-empty column between each pair of fields (numeric
    files such as ratings.dat: no copy of the data), or, when text may hold ':' (movies.dat,
    small), with '::' rewritten to one byte in memory.
    """
    path = Path(path)
    if not path.is_file():
        raise fail(f"{path} does not exist; run download first")
    if path.stat().st_size == 0:
        raise fail(f"{path} is empty; replace it with the original file")
    types = {name: kind for name, kind in columns.items() if kind is not None}
    numeric = len(types) == len(columns) and all(
        pa.types.is_integer(kind) or pa.types.is_floating(kind) for kind in types.values()
    )
    names, separator, source = list(columns), delimiter, path
    if delimiter == "::" and numeric and not header:
        names = [name for column in columns for name in (column, f"{column}::")][:-1]
        types.update({name: pa.null() for name in names if name not in columns})
        separator = ":"
    elif delimiter == "::":
        source = pa.BufferReader(path.read_bytes().replace(b"::", UNIT_SEPARATOR))
        separator = UNIT_SEPARATOR.decode()
    expected = f"columns {', '.join(columns)} separated by {delimiter!r}"
    parse = pacsv.ParseOptions(delimiter=separator, quote_char='"' if quoted else False)
    try:
        table = pacsv.read_csv(
            source,
            read_options=pacsv.ReadOptions(
                column_names=None if header else names, encoding=encoding, block_size=8 << 20
            ),
            parse_options=parse,
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=names),
        )
    except (pa.ArrowInvalid, pa.ArrowKeyError) as err:
        line = None
        if source is path:
            line = bad_line(path, err, parse, encoding, None if header else names)
        where = f" at line {line:,}" if line else ""
        raise fail(f"cannot parse {path}{where}: {arrow_message(err)}; expected {expected}")
    if table.num_rows == 0:
        raise fail(f"{path} has no data rows; replace it with the original file")
    return table.select(list(columns))


_BAD_VALUE = re.compile(r"column #(\d+): CSV conversion error to .*: invalid value '(.*)'")


def bad_line(
    path: Path,
    err: Exception,
    parse: pacsv.ParseOptions,
    encoding: str,
    names: list[str] | None,
) -> int | None:
    """The file line (1 = the first) of a parse or conversion error that Arrow did not place: a
    second, serial pass on error only, so a bad row 20 million lines down is named.

    ``names``: the columns of a file without a header line (None: it has one)."""
    read = pacsv.ReadOptions(
        use_threads=False, encoding=encoding, block_size=8 << 20, column_names=names
    )
    found = _BAD_VALUE.search(str(err))
    try:
        if found is None:  # a row with the wrong number of fields: Arrow numbers it itself
            lines: list[int] = []

            def note(row: Any) -> str:
                lines.append(row.number)
                return "error"

            options = pacsv.ParseOptions(
                delimiter=parse.delimiter, quote_char=parse.quote_char, invalid_row_handler=note
            )
            try:
                pacsv.read_csv(path, read, options)
            except pa.ArrowInvalid:  # raised after the handler saw the row
                pass
            return lines[0] if lines else None
        columns = names or next(
            csv.reader([path.open(encoding=encoding).readline()], delimiter=parse.delimiter)
        )
        strings = pacsv.ConvertOptions(column_types={c: pa.string() for c in columns})
        column, value, seen = columns[int(found.group(1))], found.group(2), 0
        for batch in pacsv.open_csv(path, read, parse, strings):
            hit = pc.index(batch.column(column), value).as_py()
            if hit >= 0:
                return seen + hit + (1 if names else 2)
            seen += batch.num_rows
    except (pa.ArrowInvalid, pa.ArrowKeyError, IndexError, OSError, StopIteration):
        return None
    return None


def read_ratings(
    path: Path, delimiter: str, names: tuple[str, str, str, str], header: bool
) -> pd.DataFrame:
    """A MovieLens ratings file as canonical interactions (user_id, item_id, timestamp, rating).

    ``names`` are the file's column names for user, item, rating and timestamp, in file order.
    """
    user, item, rating, timestamp = names
    types = {user: pa.int64(), item: pa.int64(), rating: pa.float32(), timestamp: pa.int64()}
    table = read_delimited(path, types, delimiter=delimiter, header=header)
    table = table.rename_columns(["user_id", "item_id", "rating", "timestamp"])
    table = table.select(INTERACTION_COLUMNS)
    # self_destruct frees each Arrow column once converted: peak memory ~ one copy, not two.
    return table.to_pandas(split_blocks=True, self_destruct=True)


def read_sequences(path: Path) -> pd.DataFrame:
    """A sequences file as canonical interactions: one user per line, ``user item item ...``.

    The order in a line is the time order and there are no timestamps, so an event's position in
    its line (1, 2, ...) becomes its timestamp: a user's events never tie, and no tie policy can
    reorder them. Ids must be plain non-negative integers (as in the benchmark files), each user
    has one line, and every line has at least one item; anything else is a one-line error naming
    the line. Splitting and the id check run in Arrow's C kernels, not per token in Python.
    """
    path = Path(path)
    layout = "each line must be 'user item item ...' (integer ids, whitespace-separated)"
    if not path.is_file():
        raise fail(f"{path} does not exist; check the path")
    data = path.read_bytes()
    if not data.strip():
        raise fail(f"{path} is empty; {layout}")
    try:
        text = data.decode("utf8")
    except UnicodeDecodeError as err:
        raise fail(f"{path} is not UTF-8 text (byte {err.start:,}); {layout}")
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    trimmed = pc.utf8_trim_whitespace(pa.array(lines, pa.string()))
    tokens = pc.split_pattern_regex(trimmed, r"\s+")
    counts = pc.list_value_length(tokens).to_numpy().astype(np.int64)
    counts[pc.equal(trimmed, "").to_numpy(False)] = 0  # '' splits into one empty token
    short = np.flatnonzero(counts < 2)
    if short.size:
        row = int(short[0])
        what = (
            "is empty" if counts[row] == 0 else f"has the user {lines[row].strip()} but no items"
        )
        raise fail(f"{path} line {row + 1} {what}; {layout}")
    flat = pc.list_flatten(tokens)
    plain = pc.match_substring_regex(flat, r"^(0|[1-9][0-9]{0,17})$").to_numpy(False)
    ends = np.cumsum(counts)
    if not plain.all():
        first = int(np.argmin(plain))
        row = int(np.searchsorted(ends, first, side="right"))
        raise fail(
            f"{path} line {row + 1}: {flat[first].as_py()!r} is not a plain integer id; {layout}"
        )
    ids = pc.cast(flat, pa.int64()).to_numpy()
    starts = ends - counts
    users = ids[starts]
    repeated = pd.Series(users).duplicated().to_numpy()
    if repeated.any():
        row = int(np.argmax(repeated))
        earlier = int(np.flatnonzero(users == users[row])[0])
        raise fail(
            f"{path} line {row + 1}: user {users[row]} already has line {earlier + 1}; "
            "give each user one line with all their items in time order"
        )
    position = np.arange(len(ids), dtype=np.int64) - np.repeat(starts, counts)
    is_item = position > 0
    return pd.DataFrame(
        {
            "user_id": np.repeat(users, counts - 1),
            "item_id": ids[is_item],
            "timestamp": position[is_item],
            "rating": np.full(int(is_item.sum()), np.nan, dtype=np.float32),
        }
    )


def text_column(series: pd.Series) -> pd.Series:
    """Text fields as plain strings, missing ones as '' so consumers never see nulls."""
    return series.astype("string").fillna("").str.strip().astype(str)


def parse_ml_100k(raw: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ml-100k: tab-separated ``u.data``, Latin-1 ``u.item`` with genre flags named in u.genre."""
    interactions = read_ratings(
        raw / "u.data", "\t", ("user", "item", "rating", "timestamp"), header=False
    )
    genre_table = read_delimited(
        raw / "u.genre", {"genre": pa.string(), "index": pa.int64()}, "|", quoted=False
    ).to_pandas()
    genre_names = genre_table.sort_values("index")["genre"].to_numpy()
    flag_columns = {f"g{i}": pa.int8() for i in range(len(genre_names))}
    columns = {
        "item_id": pa.int64(),
        "title": pa.string(),
        "release_date": pa.string(),
        "video_release_date": pa.string(),
        "imdb_url": pa.string(),
        **flag_columns,
    }
    raw_items = read_delimited(
        raw / "u.item", columns, "|", encoding="latin-1", quoted=False
    ).to_pandas()
    flags = raw_items[list(flag_columns)].to_numpy().astype(bool)
    release = text_column(raw_items["release_date"])
    year = title_years(raw_items["title"]).fillna(
        pd.to_numeric(release.str[-4:], errors="coerce").astype("Int32")
    )
    items = pd.DataFrame(
        {
            "item_id": raw_items["item_id"],
            "title": text_column(raw_items["title"]),
            "year": year,
            "genres": [VALUE_SEPARATOR.join(genre_names[row]) for row in flags],
            "release_date": release,
            "imdb_url": text_column(raw_items["imdb_url"]),
        }
    )
    return interactions, items


def parse_ml_dat(raw: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ml-1m style: ``ratings.dat`` and Latin-1 ``movies.dat``, both '::'-separated."""
    interactions = read_ratings(
        raw / "ratings.dat", "::", ("user", "item", "rating", "timestamp"), header=False
    )
    movies = read_delimited(
        raw / "movies.dat",
        {"item_id": pa.int64(), "title": pa.string(), "genres": pa.string()},
        "::",
        encoding="latin-1",
        quoted=False,
    ).to_pandas()
    return interactions, _movie_table(movies)


def _movie_table(movies: pd.DataFrame, **extra: pd.Series) -> pd.DataFrame:
    title = text_column(movies["title"])
    items = pd.DataFrame(
        {
            "item_id": movies["item_id"],
            "title": title,
            "year": title_years(title),
            "genres": text_column(movies["genres"]),
        }
    )
    for name, values in extra.items():
        items[name] = text_column(values.reindex(items["item_id"]).reset_index(drop=True))
    return items


def parse_ml_csv(raw: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ml-latest-small / ml-20m / ml-32m: ratings.csv, movies.csv, and tags.csv, links.csv."""
    interactions = read_ratings(
        raw / "ratings.csv", ",", ("userId", "movieId", "rating", "timestamp"), header=True
    )
    movies = read_delimited(
        raw / "movies.csv",
        {"movieId": pa.int64(), "title": pa.string(), "genres": pa.string()},
        ",",
        header=True,
    ).to_pandas()
    movies = movies.rename(columns={"movieId": "item_id"})
    extra: dict[str, pd.Series] = {}
    if (raw / "tags.csv").is_file():
        extra["tags"] = aggregate_tags(
            read_delimited(
                raw / "tags.csv", {"movieId": pa.int64(), "tag": pa.string()}, ",", header=True
            ).to_pandas()
        )
    if (raw / "links.csv").is_file():
        links = read_delimited(
            raw / "links.csv",
            {"movieId": pa.int64(), "imdbId": pa.string(), "tmdbId": pa.string()},
            ",",
            header=True,
        ).to_pandas()
        links = links.drop_duplicates("movieId").set_index("movieId")
        extra["imdb_id"], extra["tmdb_id"] = links["imdbId"], links["tmdbId"]
    return interactions, _movie_table(movies, **extra)


def aggregate_tags(tags: pd.DataFrame) -> pd.Series:
    """One '|'-joined string of distinct tags per movie, most used first (ties: first seen).

    Tags differing only in case count as one, spelled as first seen.
    """
    tags = tags.assign(tag=tags["tag"].astype("string").str.strip()).dropna()
    tags = tags[tags["tag"] != ""].reset_index(drop=True)
    tags["key"] = tags["tag"].str.lower()
    tags["order"] = np.arange(len(tags))
    grouped = tags.groupby(["movieId", "key"], sort=False).agg(
        tag=("tag", "first"), uses=("tag", "size"), first=("order", "min")
    )
    grouped = grouped.reset_index().sort_values(
        ["movieId", "uses", "first"], ascending=[True, False, True]
    )
    return grouped.groupby("movieId", sort=True)["tag"].agg(VALUE_SEPARATOR.join)


def parse_amazon_beauty(raw: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Amazon Beauty 5-core: ``Beauty.txt`` sequences and ``items.tsv`` (title, brand, categories).

    items.tsv is read with quoting off: its titles hold unbalanced double quotes.
    """
    interactions = read_sequences(raw / "Beauty.txt")
    columns = {"item_id": pa.int64(), **dict.fromkeys(AMAZON_ITEM_COLUMNS, pa.string())}
    table = read_delimited(raw / "items.tsv", columns, "\t", header=True, quoted=False)
    raw_items = table.to_pandas()
    items = pd.DataFrame({"item_id": raw_items["item_id"]})
    for name in AMAZON_ITEM_COLUMNS:
        items[name] = text_column(raw_items[name])
    return interactions, items


#: H&M ids are fixed-width text: hex customer ids, article ids with their leading zero.
HM_ID_WIDTHS = {"customer_id": 64, "article_id": 10}
LOST_ZERO = " (its leading zero lost, as a spreadsheet does?)"


def require_width(path: Path, column: pa.ChunkedArray, width: int, hint: str = "") -> None:
    """Every id of ``column`` has ``width`` characters, else one line naming the first bad row
    (an id that lost its leading zero in one file would match nothing in the other)."""
    seen = 0
    for chunk in column.chunks:
        values = chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk
        wrong = pc.not_equal(pc.utf8_length(values), width)
        if pc.any(wrong).as_py():
            if pa.types.is_dictionary(chunk.type):
                wrong = pc.is_in(chunk.indices, value_set=pa.array(np.flatnonzero(wrong)))
            row = pc.index(wrong, True).as_py()
            value = chunk[row].as_py()
            raise fail(
                f"{path} line {seen + row + 2:,}: id {value!r} has {len(value)} characters, not "
                f"{width}{hint}; restore the original file"
            )
        seen += len(chunk)


def parse_hm(raw: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """H&M: purchases (day resolution, so many same-day ties) and article descriptions."""
    ids = pa.dictionary(pa.int32(), pa.string())
    transactions = read_delimited(
        raw / "transactions_train.csv",
        {"t_dat": pa.timestamp("s"), "customer_id": ids, "article_id": ids},
        ",",
        header=True,
    )
    transactions_file = raw / "transactions_train.csv"
    require_width(transactions_file, transactions["customer_id"], HM_ID_WIDTHS["customer_id"])
    require_width(
        transactions_file, transactions["article_id"], HM_ID_WIDTHS["article_id"], LOST_ZERO
    )
    interactions = pd.DataFrame(
        {
            "user_id": transactions["customer_id"].to_pandas(),
            "item_id": transactions["article_id"].to_pandas(),
            "timestamp": transactions["t_dat"].cast(pa.int64()).to_numpy(),
            "rating": np.full(transactions.num_rows, np.nan, dtype=np.float32),
        }
    )
    articles = read_delimited(
        raw / "articles.csv",
        {"article_id": pa.string(), **{name: pa.string() for name in HM_TEXT_COLUMNS}},
        ",",
        header=True,
    )
    require_width(
        raw / "articles.csv", articles["article_id"], HM_ID_WIDTHS["article_id"], LOST_ZERO
    )
    articles = articles.to_pandas()
    items = pd.DataFrame(
        {
            "item_id": articles["article_id"].astype(str),
            "title": text_column(articles["prod_name"]),
        }
    )
    for name in HM_TEXT_COLUMNS[1:]:
        items[name] = text_column(articles[name])
    return interactions, items


#: The reader of each registry ``parser`` (custom files: :func:`recsys.data.custom.parse_custom`).
PARSERS: dict[str, Callable[[Path], tuple[pd.DataFrame, pd.DataFrame]]] = {
    "amazon-beauty": parse_amazon_beauty,
    "ml-100k": parse_ml_100k,
    "ml-dat": parse_ml_dat,
    "ml-csv": parse_ml_csv,
    "hm": parse_hm,
}
