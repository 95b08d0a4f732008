"""The ``custom`` dataset: the user's own interactions (and item table) mapped by column options.

Events (one interaction per row, CSV or parquet, ids and times as written) or a sequences file
(one user per line, see :func:`recsys.data.readers.read_sequences`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys.cli import fail
from recsys.data.readers import arrow_message, read_delimited, read_sequences, text_column

CUSTOM_FORMATS = ("events", "sequences")


@dataclass(frozen=True)
class CustomSource:
    """Where a custom dataset's files are and which columns mean what."""

    interactions: Path
    items: Path | None = None
    user_col: str = "user_id"
    item_col: str = "item_id"
    time_col: str = "timestamp"
    rating_col: str | None = None
    items_id_col: str | None = None
    title_col: str = "title"
    text_cols: tuple[str, ...] | None = None
    delimiter: str = ","
    #: ``events``: one interaction per row, columns mapped above. ``sequences``: one user per
    #: line, ``user item item ...`` in time order (see :func:`read_sequences`).
    format: str = "events"

    def raw_files(self) -> list[Path]:
        return [p for p in (self.interactions, self.items) if p is not None]


def _read_any(
    path: Path, columns: dict[str, pa.DataType | None] | None, delimiter: str
) -> pd.DataFrame:
    """A CSV or parquet file with the named columns checked (all columns, as text, if None).

    CSV columns typed None are inferred by Arrow.
    """
    if not path.is_file():
        raise fail(f"{path} does not exist; check the path given on the command line")
    if path.suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except (pa.ArrowInvalid, OSError) as err:
            raise fail(f"cannot read {path} as parquet: {arrow_message(err)}")
        absent = [c for c in columns or [] if c not in frame.columns]
        if absent:
            raise fail(
                f"{path} has no column {', '.join(absent)} (it has {', '.join(frame.columns)}); "
                "fix the column options"
            )
        if frame.empty:
            raise fail(f"{path} has no data rows")
        return frame[list(columns)] if columns else frame
    names = columns
    if names is None:  # every column: learn the names from the header line
        with open(path, encoding="utf8", errors="replace") as fh:
            first = fh.readline().strip()
        if not first:
            raise fail(f"{path} is empty; it needs a header line and data rows")
        names = dict.fromkeys((c.strip('"') for c in first.split(delimiter)), pa.string())
    return read_delimited(path, names, delimiter, header=True).to_pandas()


def _seconds(values: pd.Series, path: Path, column: str) -> np.ndarray:
    """Timestamps as int64 unix seconds: numbers as they are, date strings parsed as UTC."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        if values.isna().any():
            raise fail(f"{path}: column {column!r} has empty timestamps; fill or drop those rows")
        return values.to_numpy().astype(np.int64)
    try:
        parsed = pd.to_datetime(values, utc=True, format="mixed")
    except (ValueError, TypeError) as err:
        raise fail(
            f"{path}: column {column!r} holds non-numeric timestamps that are not dates "
            f"({str(err).splitlines()[0][:120]}); use unix seconds or ISO dates"
        )
    if parsed.isna().any():
        raise fail(f"{path}: column {column!r} has empty timestamps; fill or drop those rows")
    return ((parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)


def _ids(values: pd.Series) -> np.ndarray:
    """Ids exactly as written: integers when every one is a plain integer, else text.

    CSV ids are read as text first so that zero-padded ids ('0108775015') keep their padding.
    """
    if values.dtype.kind in "iu":
        return values.to_numpy()
    text = values.astype(str)
    if text.str.fullmatch(r"0|-?[1-9]\d{0,17}").all():
        return text.astype(np.int64).to_numpy()
    return text.to_numpy()


def parse_custom(source: CustomSource) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Interactions (and optionally items) from user files, mapped by the column options."""
    if source.format not in CUSTOM_FORMATS:
        raise fail(
            f"unknown --format {source.format!r}; choose events (one interaction per row) or "
            "sequences (one line per user: 'user item item ...')"
        )
    if source.format == "sequences":
        interactions = read_sequences(source.interactions)
    else:
        interactions = _custom_events(source)
    if source.items is None:
        ids = pd.unique(interactions["item_id"])
        return interactions, pd.DataFrame({"item_id": ids, "title": [str(i) for i in ids]})
    items = _custom_items(source.items, source)
    if interactions["item_id"].dtype.kind != items["item_id"].dtype.kind:
        # e.g. numeric ids in one file and zero-padded strings in the other: compare as text.
        interactions["item_id"] = interactions["item_id"].astype(str)
        items["item_id"] = items["item_id"].astype(str)
    return interactions, items


def _custom_events(source: CustomSource) -> pd.DataFrame:
    """A custom interactions table (CSV or parquet), one event per row, mapped to our columns."""
    wanted = {source.user_col: pa.string(), source.item_col: pa.string(), source.time_col: None}
    wanted |= {source.rating_col: None} if source.rating_col else {}
    raw = _read_any(source.interactions, wanted, source.delimiter)
    for column in (source.user_col, source.item_col):
        if raw[column].isna().any() or (raw[column].astype(str).str.strip() == "").any():
            raise fail(f"{source.interactions}: column {column!r} has empty ids")
    return pd.DataFrame(
        {
            "user_id": _ids(raw[source.user_col]),
            "item_id": _ids(raw[source.item_col]),
            "timestamp": _seconds(raw[source.time_col], source.interactions, source.time_col),
            "rating": (
                pd.to_numeric(raw[source.rating_col], errors="coerce").astype(np.float32)
                if source.rating_col
                else np.float32(np.nan)
            ),
        }
    )


def _custom_items(path: Path, source: CustomSource) -> pd.DataFrame:
    """The custom item table at ``path``: ids as written, title and the chosen text columns."""
    id_col = source.items_id_col or source.item_col
    columns = dict.fromkeys([id_col, source.title_col, *(source.text_cols or ())], pa.string())
    raw_items = _read_any(
        path, columns if source.text_cols is not None else None, source.delimiter
    )
    for column in (id_col, source.title_col):
        if column not in raw_items.columns:
            raise fail(f"{path} has no column {column!r}; fix --items-id-col/--title-col")
    items = pd.DataFrame({"item_id": _ids(raw_items[id_col])})
    items["title"] = text_column(raw_items[source.title_col])
    for name in raw_items.columns:
        if name not in (id_col, source.title_col):
            items[name] = text_column(raw_items[name])
    return items
