"""The processed files: the data stage writes them (:func:`write_processed`), training and
evaluation read them (:func:`load_processed`).

``data/processed/<dataset>/`` holds:

* ``events.parquet``: one row per interaction, columns ``user_idx`` (int32, 1..n_users),
  ``item_idx`` (int32, 1..n_items), ``timestamp`` (int64), ``split`` (int8: 0 train, 1 valid,
  2 test). Rows are sorted by user, then time. A user's events with the same timestamp are in a
  seeded random order by default, or in raw file order (``process --ties file``); ``stats.json``
  records which, and how many valid/test targets tie with the event before them. Sequence files
  without timestamps store each event's position in the user's line as its timestamp. Flat rows
  (not lists) so a reader can stream row groups for catalogues too large for memory.
* ``items.parquet``: ``item_idx`` (int32, 1..n_catalogue), the original ``item_id``, ``title`` and
  every text field of the interim item table, plus ``n_interactions``. Items ``1..n_items`` have
  interactions; ``n_items+1..n_catalogue`` are in the item table only (cold: rankable by text
  models).
* ``users.parquet``: ``user_idx`` (int32, 1..n_users) and the original ``user_id``.
* ``stats.json``: counts, density, sequence-length percentiles, the split/filter settings and
  the tie policy with its counts.

Index 0 is padding everywhere.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.cli import fail
from recsys.config import PROCESSED_DATA_DIR
from recsys.io import atomic_path, read_json

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = {"train": TRAIN, "valid": VALID, "test": TEST}
EVENTS_FILE, ITEMS_FILE, USERS_FILE, STATS_FILE = PROCESSED_FILES = (
    "events.parquet",
    "items.parquet",
    "users.parquet",
    "stats.json",
)


@dataclass
class ProcessedData:
    """A processed dataset, loaded."""

    name: str
    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    stats: dict[str, Any]

    @property
    def n_items(self) -> int:
        """Items with interactions: the catalogue that metrics rank over (ids 1..n_items)."""
        return int(self.stats["n_items"])

    @property
    def n_catalogue(self) -> int:
        """Every item in the item table, cold ones included (ids 1..n_catalogue)."""
        return int(self.stats["n_catalogue"])

    @property
    def n_users(self) -> int:
        return int(self.stats["n_users"])


def processed_dir(dataset: str, root: Path | None = None) -> Path:
    return Path(root or PROCESSED_DATA_DIR) / dataset


def require_processed(
    dataset: str, root: Path | None = None, files: Sequence[str] = PROCESSED_FILES
) -> Path:
    """``data/processed/<dataset>``, checked to hold ``files`` (those a stage reads): the one
    error that every stage reading processed data gives, before any other work, for a dataset
    that ``make data`` has not made."""
    folder = processed_dir(dataset, root)
    missing = [f for f in files if not (folder / f).exists()]
    if missing:
        raise fail(
            f"processed data for {dataset!r} is missing {', '.join(missing)} in {folder}; "
            f"run 'make data DATASET={dataset}' first"
        )
    return folder


def load_stats(dataset: str, root: Path | None = None) -> dict[str, Any]:
    """``stats.json`` alone (counts and settings), without loading the tables."""
    return read_json(require_processed(dataset, root) / STATS_FILE)


def load_processed(dataset: str, root: Path | None = None) -> ProcessedData:
    """Load ``data/processed/<dataset>``; a missing stage output is a user error naming the fix."""
    folder = require_processed(dataset, root)
    return ProcessedData(
        name=dataset,
        events=pd.read_parquet(folder / EVENTS_FILE),
        items=pd.read_parquet(folder / ITEMS_FILE),
        users=pd.read_parquet(folder / USERS_FILE),
        stats=read_json(folder / STATS_FILE),
    )


def write_processed(
    folder: Path,
    events: pd.DataFrame,
    items: pd.DataFrame,
    users: pd.DataFrame,
    stats: dict[str, Any],
) -> Path:
    """Write the processed files into ``folder`` so that all are renamed into place only if all
    succeed; returns ``folder``.

    The folder itself is not swapped: other stages keep files there (features/). stats.json is
    renamed last, so a reader that finds it also finds the tables it describes.
    """
    tables = {EVENTS_FILE: events, ITEMS_FILE: items, USERS_FILE: users}
    with contextlib.ExitStack() as stack:
        stats_tmp = stack.enter_context(atomic_path(folder / STATS_FILE))
        for name, table in tables.items():
            table.to_parquet(stack.enter_context(atomic_path(folder / name)), index=False)
        stats_tmp.write_text(json.dumps(stats, indent=2, default=_plain) + "\n")
    return folder


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a numpy scalar."""
    return value.item() if isinstance(value, np.generic) else value


