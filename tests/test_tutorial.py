"""``docs/tutorial.ipynb`` runs from top to bottom in a headless Jupyter kernel (nbclient and
ipykernel: the ``dev`` extra)."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "tutorial.ipynb"


def test_tutorial_notebook_executes(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = {i: cell.get("outputs", []) for i, cell in enumerate(notebook.cells)}
    errors = [o for cell in outputs.values() for o in cell if o.get("output_type") == "error"]
    assert not errors
    text = "".join(o.get("text", "") for cell in outputs.values() for o in cell)
    assert "ppl-vae fit: estimator='analytic', epochs=3" in text  # the one summary line
    html = [o["data"]["text/html"] for cell in outputs.values() for o in cell
            if "text/html" in o.get("data", {})]
    assert any("<b>FitResult</b>" in h for h in html)
    assert any("<iframe srcdoc=" in h for h in html)  # the report, inline
    assert (tmp_path / "tutorial_report.html").exists()
