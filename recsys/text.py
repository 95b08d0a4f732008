"""Item-table text as MovieLens-style data writes it: titles and multi-valued cells.

One reading of each convention, shared by the data readers (the ``year`` column), the item
sentences of :mod:`recsys.features`, title lookup in :mod:`recsys.catalogue` and the plot labels,
so a title or a genre list means the same thing everywhere.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

#: A release year closing a title: "Heat (1995)".
YEAR_AT_END = re.compile(r"\s*\((\d{4})\)\s*$")
#: An article moved behind the name, "Godfather, The" (MovieLens files English, French, Italian,
#: Spanish and German titles this way), optionally followed by an alternate title in parentheses.
TRAILING_ARTICLE = re.compile(
    r"^(?P<name>.+?), (?P<article>the|a|an|les|la|le|il|el|der|die|das)(?P<rest>(?: \(.*\))?)$",
    re.IGNORECASE,
)
#: Separator of the multi-valued cells the data stage writes (genres, tags, categories).
VALUE_SEPARATOR = "|"
#: Entries that stand for "no value" inside such cells; they carry no meaning for anyone.
PLACEHOLDERS = frozenset({"", "(no genres listed)", "unknown", "nan", "none", "null"})


def split_year(title: str) -> tuple[str, str | None]:
    """'Heat (1995)' -> ('Heat', '1995'); a title that does not end in a year -> (title, None)."""
    match = YEAR_AT_END.search(title)
    return (title[: match.start()], match[1]) if match else (title, None)


def title_years(titles: pd.Series) -> pd.Series:
    """The year each title ends with, as nullable Int32 (missing where a title has none)."""
    found = titles.str.extract(YEAR_AT_END, expand=False)
    return pd.to_numeric(found, errors="coerce").astype("Int32")


def article_first(title: str) -> str:
    """'Godfather, The' -> 'The Godfather'; an alternate title stays last: 'City of Lost
    Children, The (Cité des enfants perdus, La)' -> 'The City of Lost Children (Cité ...)'."""
    match = TRAILING_ARTICLE.match(title)
    return f"{match['article']} {match['name']}{match['rest']}" if match else title


def is_missing(value: Any) -> bool:
    """True for None, NaN, blank text and empty lists: a cell with nothing to show."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple, np.ndarray)):
        return len(value) == 0
    return bool(pd.isna(value))


def cell_values(value: Any, separators: str = VALUE_SEPARATOR) -> list[str]:
    """The distinct entries of a multi-valued cell, in their first order and first spelling.

    A cell is text split at any of ``separators`` ('A|B') or a list; placeholders and repeats
    that differ only in case are dropped.
    """
    if is_missing(value):
        return []
    if isinstance(value, str):
        parts = re.split(f"[{re.escape(separators)}]", value)
    else:
        parts = [str(v) for v in value]
    seen: dict[str, str] = {}
    for part in (p.strip() for p in parts):
        if part.lower() not in PLACEHOLDERS:
            seen.setdefault(part.lower(), part)
    return list(seen.values())
