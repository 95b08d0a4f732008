"""The data dictionary lists every column and stats key the pipeline actually writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys.config import PROJ_ROOT
from recsys.data.custom import CustomSource
from recsys.data.interim import interim
from recsys.data.split import SplitSettings, process
from recsys.modeling.synthetic import write_synthetic_processed

DICTIONARY = PROJ_ROOT / "references" / "data-dictionary.md"
TABLES = ("events.parquet", "items.parquet", "users.parquet")
#: stats.json objects whose keys are data (file names), not fields.
FREE_KEYS = {"raw_files"}


def section(name: str) -> str:
    """The text under the ``### name`` heading, up to the next heading of any level <= 3."""
    text = DICTIONARY.read_text()
    match = re.search(rf"^### {re.escape(name)}\n(.*?)(?=^#{{1,3}} )", text, re.M | re.S)
    assert match, f"the data dictionary has no '### {name}' section"
    return match.group(1)


def named(text: str) -> set[str]:
    """The names a text quotes in backticks."""
    return set(re.findall(r"`([^`]+)`", text))


def documented_types(name: str) -> dict[str, str]:
    """``column -> type cell`` from the section's table rows (a row may name several columns)."""
    types = {}
    for line in section(name).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if "|" in line else []
        for at, cell in enumerate(cells[:-1]):
            names = re.findall(r"`([^`]+)`", cell)
            if names and re.fullmatch(r"(`[^`]+`(, )?)+", cell):
                types.update({n: cells[at + 1] for n in names})
                break
    return types


def arrow_type(field: pa.Field) -> str:
    return str(field.type).replace("large_string", "string")


def assert_documented(folder: Path) -> None:
    """Every column of the processed tables is listed with its type; every stats key is named."""
    for name in TABLES:
        types = documented_types(name)
        for field in pq.read_schema(folder / name):
            assert field.name in types, f"{name} column {field.name!r} is not in the dictionary"
            assert arrow_type(field) in types[field.name], (
                f"{name} column {field.name!r} is {arrow_type(field)}, the dictionary says "
                f"{types[field.name]!r}"
            )
    documented = named(section("stats.json"))
    stats = json.loads((folder / "stats.json").read_text())
    keys = {
        key
        for top, value in stats.items()
        for key in [top, *(value if isinstance(value, dict) and top not in FREE_KEYS else ())]
    }
    missing = keys - documented
    assert not missing, f"stats.json keys missing from the dictionary: {missing}"


def test_the_synthetic_processed_files_are_documented(tmp_path):
    assert_documented(write_synthetic_processed(tmp_path, n_users=8, n_items=6, n_cold=2))


@pytest.mark.parametrize("split", ["leave-one-out", "temporal"])
def test_the_pipeline_outputs_are_documented(tmp_path, split):
    """A custom dataset through the real interim and process stages: text ids, dates, ratings,
    two cold items."""
    events = tmp_path / "events.csv"
    events.write_text(
        "user,item,time,stars\n"
        + "".join(
            f"u{u},i{(u + t) % 7},2021-01-{t + 1:02d},{t % 5 + 1}\n"
            for u in range(6)
            for t in range(6)
        )
    )
    items = tmp_path / "items.csv"
    items.write_text("item,name\n" + "".join(f"i{i},Thing {i}\n" for i in range(9)))
    source = CustomSource(
        events,
        items,
        user_col="user",
        item_col="item",
        time_col="time",
        rating_col="stars",
        title_col="name",
    )
    interim("custom", interim_root=tmp_path / "interim", custom=source)
    folder = process(
        "custom", tmp_path / "interim", tmp_path / "processed", split=SplitSettings(kind=split)
    )
    assert pq.read_schema(folder / "items.parquet").field("item_id").type == pa.large_string()
    assert_documented(folder)


def test_run_config_and_checkpoint_keys_are_documented():
    from dataclasses import fields

    from recsys.modeling.models import ModelConfig
    from recsys.modeling.configs import DEFAULTS

    config = named(section("config.yaml"))
    assert not set(DEFAULTS) - config, f"config keys missing: {set(DEFAULTS) - config}"
    checkpoint = named(section("checkpoints/best.ckpt and checkpoints/last.ckpt"))
    model_keys = {f.name for f in fields(ModelConfig)}
    assert not model_keys - checkpoint, f"model_config keys missing: {model_keys - checkpoint}"
