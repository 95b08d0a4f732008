"""Bad H&M files end in one line that names the file and the line, when that line is read."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks import synth
from recsys.cli import RecsysError
from recsys.data.readers import parse_hm

ROWS = 20_000


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hm-original")
    synth.write_hm(out, ROWS, seed=0)
    return out


def edited(original: Path, target: Path, name: str, edit: Callable[[list[str]], str]) -> Path:
    shutil.copytree(original, target)
    path = target / name
    path.write_text(edit(path.read_text().splitlines()))
    return target


def replace_line(number: int, change: Callable[[str], str]) -> Callable[[list[str]], str]:
    def edit(lines: list[str]) -> str:
        lines[number - 1] = change(lines[number - 1])
        return "\n".join(lines) + "\n"

    return edit


CASES = {
    "bad date": (
        "transactions_train.csv",
        replace_line(15_001, lambda line: "2020-13-45" + line[10:]),
        r"transactions_train.csv at line 15,001: .*invalid value '2020-13-45'",
    ),
    "truncated mid-row": (
        "transactions_train.csv",
        lambda lines: "\n".join(lines)[:-25],
        rf"transactions_train.csv at line {ROWS + 1:,}: .*Expected 5 columns",
    ),
    "customer id of the wrong length": (
        "transactions_train.csv",
        replace_line(12_345, lambda line: line.replace(line.split(",")[1], "abc123")),
        r"transactions_train.csv line 12,345: id 'abc123' has 6 characters, not 64",
    ),
    "article id without its leading zero in articles.csv": (
        "articles.csv",
        replace_line(9, lambda line: line[1:]),
        r"articles.csv line 9: id '\d{9}' has 9 characters, not 10 \(its leading zero lost",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_rows_are_named_by_file_and_line(original: Path, tmp_path: Path, case: str) -> None:
    name, edit, message = CASES[case]
    raw = edited(original, tmp_path / "raw", name, edit)
    with pytest.raises(RecsysError, match=message) as caught:
        parse_hm(raw)
    assert "\n" not in str(caught.value)


def test_the_original_files_parse(original: Path) -> None:
    interactions, items = parse_hm(original)
    assert len(interactions) == ROWS and items["item_id"].str.len().eq(10).all()
