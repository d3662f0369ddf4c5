"""The study notebook runs end to end at its quick settings and shows its figures (minutes on a CPU)."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_study_notebook_runs_and_shows_its_figures(mnist, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("JAXOIP_NOTEBOOK_QUICK", "1")
    monkeypatch.delenv("JAXOIP_SEED_RESULTS", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(ROOT / "notebooks" / "study.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=900, resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    figures = [
        i for i, c in enumerate(nb.cells) if c.cell_type == "code"
        for o in c.get("outputs", []) if "image/png" in o.get("data", {})
    ]
    sections = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("## ")]
    # Every section but the precursor table (a table) shows at least one figure.
    with_figure = {max(s for s in sections if s < f) for f in figures}
    assert len(with_figure) == len(sections) - 1, (sections, figures)
