"""Atomic writes and the one-line error contract of the stage CLIs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from recsys.cli import RecsysError
from recsys.io import atomic_dir, atomic_path, read_json, write_json


def test_atomic_path_keeps_previous_output_when_writer_fails(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_dir_swaps_whole_folder(tmp_path):
    target = tmp_path / "folder"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("killed")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_read_json_reports_corrupt_file(tmp_path):
    path = write_json({"a": 1}, tmp_path / "x.json")
    assert read_json(path) == {"a": 1}
    path.write_text("{not json")
    with pytest.raises(RecsysError, match="not valid JSON"):
        read_json(path)


def test_unwritable_output_dir_is_a_user_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(RecsysError, match="cannot create output folder"):
        write_json({}, blocker / "sub" / "x.json")
    assert blocker.read_text() == "a file where a folder should be"


def test_cli_runner_prints_one_line_and_exits_nonzero():
    code = (
        "import typer\n"
        "from recsys.cli import fail, run\n"
        "app = typer.Typer()\n"
        "@app.command()\n"
        "def main():\n"
        "    raise fail('bad value x in file y; do z')\n"
        "run(app)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: bad value x in file y; do z"]
    assert "Traceback" not in proc.stderr


def test_atomic_outputs_get_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json({"a": 1}, tmp_path / "x.json")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
