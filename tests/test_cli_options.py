"""One style of options across the stages: ``--dataset`` declared alike everywhere, one name and
help per folder, sentence-case help texts, and the same one-line error for a dataset that has no
processed data (or, for the raw stages, an unknown name)."""

from __future__ import annotations

import importlib
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import typer.main

from recsys import config
from recsys.cli import run
from recsys.data.sources import DATASETS
from recsys.processed import PROCESSED_FILES

PROJ_ROOT = Path(__file__).resolve().parents[1]
STAGES = (
    "recsys.dataset",
    "recsys.features",
    "recsys.modeling.train",
    "recsys.modeling.evaluate",
    "recsys.modeling.predict",
    "recsys.modeling.tune",
    "recsys.plots",
    "recsys.report",
    "recsys.serve",
)
#: Each folder of recsys.config has one option name wherever a stage takes it.
FOLDERS = {
    config.RAW_DATA_DIR: "--raw-dir",
    config.INTERIM_DATA_DIR: "--interim-dir",
    config.PROCESSED_DATA_DIR: "--processed-dir",
    config.MODELS_DIR: "--models-dir",
    config.METRICS_DIR: "--metrics-dir",
    config.FIGURES_DIR: "--figures-dir",
}


def stage_commands(module: str) -> dict[str, Any]:
    """``{"recsys.x [sub]": click command}`` of a stage, with a group's own options (serve's)."""
    command = typer.main.get_command(importlib.import_module(module).app)
    found = {module: command} if command.params else {}
    for name, sub in getattr(command, "commands", {}).items():
        found[f"{module} {name}"] = sub
    return found


COMMANDS = {name: cmd for stage in STAGES for name, cmd in stage_commands(stage).items()}


def options(command: Any) -> list[Any]:
    return [p for p in command.params if p.param_type_name == "option"]


def option(command: Any, name: str) -> Any:
    return next(p for p in options(command) if p.name == name)


def test_every_command_takes_the_one_dataset_option() -> None:
    assert len(COMMANDS) >= 19  # download ... serve index: none went missing
    declared = {}
    for name, command in COMMANDS.items():
        dataset = option(command, "dataset")
        assert (dataset.opts, dataset.secondary_opts) == (["--dataset", "-d"], []), name
        declared[name] = (dataset.help, dataset.default, dataset.multiple, dataset.required)
    report = declared.pop("recsys.report")  # several datasets, default: those with metrics
    assert set(declared.values()) == {(declared["recsys.plots all"][0], "ml-1m", False, False)}
    assert config.DEFAULT_DATASET == "ml-1m"  # the Makefile's DATASET ?= ml-1m
    help_text = declared["recsys.plots all"][0]
    assert all(name in help_text for name in DATASETS) and "RECSYS_DATASET" in help_text
    assert report[1:] == (None, True, False)
    assert report[0].split(". ")[0] == help_text.split(". ")[0]  # the same names, same words


def test_one_name_and_one_help_per_folder_and_per_shared_option() -> None:
    by_name: dict[str, set] = defaultdict(set)
    for name, command in COMMANDS.items():
        for param in options(command):
            if isinstance(param.default, Path) and param.default in FOLDERS:
                assert param.opts[0] == FOLDERS[param.default], (name, param.opts)
            by_name[param.opts[0]].add((param.help, str(param.default)))
    for flag in (*FOLDERS.values(), "--device"):
        assert len(by_name[flag]) == 1, (flag, by_name[flag])
    evaluate = option(COMMANDS["recsys.modeling.evaluate"], "metrics_dir")
    assert evaluate.opts == ["--metrics-dir", "--output-dir"]  # the former name still works


def test_every_help_text_is_a_sentence() -> None:
    bad = [
        (name, param.opts[0], param.help)
        for name, command in COMMANDS.items()
        for param in options(command)
        if not (param.help and param.help[0].isupper() and param.help.endswith("."))
    ]
    assert not bad, bad


def test_every_flag_the_makefile_passes_exists() -> None:
    recipes = (PROJ_ROOT / "Makefile").read_text().replace("\\\n", " ")
    calls = re.findall(r"-m (recsys[\w.]*)((?: [a-z][\w-]*)?)([^\n;|]*)", recipes)
    assert len(calls) >= 12
    for module, sub, rest in calls:
        name = f"{module}{sub}"
        command = COMMANDS.get(name) or typer.main.get_command(importlib.import_module(module).app)
        known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", rest):
            assert flag in known, (name, flag)


def cli_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, module: str, *args: str
) -> list[str]:
    """Run a stage as ``python -m`` does; returns its stderr lines after the exit 1."""
    monkeypatch.setattr(sys, "argv", [module, *args])
    with pytest.raises(SystemExit) as exit_info:
        run(importlib.import_module(module).app)
    assert exit_info.value.code == 1
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    "module, args",
    [
        ("recsys.features", ["text"]),
        ("recsys.features", ["embed"]),
        ("recsys.features", ["semantic-ids"]),
        ("recsys.modeling.train", ["--config", "sasrec-ce"]),
        ("recsys.modeling.tune", ["--config", "sasrec-ce", "--trials", "1"]),
        ("recsys.modeling.evaluate", ["--baselines-only"]),
        ("recsys.modeling.predict", ["--user", "1"]),
        ("recsys.plots", ["tsne"]),
        ("recsys.plots", ["recs"]),
        ("recsys.plots", ["semantic-ids"]),
        ("recsys.serve", ["--port", "0"]),
    ],
)
def test_a_dataset_without_processed_data_is_the_same_one_line_everywhere(
    monkeypatch, capsys, tmp_path, module, args
) -> None:
    processed, models = tmp_path / "processed", tmp_path / "models"
    needs = "items.parquet" if module == "recsys.features" else ", ".join(PROCESSED_FILES)
    sub, rest = ([args[0]], args[1:]) if not args[0].startswith("-") else ([], args)
    folders = ["--processed-dir", str(processed)]
    if any(p.name == "models_dir" for p in COMMANDS[" ".join([module, *sub])].params):
        folders += ["--models-dir", str(models)]
    lines = cli_error(monkeypatch, capsys, module, *sub, "-d", "nope", *folders, *rest)
    assert lines == [
        f"error: processed data for 'nope' is missing {needs} in {processed / 'nope'}; "
        "run 'make data DATASET=nope' first"
    ]
    assert not models.exists()  # nothing was started: no run folder, no tuning study


@pytest.mark.parametrize("command", ["download", "interim", "process"])
def test_an_unknown_dataset_of_the_raw_stages_lists_the_known_ones(
    monkeypatch, capsys, tmp_path, command
) -> None:
    folders = ["--raw-dir", str(tmp_path / "raw")]
    lines = cli_error(monkeypatch, capsys, "recsys.dataset", command, "-d", "nope", *folders)
    assert lines == [f"error: unknown dataset 'nope'; choose one of {', '.join(DATASETS)}"]
