"""Every notebook in notebooks/ runs at tiny settings (JAXOIP_NOTEBOOK_QUICK=1) and shows its figures.

Cells tagged `figure` must display at least one PNG image: a figure that is built but not shown
(a backend switched to Agg, a swallowed return value) fails here.
"""

from pathlib import Path

import pytest

from jaxoip.data.mnist import DATA_DIR_ENV, resolve_data_dir

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[test]')")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[test]')")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _pngs(cell) -> int:
    return sum("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks in notebooks/"


@pytest.mark.slow  # Minutes each; `pytest -m slow` (CI runs it).
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_shows_its_figures(path, mnist, monkeypatch):
    monkeypatch.setenv("JAXOIP_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv(DATA_DIR_ENV, resolve_data_dir())  # The kernel inherits this process's environment.
    monkeypatch.delenv("MPLBACKEND", raising=False)  # The kernel's own (inline) backend, as for a reader.
    nb = nbformat.read(path, as_version=4)
    figure_cells = [c for c in nb.cells if "figure" in c.metadata.get("tags", [])]
    assert figure_cells, f"{path.name}: no cell is tagged 'figure'"
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": path.parent}}
    )
    client.execute()  # Raises CellExecutionError, naming the cell, if any cell fails.
    missing = [c.source.splitlines()[0] for c in figure_cells if _pngs(c) == 0]
    assert not missing, f"{path.name}: cells tagged 'figure' showed no image: {missing}"
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
