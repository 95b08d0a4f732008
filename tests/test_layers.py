"""The package's layers: the Run API sits below the service and the stages, nothing in modeling/
imports serving/, the modeling library imports no stage, and no stage module imports another."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recsys"
#: The Typer commands of ``make train|tune|evaluate|predict``: each sits on library code.
STAGES = ("train", "tune", "evaluate", "predict")


def imported_modules(path: Path) -> set[str]:
    """Every ``recsys`` module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith("recsys")}


@pytest.mark.parametrize("path", sorted((PACKAGE / "modeling").glob("*.py")), ids=lambda p: p.name)
def test_modeling_never_imports_the_service(path: Path) -> None:
    assert not {m for m in imported_modules(path) if m.startswith("recsys.serving")}


@pytest.mark.parametrize("path", sorted((PACKAGE / "api").glob("*.py")), ids=lambda p: p.name)
def test_the_run_api_imports_neither_the_service_nor_a_stage(path: Path) -> None:
    above = ("recsys.serving", *(f"recsys.modeling.{stage}" for stage in STAGES))
    assert not {m for m in imported_modules(path) if m.startswith(above)}


def imported_stages(path: Path, stages: tuple[str, ...] = STAGES) -> set[str]:
    """The ``stages`` modules ``path`` imports, whole or a name from one."""
    modules = {f"recsys.modeling.{stage}" for stage in stages}
    return {m for m in imported_modules(path) if m in modules or m.rsplit(".", 1)[0] in modules}


#: The modeling library: every module of ``modeling/`` but the stages.
LIBRARY = sorted(path for path in (PACKAGE / "modeling").glob("*.py") if path.stem not in STAGES)


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.name)
def test_the_modeling_library_imports_no_stage(path: Path) -> None:
    assert not imported_stages(path)


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_another(stage: str) -> None:
    others = tuple(other for other in STAGES if other != stage)
    assert not imported_stages(PACKAGE / "modeling" / f"{stage}.py", others)
