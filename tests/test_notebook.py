"""The quickstart notebook runs top to bottom on a tiny trained run and shows real items."""

from __future__ import annotations

import shutil

import nbformat
import pytest
from evaluate_helpers import DATASET, TITLES

from recsys.config import PROJ_ROOT

NOTEBOOK = PROJ_ROOT / "notebooks" / "1.0-quickstart.ipynb"
#: The cells whose answer must name catalogue items, found by what their code calls.
ANSWER_CALLS = ("run.recommend(user_id=", "run.recommend(titles=", "run.similar(")


def test_quickstart_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", [])


def _answer(cell: dict) -> str:
    """The plain-text form of the value a cell ends with (its answer, not what it printed)."""
    results = [o for o in cell.outputs if o["output_type"] == "execute_result"]
    return "\n".join(str(o["data"].get("text/plain", "")) for o in results)


@pytest.mark.slow
def test_quickstart_runs_on_a_tiny_text_run(world, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    # Loading writes the run's index folder: run on a copy, never on the shared world.
    run_dir = shutil.copytree(world.text_run, tmp_path / "models" / DATASET / world.text_run.name)
    env = {
        "RECSYS_RUN": str(run_dir),
        "RECSYS_DATASET": DATASET,
        "RECSYS_PROCESSED_DATA_DIR": str(world.processed),
        "RECSYS_MODELS_DIR": str(tmp_path / "models"),
        "MPLBACKEND": "Agg",  # as on a headless machine; the notebook plots inline regardless
    }
    for name, value in env.items():  # the kernel inherits this process's environment
        monkeypatch.setenv(name, value)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=120,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError naming the cell on any error

    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(c.execution_count for c in code)
    errors = [o for c in code for o in c.outputs if o["output_type"] == "error"]
    assert not errors
    titles = set(TITLES.values()) | {f"Item {i} ({1950 + i})" for i in range(1, 100)}
    for call in ANSWER_CALLS:
        (cell,) = [c for c in code if call in c.source]
        shown = _answer(cell)
        named = {t for t in titles if t in shown}
        assert len(named) >= 3, f"the cell calling {call} named no items: {shown[:500]}"
        assert "score" in shown
    (plot,) = [c for c in code if "PCA" in c.source]
    assert any("image/png" in o.get("data", {}) for o in plot.outputs)
