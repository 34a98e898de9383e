"""notebooks/tutorial.ipynb runs top to bottom (nbclient, a fresh kernel) with a small budget put
into its one parameter cell; outputs are stripped in git."""

from __future__ import annotations

from pathlib import Path

import nbformat  # the notebook extra, installed with .[test]
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.torch  # its comparison section trains the PyTorch reference

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "tutorial.ipynb"
SMALL_BUDGET = "EPOCHS = 20\nN_POINTS = 1000\nN_SAMPLES = 500\nTORCH_EPOCHS = 2\n"


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


def test_notebook_runs_top_to_bottom_with_a_small_budget(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    parameters = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1, "one parameter cell sets the budget"
    parameters[0].source = SMALL_BUDGET
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "alpha_bar_T = 0.778" in outputs and "largest difference over 500 points" in outputs
    assert not any(o.get("output_type") == "error" for c in nb.cells for o in c.get("outputs", []))
