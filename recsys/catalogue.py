"""The item table, looked up the way people and applications name items.

By internal index, by original item id, or by a typed title (exact after normalising case,
articles and the year, else fuzzy); shared by ``predict``, the run API and the service so a
title means the same item everywhere.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
from loguru import logger

from recsys.text import article_first, cell_values, split_year

#: Fuzzy-match score (rapidfuzz WRatio, 0..100) below which a title counts as unknown.
TITLE_CUTOFF = 85.0
#: Fuzzy-match score an autocomplete suggestion needs when no title contains the query.
SEARCH_CUTOFF = 60.0
#: Item-table columns that are bookkeeping, not something to show or filter by.
INTERNAL_COLUMNS = ("item_idx", "n_interactions")
#: Multi-valued category columns a request may filter by, by dataset family ("|"-separated).
CATEGORY_COLUMNS = ("genres", "categories", "product_group_name")


def title_key(title: str) -> tuple[str, str | None]:
    """A title as people type it: lower case, "Usual Suspects, The" -> "the usual suspects",
    year split off ("Heat (1995)" -> ("heat", "1995"))."""
    text, year = split_year(str(title).strip())
    return re.sub(r"\s+", " ", article_first(text)).strip().lower(), year


class Catalogue:
    """The item table, looked up by internal index, original id or title."""

    def __init__(self, items: pd.DataFrame) -> None:
        self.items = items.set_index("item_idx", drop=False).sort_index()
        self.fields = [c for c in self.items.columns if c not in INTERNAL_COLUMNS]
        self.category_column = next((c for c in CATEGORY_COLUMNS if c in self.items.columns), None)
        self._records: dict[int, dict[str, Any]] | None = None
        self._by_popularity: tuple[np.ndarray, list[str], list[str]] | None = None
        keys = [title_key(t) for t in self.items["title"].fillna("")]
        self.keys = [k for k, _ in keys]
        self.keyed = [f"{k} ({y})" if y else k for k, y in keys]
        self.popularity = self.items.get("n_interactions", pd.Series(0, index=self.items.index))
        self.by_id = {str(v): int(i) for i, v in zip(self.items.index, self.items["item_id"])}

    def item_ids(self, text: str) -> tuple[list[int], list[str]]:
        """``"1,2,3"`` (original item ids) -> internal indices, and one warning per unknown id."""
        found, warnings = [], []
        for raw in (part.strip() for part in text.split(",")):
            if not raw:
                continue
            if raw in self.by_id:
                found.append(self.by_id[raw])
            else:
                warnings.append(f"unknown item id {raw!r}; it is not in the item table")
        return found, warnings

    def nearest(self, query: str, limit: int = 3) -> list[str]:
        from rapidfuzz import fuzz, process, utils

        hits = process.extract(
            query, list(self.items["title"]), scorer=fuzz.WRatio, processor=utils.default_process
        )
        return [title for title, _, _ in hits[:limit]]

    def match_title(self, query: str) -> int | None:
        """The item a typed title means: exact key (year optional), else the best fuzzy match."""
        from rapidfuzz import fuzz, process

        key, year = title_key(query)
        wanted = f"{key} ({year})" if year else key
        pool = self.keyed if year else self.keys
        exact = [i for i, candidate in enumerate(pool) if candidate == wanted]
        if exact:
            return int(self.items.index[max(exact, key=lambda i: self.popularity.iloc[i])])
        hits = process.extract(wanted, pool, scorer=fuzz.WRatio, limit=5)
        hits = [h for h in hits if h[1] >= TITLE_CUTOFF]
        if not hits:
            return None
        best = max(
            hits, key=lambda h: (h[1], fuzz.ratio(wanted, h[0]), self.popularity.iloc[h[2]])
        )
        return int(self.items.index[best[2]])

    def titles(self, text: str) -> tuple[list[int], list[str]]:
        """``"Title; Title"`` -> internal indices, and one line per title it does not know."""
        found, warnings = [], []
        for query in (part.strip() for part in text.split(";")):
            if not query:
                continue
            match = self.match_title(query)
            if match is None:
                nearest = ", ".join(f'"{title}"' for title in self.nearest(query))
                warnings.append(f"unknown title {query!r}; nearest: {nearest}")
            else:
                found.append(match)
                if self.items.at[match, "title"] != query:
                    logger.info(f"{query!r} -> {self.items.at[match, 'title']}")
        return found, warnings

    def describe(self, item_idx: int) -> dict[str, Any]:
        row = self.items.loc[item_idx]
        year = row.get("year")
        return {
            "item_id": row["item_id"],
            "title": row["title"],
            "genres": str(row.get("genres") or "").replace("|", ", "),
            "year": "" if year is None or pd.isna(year) else str(int(year)),
        }

    def search(self, query: str, limit: int) -> list[int]:
        """Autocomplete: internal indices of up to ``limit`` titles matching ``query``, best
        first: the exact title, then titles starting with it, with a word starting with it,
        containing it (popular first within each), then fuzzy matches."""
        if self._by_popularity is None:  # built once: every keystroke of a demo page asks
            order = np.argsort(-self.popularity.to_numpy(), kind="stable")
            titles = self.items["title"].fillna("").astype(str).to_numpy()[order]
            self._by_popularity = (
                self.items.index.to_numpy()[order],
                [t.lower() for t in titles],
                [self.keys[i] for i in order],
            )
        index, lowered, keys = self._by_popularity
        needle = " ".join(query.lower().split())
        tiers: tuple[list[int], ...] = ([], [], [], [])
        for row, (title, key) in enumerate(zip(lowered, keys)):
            at = title.find(needle)
            if at < 0 and not key.startswith(needle):
                continue
            if needle in (key, title):
                tiers[0].append(row)
            elif at == 0 or key.startswith(needle):
                tiers[1].append(row)
            else:
                tiers[2 if title[at - 1] in " (-:'\"" else 3].append(row)
        rows = [row for tier in tiers for row in tier][:limit]
        if len(rows) < limit:
            from rapidfuzz import fuzz, process

            hits = process.extract(
                needle, lowered, scorer=fuzz.WRatio, limit=limit, score_cutoff=SEARCH_CUTOFF
            )
            rows += [row for _, _, row in hits if row not in rows][: limit - len(rows)]
        return [int(index[row]) for row in rows]

    def record(self, item_idx: int) -> dict[str, Any]:
        """Every shown field of one item: the original id (as text, the way requests name
        items), title and the dataset's text fields."""
        if self._records is None:  # built once: a service reads it on every request
            rows = self.items[self.fields].to_dict("records")
            records = {
                int(i): {f: _plain(v) for f, v in r.items()} | {"item_id": str(r["item_id"])}
                for i, r in zip(self.items.index, rows)
            }
            self._records = records
        return dict(self._records[int(item_idx)])

    def fields_of(self, items: np.ndarray) -> pd.DataFrame:
        """:meth:`record` of many items at once, as a frame: one vectorised lookup."""
        frame = self.items.loc[np.asarray(items, dtype=np.int64), self.fields]
        frame = frame.reset_index(drop=True)
        frame["item_id"] = frame["item_id"].astype(str)
        return frame

    def categories(self) -> list[str]:
        """The distinct values of the category column (empty when the dataset has none)."""
        if self.category_column is None:
            return []
        cells = self.items[self.category_column].dropna().astype(str)
        return sorted({value for cell in cells for value in _category_values(cell)})

    def in_categories(self, wanted: list[str]) -> np.ndarray:
        """Bool ``[n_rows + 1]``: items having at least one of ``wanted`` (case-insensitive)."""
        mask = np.zeros(int(self.items.index.max()) + 1, dtype=bool)
        if self.category_column is None:
            return mask
        keys = {w.strip().lower() for w in wanted}
        cells = self.items[self.category_column].fillna("").astype(str).str.lower()
        hit = np.fromiter((bool(keys & _category_values(c)) for c in cells), bool, len(cells))
        mask[self.items.index[hit]] = True
        return mask


def _category_values(cell: str) -> set[str]:
    """A category cell's values: "Drama|Comedy" -> both; a path "Beauty > Makeup > Nails" also
    gives each of its levels, so a filter can name the level it means. Placeholders such as
    "(no genres listed)" are no category."""
    values = set()
    for part in cell_values(cell):
        values.add(part)
        values.update(level.strip() for level in part.split(">") if level.strip())
    return values


def _plain(value: Any) -> Any:
    """A table cell as a JSON-ready value: missing -> None, numpy scalars -> Python."""
    if value is None or (not isinstance(value, (list, tuple, np.ndarray)) and pd.isna(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value
