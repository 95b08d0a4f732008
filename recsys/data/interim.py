"""``interim``: parse a dataset's raw files into the canonical interim tables.

``data/interim/<dataset>/`` holds ``interactions.parquet`` (user_id, item_id, timestamp, rating;
original ids), ``items.parquet`` (item_id, title and every text field) and ``manifest.json``
(counts, what cleaning dropped, where the raw files came from). Exact duplicate rows and
interactions whose item is not in the item table are dropped and counted (``--strict`` refuses
the latter).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from loguru import logger

from recsys.arrays import sorted_member
from recsys.cli import fail
from recsys.config import INTERIM_DATA_DIR, RAW_DATA_DIR
from recsys.data.custom import CustomSource, parse_custom
from recsys.data.readers import INTERACTION_COLUMNS, PARSERS
from recsys.data.sources import DatasetSpec, get_spec, md5_of, read_manifest
from recsys.io import atomic_dir
from recsys.processed import ITEMS_FILE

INTERIM_MANIFEST = "manifest.json"
INTERACTIONS_FILE = "interactions.parquet"
# What the timestamp column holds (interim manifest and stats.json).
UNIX_TIME = "unix seconds"
POSITION_TIME = "position in the user's sequence (the file has no timestamps)"


@dataclass
class CleanReport:
    """What cleaning removed, kept in the interim manifest and in stats.json."""

    duplicates_dropped: int = 0
    unknown_item_interactions_dropped: int = 0
    unknown_item_examples: list[Any] = field(default_factory=list)


def clean(
    interactions: pd.DataFrame, items: pd.DataFrame, strict: bool, items_file: str
) -> tuple[pd.DataFrame, pd.DataFrame, CleanReport]:
    """Drop exact duplicate rows and interactions whose item is not in the item table.

    Row order (the raw file order) is kept: ``--ties file`` orders same-time events by it, and
    ``--ties shuffle`` draws its seeded order over it, so both are reproducible.
    """
    duplicated_ids = items["item_id"].duplicated()
    if duplicated_ids.any():
        example = items.loc[duplicated_ids, "item_id"].iloc[0]
        raise fail(
            f"{items_file} lists item id {example} more than once "
            f"({int(duplicated_ids.sum())} repeated ids); each item must appear once"
        )
    report = CleanReport()
    duplicates = exact_duplicates(interactions)
    report.duplicates_dropped = int(duplicates.sum())
    if report.duplicates_dropped:
        logger.warning(f"dropped {report.duplicates_dropped:,} exact duplicate interaction rows")
        interactions = interactions[~duplicates]
    unknown = ~interactions["item_id"].isin(items["item_id"]).to_numpy()
    if unknown.any():
        examples = pd.unique(interactions["item_id"].to_numpy()[unknown])[:5].tolist()
        report.unknown_item_interactions_dropped = int(unknown.sum())
        report.unknown_item_examples = examples
        message = (
            f"{int(unknown.sum()):,} interactions refer to item ids missing from {items_file} "
            f"(e.g. {', '.join(map(str, report.unknown_item_examples))})"
        )
        if strict:
            raise fail(f"{message}; fix the files, or run without --strict to drop them")
        logger.warning(f"{message}; dropped them (--strict refuses instead)")
        interactions = interactions[~unknown]
    return interactions.reset_index(drop=True), items.reset_index(drop=True), report


def exact_duplicates(frame: pd.DataFrame) -> np.ndarray:
    """``frame.duplicated(keep="first")``, from one 64-bit hash per row: only rows whose hash
    repeats are compared exactly, so a hash collision never drops a row (and the hash is several
    times faster than pandas' factorising of every column at H&M size)."""
    hashes = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    # The repeated hash values from a sort, not an argsort (several times faster at H&M size),
    # then each row's membership among them by binary search.
    ordered = np.sort(hashes)
    repeats = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    duplicates = np.zeros(len(frame), dtype=bool)
    repeated = sorted_member(hashes, repeats)
    duplicates[repeated] = frame[repeated].duplicated(keep="first").to_numpy()
    return duplicates


def write_interactions(interactions: pd.DataFrame, path: Path) -> None:
    """The interactions as one parquet row group. Parquet writes a dictionary column's whole
    dictionary into every row group, so at H&M size every group repeated all the customer ids,
    and writing and reading the file back took most of the stage; once, it is a fraction."""
    interactions.to_parquet(path, index=False, row_group_size=max(1, len(interactions)))


def _raw_provenance(files: list[Path], manifest: dict[str, Any] | None) -> dict[str, Any]:
    """Where the raw files came from and each one's bytes and md5 (from the download manifest
    when it still matches, which saves re-hashing big files)."""
    known = (manifest or {}).get("files", {})
    out = {}
    for path in files:
        entry = known.get(path.name)
        size = path.stat().st_size
        if entry is None or entry["bytes"] != size:
            entry = {"bytes": size, "md5": md5_of(path), "verified": False}
        out[path.name] = entry
    source = manifest["source"] if manifest else ", ".join(str(p) for p in files)
    return {"raw_source": source, "raw_files": out}


def interim(
    dataset: str | DatasetSpec,
    raw_root: Path | None = None,
    interim_root: Path | None = None,
    strict: bool = False,
    custom: CustomSource | None = None,
) -> Path:
    """Parse raw files into ``interim_root/<dataset>/`` (interactions, items, manifest)."""
    spec = get_spec(dataset)
    out = Path(interim_root or INTERIM_DATA_DIR) / spec.name
    if custom is not None and spec.parser != "custom":
        raise fail(
            f"--interactions and the other custom options need --dataset custom, not {spec.name}"
        )
    if spec.parser == "custom":
        if custom is None:
            raise fail(
                "custom needs its input files: pass --interactions FILE (and --items FILE, "
                "--user-col, --item-col, --time-col, ...); see 'python -m recsys.dataset process "
                "--help'"
            )
        interactions, items = parse_custom(custom)
        used = custom.raw_files()
        manifest = None
        items_file = str(custom.items or custom.interactions)
        timed = custom.format == "events"
    else:
        raw = Path(raw_root or RAW_DATA_DIR) / spec.name
        manifest = read_manifest(raw)
        if manifest is None:
            raise fail(
                f"{raw} has no verified raw data; run 'python -m recsys.dataset download "
                f"--dataset {spec.name}' (or 'make data DATASET={spec.name}') first"
            )
        interactions, items = PARSERS[spec.parser](raw)
        used = [raw / name for name in spec.required + spec.extras if (raw / name).is_file()]
        items_file = str(raw / spec.item_table)
        timed = spec.has_timestamps
    interactions, items, report = clean(interactions, items, strict, items_file)
    if interactions.empty:
        raise fail(f"{spec.name}: no interactions are left after cleaning; check the raw files")
    interactions["timestamp"] = interactions["timestamp"].astype(np.int64)
    interactions["rating"] = interactions["rating"].astype(np.float32)
    info = {
        "dataset": spec.name,
        "interactions": len(interactions),
        "items": len(items),
        "time": UNIX_TIME if timed else POSITION_TIME,
        **asdict(report),
        **_raw_provenance(used, manifest),
    }
    with atomic_dir(out) as staging:
        write_interactions(interactions[INTERACTION_COLUMNS], staging / INTERACTIONS_FILE)
        items.to_parquet(staging / ITEMS_FILE, index=False)
        (staging / INTERIM_MANIFEST).write_text(json.dumps(info, indent=2, default=str) + "\n")
    logger.info(f"{spec.name}: {len(interactions):,} interactions, {len(items):,} items -> {out}")
    return out
