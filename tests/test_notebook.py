"""The reproduce notebook runs, on tiny results files and on the committed ones."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from pinn_apts.paper.experiments import run_one
from pinn_apts.training.cli import CONFIG_DIR

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "reproduce_paper.ipynb"


def execute(folder: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    return nb


def outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def test_notebook_draws_tables_and_figures(tmp_path):
    for method in ("apts_d4", "adam", "lbfgs"):
        run_one("heat", method, 0, 3, tmp_path / "results", CONFIG_DIR, tmp_path / "logs")
    (tmp_path / "notebooks").mkdir()
    nb = execute(tmp_path / "notebooks")
    text = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", "")) for o in outputs(nb))
    assert "3 runs in" in text and "| APTS D=4 | 1 |" in text and "| Adam | 1 |" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs(nb)) == 2  # Figure 1-3 for D=4, Figure 4


def test_notebook_runs_on_the_committed_results():
    nb = execute(NOTEBOOK.parent)
    assert any("runs in" in str(o.get("text", "")) for o in outputs(nb))