def _group_bounds(user_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users and [start, end) row bounds of each user's run in a user-sorted array."""
    starts = np.flatnonzero(np.r_[True, user_idx[1:] != user_idx[:-1]]) if len(user_idx) else []
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.r_[starts[1:], len(user_idx)].astype(np.int64)
    return user_idx[starts], starts, ends


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """The positions ``starts[i]..ends[i]-1`` of every range, concatenated in order."""
    lengths = np.maximum(ends - starts, 0)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


@dataclass(frozen=True)
class Sequences:
    """Item sequences as one flat array with ``[start, end)`` bounds per sequence.

    A sequence is a slice of ``items`` (the events' item column), so no stage builds a dict or
    list of per-user arrays: memory grows with the events, not with per-user objects, every
    operation is vectorised, and DataLoader workers share the one array. Indexing gives one
    sequence, so code written for a list of arrays reads these unchanged.
    """

    items: np.ndarray
    users: np.ndarray
    starts: np.ndarray
    ends: np.ndarray

    @classmethod
    def of(cls, arrays: list[np.ndarray], users: np.ndarray | None = None) -> Sequences:
        """Sequences of a list of arrays (user ``i + 1`` each, unless ``users`` says)."""
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        ends = np.cumsum(lengths)
        items = np.concatenate([*arrays, np.zeros(0, np.int64)]).astype(np.int64)
        owners = np.arange(1, len(arrays) + 1) if users is None else np.asarray(users)
        return cls(items, owners.astype(np.int64), ends - lengths, ends)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.items[self.starts[index] : self.ends[index]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.items[s:e] for s, e in zip(self.starts, self.ends))

    def lengths(self) -> np.ndarray:
        return self.ends - self.starts

    def take(self, rows: np.ndarray) -> Sequences:
        """The sequences at ``rows`` (indices or a boolean mask), over the same items."""
        return Sequences(self.items, self.users[rows], self.starts[rows], self.ends[rows])

    def flat(self, skip_first: bool = False, skip_last: bool = False) -> np.ndarray:
        """Every sequence's items in order; without each one's first item (the next-item
        targets) or last item (their inputs)."""
        return self.items[_ranges(self.starts + int(skip_first), self.ends - int(skip_last))]

    def padded(self, width: int, rows: np.ndarray | None = None) -> np.ndarray:
        """The last ``width`` items of each sequence (of ``rows``), left-padded with 0, int64."""
        starts = self.starts if rows is None else self.starts[rows]
        ends = self.ends if rows is None else self.ends[rows]
        index = ends[:, None] - width + np.arange(width)
        inside = index >= starts[:, None]
        source = self.items if len(self.items) else np.zeros(1, dtype=np.int64)
        return np.where(inside, source[np.maximum(index, 0)], 0).astype(np.int64)


def read_events(dataset: str, root: Path | None = None) -> pd.DataFrame:
    """The columns of events.parquet that sequences are built from, without the rest."""
    path = require_processed(dataset, root) / EVENTS_FILE
    return pd.read_parquet(path, columns=["user_idx", "item_idx", "split"])


def user_histories(events: pd.DataFrame) -> Sequences:
    """Each user's whole time-ordered sequence (every split): what a deployed model reads."""
    users, starts, ends = _group_bounds(events["user_idx"].to_numpy())
    return Sequences(events["item_idx"].to_numpy(), users.astype(np.int64), starts, ends)


def user_sequences(events: pd.DataFrame) -> dict[int, np.ndarray]:
    """:func:`user_histories` by user (for lookups by hand)."""
    histories = user_histories(events)
    return dict(zip(histories.users.tolist(), histories))


def train_pieces(events: pd.DataFrame, removed: np.ndarray | None = None) -> Sequences:
    """Each user's time-ordered training items, cut into pieces at the ``removed`` items.

    ``a b X c d`` becomes ``[a b]`` and ``[c d]``: dropping ``X`` and joining its neighbours
    would invent the transition ``b -> c`` that never happened. A piece is a run of consecutive
    kept training events of one user, so an event of another split cuts too. Every model fitted
    without the cold items (trained runs and baselines) reads these same pieces; a piece of one
    item gives a sequence model no target but still counts as an interaction for a baseline.
    """
    users = events["user_idx"].to_numpy()
    items = events["item_idx"].to_numpy()
    keep = events["split"].to_numpy() == TRAIN
    if removed is not None and len(removed):
        keep &= ~np.isin(items, removed)
    rows = np.flatnonzero(keep)
    first = np.r_[True, (np.diff(rows) != 1) | (users[rows[1:]] != users[rows[:-1]])]
    starts = rows[first] if len(rows) else rows
    ends = np.r_[rows[np.flatnonzero(first)[1:] - 1] + 1, rows[-1:] + 1] if len(rows) else rows
    return Sequences(items, users[starts].astype(np.int64), starts.astype(np.int64), ends)


@dataclass
class EvalExamples:
    """Next-item examples: ``histories[i]`` (time-ordered item ids) precedes ``targets[i]``."""

    users: np.ndarray
    histories: Sequences
    targets: np.ndarray

    def take(self, rows: np.ndarray) -> EvalExamples:
        """The examples at ``rows`` (indices or a boolean mask)."""
        return EvalExamples(self.users[rows], self.histories.take(rows), self.targets[rows])


def eval_examples(events: pd.DataFrame, split: str | int) -> EvalExamples:
    """For each user with an event in ``split``, its first such event and everything before it.

    Under leave-one-out this is the classic protocol: valid = second-to-last item with the train
    prefix as history, test = last item with train + valid as history.
    """
    code = SPLIT_NAMES[split] if isinstance(split, str) else int(split)
    users_col = events["user_idx"].to_numpy()
    items = events["item_idx"].to_numpy()
    hits = np.flatnonzero(events["split"].to_numpy() == code)
    first = hits[np.r_[True, users_col[hits[1:]] != users_col[hits[:-1]]]] if len(hits) else hits
    users = users_col[first].astype(np.int64)
    starts = np.searchsorted(users_col, users, side="left").astype(np.int64)
    histories = Sequences(items, users, starts, first.astype(np.int64))
    return EvalExamples(users=users, histories=histories, targets=items[first].astype(np.int64))


def left_pad(sequences: list[np.ndarray], max_len: int) -> np.ndarray:
    """Stack the last ``max_len`` items of each sequence into a left-padded int64 matrix."""
    return Sequences.of(sequences).padded(max_len)


def cold_item_set(n_items: int, fraction: float, seed: int = 0) -> np.ndarray:
    """The items held out of training in cold-start mode: a seeded ``fraction`` of 1..n_items.

    Training (``--cold-items F``) and evaluation draw the same set from the same arguments.
    """
    if not 0.0 <= fraction < 1.0:
        raise fail(f"--cold-items must be in [0, 1), got {fraction}")
    n_cold = int(round(fraction * n_items))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(np.arange(1, n_items + 1), size=n_cold, replace=False))
