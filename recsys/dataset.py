"""Data stage: original files -> canonical interim parquet -> processed training data.

Three commands (``make data`` runs them in order) over the :mod:`recsys.data` library:

* ``download``: the original files into ``data/raw/<dataset>/``, verified by size and md5
  (:mod:`recsys.data.sources`).
* ``interim``: parse them into ``data/interim/<dataset>/`` interactions and items
  (:mod:`recsys.data.readers`, :mod:`recsys.data.interim`).
* ``process``: filter, index, order and split into the processed files of
  :mod:`recsys.processed` (:mod:`recsys.data.split`); ``--dataset custom --interactions FILE``
  parses your own files first (:mod:`recsys.data.custom`). ``main`` is its former name, kept as
  a hidden alias.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from loguru import logger

from recsys.cli import run
from recsys.config import DEFAULT_DATASET, INTERIM_DATA_DIR, PROCESSED_DATA_DIR, RAW_DATA_DIR
from recsys.data.custom import CustomSource
from recsys.data.interim import interim
from recsys.data.sources import MIRROR_ENV, download, get_spec
from recsys.data.split import FilterSettings, SplitSettings, check_settings, process
from recsys.options import DatasetOpt, InterimDirOpt, ProcessedDirOpt, RawDirOpt

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)

StrictOpt = Annotated[
    bool, typer.Option(help="Fail instead of dropping interactions with unknown item ids.")
]
InteractionsOpt = Annotated[
    Optional[Path], typer.Option(help="Custom: the interactions file (.csv or .parquet).")
]
ItemsOpt = Annotated[
    Optional[Path], typer.Option(help="Custom: the item table (.csv or .parquet), if any.")
]
UserColOpt = Annotated[str, typer.Option(help="Custom: the user id column.")]
ItemColOpt = Annotated[str, typer.Option(help="Custom: the item id column of the interactions.")]
TimeColOpt = Annotated[str, typer.Option(help="Custom: the time column (unix seconds or dates).")]
RatingColOpt = Annotated[Optional[str], typer.Option(help="Custom: the rating column, if any.")]
ItemsIdColOpt = Annotated[
    Optional[str],
    typer.Option(help="Custom: the item id column of the item table (default: --item-col)."),
]
TitleColOpt = Annotated[str, typer.Option(help="Custom: the title column of the item table.")]
TextColsOpt = Annotated[
    Optional[str],
    typer.Option(help="Custom: comma-separated text columns to keep (default: all others)."),
]
DelimiterOpt = Annotated[str, typer.Option(help="Custom: the CSV delimiter.")]
FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        help="Custom: events (one interaction per row, the columns above) or sequences (one "
        "line per user: 'user item item ...' in time order, integer ids, no timestamps).",
    ),
]


def _custom_source(  # one argument per CLI option: the mapping of a custom dataset
    interactions: Path | None,
    items: Path | None,
    user_col: str,
    item_col: str,
    time_col: str,
    rating_col: str | None,
    items_id_col: str | None,
    title_col: str,
    text_cols: str | None,
    delimiter: str,
    format_: str,
) -> CustomSource | None:
    if interactions is None:
        return None
    return CustomSource(
        interactions=interactions,
        items=items,
        user_col=user_col,
        item_col=item_col,
        time_col=time_col,
        rating_col=rating_col,
        items_id_col=items_id_col,
        title_col=title_col,
        text_cols=(
            tuple(c.strip() for c in text_cols.split(",") if c.strip())
            if text_cols is not None
            else None
        ),
        delimiter=delimiter,
        format=format_,
    )


@app.command("download")
def download_command(
    dataset: DatasetOpt = DEFAULT_DATASET,
    mirror: Annotated[
        Optional[Path],
        typer.Option(
            help=f"Local folder with <dataset>/ files or archives (env {MIRROR_ENV}); "
            "nothing is fetched from the network when it is set."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Check and install again even if present.")] = False,
    raw_dir: RawDirOpt = RAW_DATA_DIR,
) -> None:
    """Put the original files in data/raw/<dataset>/ (verified by size and md5)."""
    download(dataset, raw_root=raw_dir, mirror=mirror, force=force)


@app.command("interim")
def interim_command(
    dataset: DatasetOpt = DEFAULT_DATASET,
    strict: StrictOpt = False,
    raw_dir: RawDirOpt = RAW_DATA_DIR,
    interim_dir: InterimDirOpt = INTERIM_DATA_DIR,
) -> None:
    """Parse raw files into data/interim/<dataset>/ interactions.parquet and items.parquet."""
    if get_spec(dataset).parser == "custom":
        logger.info("custom: 'process --dataset custom --interactions FILE ...' parses your files")
        return
    interim(dataset, raw_root=raw_dir, interim_root=interim_dir, strict=strict)


@app.command("process")
@app.command("main", hidden=True)
def process_command(
    dataset: DatasetOpt = DEFAULT_DATASET,
    split: Annotated[
        str, typer.Option(help="How to split: leave-one-out or temporal.")
    ] = "leave-one-out",
    min_user_interactions: Annotated[int, typer.Option(help="Drop users with fewer.")] = 3,
    min_item_interactions: Annotated[int, typer.Option(help="Drop items with fewer.")] = 1,
    k_core: Annotated[
        Optional[int], typer.Option(help="Repeat both filters at >= K until stable.")
    ] = None,
    valid_start: Annotated[
        Optional[str], typer.Option(help="Temporal: validation from this time (unix s or ISO).")
    ] = None,
    test_start: Annotated[
        Optional[str], typer.Option(help="Temporal: test from this time (unix s or ISO).")
    ] = None,
    valid_frac: Annotated[
        float, typer.Option(help="Temporal, no --valid-start: share of events for validation.")
    ] = 0.1,
    test_frac: Annotated[
        float, typer.Option(help="Temporal, no --test-start: share of latest events for test.")
    ] = 0.1,
    ties: Annotated[
        str,
        typer.Option(
            help="Order of a user's events with the same timestamp: shuffle (seeded random) or "
            "file (raw file order, which often follows the item id)."
        ),
    ] = "shuffle",
    ties_seed: Annotated[int, typer.Option(help="Seed of --ties shuffle.")] = 0,
    strict: StrictOpt = False,
    raw_dir: RawDirOpt = RAW_DATA_DIR,
    interim_dir: InterimDirOpt = INTERIM_DATA_DIR,
    processed_dir: ProcessedDirOpt = PROCESSED_DATA_DIR,
    interactions: InteractionsOpt = None,
    items: ItemsOpt = None,
    user_col: UserColOpt = "user_id",
    item_col: ItemColOpt = "item_id",
    time_col: TimeColOpt = "timestamp",
    rating_col: RatingColOpt = None,
    items_id_col: ItemsIdColOpt = None,
    title_col: TitleColOpt = "title",
    text_cols: TextColsOpt = None,
    delimiter: DelimiterOpt = ",",
    format_: FormatOpt = "events",
) -> None:
    """Filter, index and split into data/processed/<dataset>/ (events, items, users, stats)."""
    filters = FilterSettings(min_user_interactions, min_item_interactions, k_core)
    split_settings = SplitSettings(
        split, valid_start, test_start, valid_frac, test_frac, ties, ties_seed
    )
    check_settings(filters, split_settings)
    custom = _custom_source(
        interactions,
        items,
        user_col,
        item_col,
        time_col,
        rating_col,
        items_id_col,
        title_col,
        text_cols,
        delimiter,
        format_,
    )
    if custom is not None:
        interim(dataset, raw_root=raw_dir, interim_root=interim_dir, strict=strict, custom=custom)
    process(dataset, interim_dir, processed_dir, filters, split_settings, strict=strict)


if __name__ == "__main__":
    run(app)
