"""``process``: the interim tables -> the processed files of :mod:`recsys.processed`.

Filter users and items (optionally to a k-core), map ids to contiguous integers (0 = padding),
order each user's events by time, split (leave-one-out or temporal), count, and write. A user's
events with the same timestamp are put in a seeded random order (``--ties shuffle``, the
default) because the file order often follows the item id (ml-latest-small is sorted by user,
then movie id), which would let the split's last item be guessed from the numbering; ``--ties
file`` keeps the file order, as some papers do. stats.json records the policy and how many
targets were tied.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from loguru import logger

from recsys.cli import fail
from recsys.config import INTERIM_DATA_DIR
from recsys.data.interim import (
    INTERACTIONS_FILE,
    INTERIM_MANIFEST,
    POSITION_TIME,
    UNIX_TIME,
    CleanReport,
)
from recsys.data.readers import arrow_message
from recsys.data.sources import DatasetSpec, get_spec
from recsys.io import ensure_dir, read_json
from recsys.processed import ITEMS_FILE, TEST, TRAIN, VALID, processed_dir, write_processed

SPLITS = ("leave-one-out", "temporal")
TIES = ("shuffle", "file")


@dataclass(frozen=True)
class FilterSettings:
    """Minimum interactions per user and item; ``k_core`` repeats both until nothing changes."""

    min_user_interactions: int = 3
    min_item_interactions: int = 1
    k_core: int | None = None


@dataclass(frozen=True)
class SplitSettings:
    """Leave-one-out, or a global temporal split at cut-off times (or at event-count fractions).

    ``ties`` orders a user's events that share a timestamp, which decides which of them is the
    held-out last item: ``shuffle`` (seeded by ``ties_seed``) or ``file`` (raw file order).
    """

    kind: str = "leave-one-out"
    valid_start: str | None = None
    test_start: str | None = None
    valid_frac: float = 0.1
    test_frac: float = 0.1
    ties: str = "shuffle"
    ties_seed: int = 0


def filter_mask(
    user_codes: np.ndarray, item_codes: np.ndarray, settings: FilterSettings
) -> np.ndarray:
    """Which interactions survive the filters.

    Without ``k_core``: items below the item minimum go first, then users below the user
    minimum (one pass each). With ``k_core=k``: both minimums are raised to at least k and the two
    filters repeat until every kept user and item meets them.
    """
    min_user, min_item = settings.min_user_interactions, settings.min_item_interactions
    if settings.k_core:
        min_user, min_item = max(min_user, settings.k_core), max(min_item, settings.k_core)
    keep = np.ones(len(user_codes), dtype=bool)
    while True:
        before = int(keep.sum())
        item_counts = np.bincount(item_codes[keep], minlength=item_codes.max(initial=-1) + 1)
        keep &= item_counts[item_codes] >= min_item
        user_counts = np.bincount(user_codes[keep], minlength=user_codes.max(initial=-1) + 1)
        keep &= user_counts[user_codes] >= min_user
        if not settings.k_core or int(keep.sum()) == before:
            return keep


def _time_option(value: str, option: str) -> int:
    """A cut-off given as unix seconds or an ISO date/time (UTC when no zone is given)."""
    if re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise fail(f"{option} {value!r} is neither unix seconds nor an ISO date like 2018-01-31")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(int(seconds), tz=timezone.utc).isoformat()


def check_settings(filters: FilterSettings, split: SplitSettings) -> None:
    """Refuse option combinations that cannot produce a usable split, before any work."""
    if split.kind not in SPLITS:
        raise fail(f"unknown --split {split.kind!r}; choose leave-one-out or temporal")
    if split.ties not in TIES:
        raise fail(
            f"unknown --ties {split.ties!r}; choose shuffle (same-time events in a seeded random "
            "order) or file (in raw file order)"
        )
    if split.ties_seed < 0:
        raise fail(f"--ties-seed must be a non-negative integer, got {split.ties_seed}")
    if filters.min_user_interactions < 1 or filters.min_item_interactions < 1:
        raise fail("--min-user-interactions and --min-item-interactions must be at least 1")
    if filters.k_core is not None and filters.k_core < 1:
        raise fail(f"--k-core must be at least 1, got {filters.k_core}")
    min_user = max(filters.min_user_interactions, filters.k_core or 0)
    if split.kind == "leave-one-out" and min_user < 3:
        raise fail(
            "leave-one-out needs at least 3 interactions per user (train, valid, test); "
            f"use --min-user-interactions 3 or more, not {filters.min_user_interactions}"
        )
    if split.kind == "temporal":
        for name, value in (("--valid-frac", split.valid_frac), ("--test-frac", split.test_frac)):
            if not 0.0 < value < 1.0:
                raise fail(f"{name} must be between 0 and 1, got {value}")
        if split.valid_frac + split.test_frac >= 1.0:
            raise fail("--valid-frac plus --test-frac must leave some events for training")
        for name, value in (
            ("--valid-start", split.valid_start),
            ("--test-start", split.test_start),
        ):
            if value is not None:
                _time_option(value, name)


def temporal_cutoffs(timestamps: np.ndarray, split: SplitSettings) -> tuple[int, int]:
    """(valid_start, test_start): the given times, else the times at the requested fractions."""
    ordered = np.sort(timestamps)
    n = len(ordered)
    test_start = (
        _time_option(split.test_start, "--test-start")
        if split.test_start is not None
        else int(ordered[min(n - 1, int(n * (1.0 - split.test_frac)))])
    )
    valid_start = (
        _time_option(split.valid_start, "--valid-start")
        if split.valid_start is not None
        else int(ordered[min(n - 1, int(n * (1.0 - split.test_frac - split.valid_frac)))])
    )
    if valid_start > test_start:
        raise fail(
            f"the validation cut-off {_iso(valid_start)} is after the test cut-off "
            f"{_iso(test_start)}; give --valid-start before --test-start"
        )
    return valid_start, test_start


def assign_splits(
    user_idx: np.ndarray, timestamps: np.ndarray, split: SplitSettings
) -> tuple[np.ndarray, dict[str, Any]]:
    """Split codes for events sorted by user then time, and the settings actually used."""
    if split.kind == "leave-one-out":
        is_last = np.r_[user_idx[1:] != user_idx[:-1], True]
        is_second_last = np.r_[is_last[1:], False] & ~is_last
        codes = np.full(len(user_idx), TRAIN, dtype=np.int8)
        codes[is_second_last] = VALID
        codes[is_last] = TEST
        return codes, {"kind": split.kind}
    valid_start, test_start = temporal_cutoffs(timestamps, split)
    codes = np.where(
        timestamps >= test_start, TEST, np.where(timestamps >= valid_start, VALID, TRAIN)
    ).astype(np.int8)
    for code, name in ((TRAIN, "training"), (TEST, "test")):
        if not (codes == code).any():
            raise fail(
                f"the temporal cut-offs (valid {_iso(valid_start)}, test {_iso(test_start)}) "
                f"leave no {name} events; the data spans {_iso(timestamps.min())} to "
                f"{_iso(timestamps.max())}"
            )
    used = {
        "kind": split.kind,
        "valid_start": valid_start,
        "valid_start_iso": _iso(valid_start),
        "test_start": test_start,
        "test_start_iso": _iso(test_start),
        "valid_frac": None if split.valid_start is not None else split.valid_frac,
        "test_frac": None if split.test_start is not None else split.test_frac,
    }
    return codes, used


@dataclass
class Processed:
    """The processed tables and their statistics, before they are written."""

    events: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame
    stats: dict[str, Any]


def _length_stats(lengths: np.ndarray) -> dict[str, float]:
    """Sequence-length summary: what max_len choices would truncate."""
    percentiles = {f"p{q}": float(np.percentile(lengths, q)) for q in (5, 25, 50, 75, 90, 95, 99)}
    return {
        "min": int(lengths.min()),
        **percentiles,
        "max": int(lengths.max()),
        "mean": float(lengths.mean()),
    }


def _split_counts(user_idx: np.ndarray, split_codes: np.ndarray) -> dict[str, dict[str, int]]:
    names = (("train", TRAIN), ("valid", VALID), ("test", TEST))
    return {
        "events": {name: int((split_codes == code).sum()) for name, code in names},
        "users": {  # a count of distinct users without a sort
            name: int(np.count_nonzero(np.bincount(user_idx[split_codes == code])))
            for name, code in names
        },
    }


def event_order(
    user_idx: np.ndarray, timestamps: np.ndarray, ties: str = "shuffle", seed: int = 0
) -> np.ndarray:
    """Row order by user, then time; a user's same-time events in ``ties`` order.

    ``file`` keeps the given row order among them. ``shuffle`` breaks them by a seeded random
    key per row: only events that share user and timestamp change places. The result is numpy's
    three-key lexsort, which takes over a minute at H&M size; user and time packed into one
    int64 (with the tie key too where it fits) sort many times faster.
    """
    n = len(user_idx)
    tie_key = np.arange(n) if ties == "file" else np.random.default_rng(seed).permutation(n)
    key_bits = int(n - 1).bit_length()
    user_time, free_bits = _user_time_keys(user_idx, timestamps, key_bits)
    if user_time is None:
        return np.lexsort((tie_key, timestamps, user_idx))
    by_key = np.empty_like(tie_key)  # the row of each tie key
    by_key[tie_key] = np.arange(n)
    if key_bits <= free_bits:
        # All three keys in one int64, each row's distinct since its tie key is: a plain sort
        # (several times faster than an argsort at H&M size) and the tie keys in its low bits
        # say which row went where.
        packed = np.sort((user_time << key_bits) | tie_key)
        return by_key[packed & ((1 << key_bits) - 1)]
    # the rows in tie-key order, then a stable sort by user and time keeps it among ties
    return by_key[np.argsort(user_time[by_key], kind="stable")]


def _user_time_keys(
    user_idx: np.ndarray, timestamps: np.ndarray, key_bits: int
) -> tuple[np.ndarray | None, int]:
    """``user, time`` as one int64 per row, ordered as the pair is, and the bits left above it;
    ``(None, 0)`` when the pair does not fit.

    Times are offsets from the first in steps of their greatest common divisor (H&M's days then
    take a few bits, not a second count's), or their rank where only that makes room for a
    ``key_bits`` tie key or for the pair itself: ranking is a sort of its own, wasted where the
    key cannot fit anyway.
    """
    if not len(user_idx) or user_idx.min() < 0:
        return None, 0
    users = user_idx.astype(np.int64)
    times = timestamps.astype(np.int64) - timestamps.min()
    step = int(np.gcd.reduce(times))
    if step > 1:
        times //= step
    user_bits, time_bits = int(users.max()).bit_length(), int(times.max()).bit_length()
    tie_fits_if_ranked = user_bits + min(time_bits, key_bits) + key_bits <= 63
    if (
        user_bits + time_bits + key_bits > 63 and tie_fits_if_ranked
    ) or user_bits + time_bits > 63:
        times = np.unique(times, return_inverse=True)[1].astype(np.int64).ravel()
        time_bits = int(times.max()).bit_length()
    if user_bits + time_bits > 63:
        return None, 0
    return (users << time_bits) | times, 63 - user_bits - time_bits


def tie_counts(
    user_idx: np.ndarray, timestamps: np.ndarray, split_codes: np.ndarray
) -> dict[str, int]:
    """How many evaluation targets share their timestamp with the event before them.

    For such a user the order of the tied pair, not time, decides which item is held out. Rows
    are sorted by user then time; a split's target is its first event of each user.
    """
    same_user = np.r_[False, user_idx[1:] == user_idx[:-1]]
    tied_prev = same_user & np.r_[False, timestamps[1:] == timestamps[:-1]]
    in_group = tied_prev | np.r_[tied_prev[1:], False]

    def tied_targets(code: int) -> int:
        first = (split_codes == code) & ~(same_user & np.r_[False, split_codes[:-1] == code])
        return int((first & tied_prev).sum())

    return {
        "users_test_target_tied": tied_targets(TEST),
        "users_valid_target_tied": tied_targets(VALID),
        "events_in_tied_groups": int(in_group.sum()),
    }


def build_processed(
    interactions: pd.DataFrame,
    items: pd.DataFrame,
    filters: FilterSettings = FilterSettings(),
    split: SplitSettings = SplitSettings(),
) -> Processed:
    """Filter, give contiguous ids, order each user's events by time, split, and count.

    ``interactions`` must be in raw file order: ``split.ties`` orders same-time events from it
    (see :func:`event_order`). Users and items are numbered in order of their original ids;
    items without kept interactions follow as cold items (n_items+1..n_catalogue).
    """
    check_settings(filters, split)
    user_codes, user_ids = pd.factorize(interactions["user_id"], sort=True)
    item_codes, item_ids = pd.factorize(interactions["item_id"], sort=True)
    keep = filter_mask(user_codes, item_codes, filters)
    if not keep.any():
        raise fail(
            "filtering left no interactions; lower --min-user-interactions, "
            "--min-item-interactions or --k-core"
        )
    kept, user_local, item_local = interactions, user_codes, item_codes
    if not keep.all():  # numbered again, so that the ids stay contiguous
        kept = interactions[keep]
        user_local, user_ids = pd.factorize(kept["user_id"], sort=True)
        item_local, item_ids = pd.factorize(kept["item_id"], sort=True)
    n_users, n_items = len(user_ids), len(item_ids)
    cold = items.loc[~items["item_id"].isin(item_ids), "item_id"].sort_values()
    catalogue = pd.Index(np.concatenate([np.asarray(item_ids), cold.to_numpy()]))

    user_idx = (user_local + 1).astype(np.int32)
    item_idx = (item_local + 1).astype(np.int32)
    timestamps = kept["timestamp"].to_numpy(np.int64)
    order = event_order(user_idx, timestamps, split.ties, split.ties_seed)
    user_idx, item_idx, timestamps = user_idx[order], item_idx[order], timestamps[order]
    split_codes, split_used = assign_splits(user_idx, timestamps, split)
    events = pd.DataFrame(
        {"user_idx": user_idx, "item_idx": item_idx, "timestamp": timestamps, "split": split_codes}
    )

    item_table = items.set_index("item_id").loc[catalogue].reset_index()
    item_table.insert(0, "item_idx", np.arange(1, len(catalogue) + 1, dtype=np.int32))
    counts = np.bincount(item_idx, minlength=len(catalogue) + 1)[1:]
    item_table["n_interactions"] = counts.astype(np.int64)
    users = pd.DataFrame(
        {"user_idx": np.arange(1, n_users + 1, dtype=np.int32), "user_id": np.asarray(user_ids)}
    )

    stats = {
        "n_users": n_users,
        "n_items": n_items,
        "n_catalogue": len(catalogue),
        "n_cold_items": len(catalogue) - n_items,
        "n_interactions": len(events),
        "density": len(events) / (n_users * n_items),
        "sequence_length": _length_stats(np.bincount(user_idx, minlength=n_users + 1)[1:]),
        "time_range": {"first": _iso(timestamps.min()), "last": _iso(timestamps.max())},
        "split": {**split_used, **_split_counts(user_idx, split_codes)},
        "ties": {
            "policy": split.ties,
            "seed": split.ties_seed if split.ties == "shuffle" else None,
            **tie_counts(user_idx, timestamps, split_codes),
        },
        "filter": {
            **asdict(filters),
            "order": "k-core until stable" if filters.k_core else "items, then users",
            "interactions_before": len(interactions),
            "interactions_removed": int(len(interactions) - len(events)),
            "users_removed": int(user_codes.max(initial=-1) + 1 - n_users),
            "items_removed": int(item_codes.max(initial=-1) + 1 - n_items),
        },
        "id_order": "users and items numbered by ascending original id; 0 is padding",
    }
    return Processed(events=events, items=item_table, users=users, stats=stats)


def process(
    dataset: str | DatasetSpec,
    interim_root: Path | None = None,
    processed_root: Path | None = None,
    filters: FilterSettings = FilterSettings(),
    split: SplitSettings = SplitSettings(),
    strict: bool = False,
) -> Path:
    """Build ``processed_root/<dataset>/`` from the interim files; returns that folder."""
    spec = get_spec(dataset)
    check_settings(filters, split)
    source = Path(interim_root or INTERIM_DATA_DIR) / spec.name
    missing = [
        name
        for name in (INTERACTIONS_FILE, ITEMS_FILE, INTERIM_MANIFEST)
        if not (source / name).is_file()
    ]
    if missing:
        fix = (
            "pass your files: 'python -m recsys.dataset process --dataset custom --interactions "
            "FILE [--items FILE] --user-col ...'"
            if spec.parser == "custom"
            else f"run 'python -m recsys.dataset interim --dataset {spec.name}' "
            f"(or 'make data DATASET={spec.name}') first"
        )
        raise fail(f"{source} lacks {', '.join(missing)}; {fix}")
    info = read_json(source / INTERIM_MANIFEST)
    if strict and info.get("unknown_item_interactions_dropped"):
        raise fail(
            f"interim dropped {info['unknown_item_interactions_dropped']:,} interactions whose "
            f"item is not in the item table (e.g. {info['unknown_item_examples']}); --strict "
            "refuses that: fix the raw files, or run without --strict"
        )
    try:
        interactions = pd.read_parquet(source / INTERACTIONS_FILE)
        items = pd.read_parquet(source / ITEMS_FILE)
    except (pa.ArrowInvalid, OSError) as err:
        raise fail(
            f"cannot read the interim files in {source} ({arrow_message(err)}); "
            f"run 'python -m recsys.dataset interim --dataset {spec.name}' again"
        )
    time = info.get("time", UNIX_TIME)
    if time == POSITION_TIME and split.kind == "temporal":
        raise fail(
            f"{spec.name} has no timestamps (each user's line is in time order, nothing more), "
            "so --split temporal has no common clock to cut at; use --split leave-one-out"
        )
    result = build_processed(interactions, items, filters, split)
    stats = {
        "dataset": spec.name,
        **result.stats,
        "time": time,
        "interim": {k: info.get(k) for k in asdict(CleanReport())},
        "raw_source": info.get("raw_source"),
        "raw_files": info.get("raw_files", {}),
    }
    if time == POSITION_TIME:
        stats["time_range"] = None  # positions 1, 2, ... are not dates
    out = ensure_dir(processed_dir(spec.name, processed_root))
    write_processed(out, result.events, result.items, result.users, stats)
    ties = stats["ties"]
    logger.info(
        f"{spec.name}: {stats['n_users']:,} users, {stats['n_items']:,} items "
        f"({stats['n_catalogue']:,} in the catalogue), {stats['n_interactions']:,} events, "
        f"split {split.kind}; {ties['users_test_target_tied']:,} test and "
        f"{ties['users_valid_target_tied']:,} valid targets share their timestamp with the "
        f"event before (--ties {split.ties}) -> {out}"
    )
    return out
