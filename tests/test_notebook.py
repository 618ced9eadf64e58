"""experiments/colab_vtab.ipynb runs top to bottom in its CPU demo mode (nbclient, a real IPython kernel)."""

import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "experiments", "colab_vtab.ipynb")


@pytest.mark.slow
def test_colab_notebook_demo_mode(tmp_path, monkeypatch):
  monkeypatch.setenv("VIT_ADAPT_NOTEBOOK_DEMO", "1")
  monkeypatch.setenv("VIT_ADAPT_NOTEBOOK_OUT", str(tmp_path))
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")  # tiny models: compile fast
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
  monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.join(ROOT, "experiments")}})
  client.execute()
  outputs = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                      if o.get("output_type") == "stream")
  # The install plan is printed, and nothing is installed in DEMO mode.
  assert "install: " in outputs and "not installing" in outputs
  assert "'task': 'demo/digits'" in outputs
  assert '"task": "vtab/dtd"' in outputs
  assert "done 2/2" in outputs and "0 failed" in outputs
  # Progress: the runs' own log lines reach the cell while the sweep runs, prefixed with the run.
  assert "[vtab/dtd/adapter_vtab/seed=0] " in outputs and "Eval at step 3" in outputs
  # The 19-task command names the data location and the weights.
  full = next(ln for ln in outputs.splitlines() if "--tasks=all" in ln)
  assert "dataset.root=" in full and "model.init=" in full and "seed=[0,1,2]" in full
  # The last code cell displayed the Markdown table and both plots.
  shown = [o for o in nb.cells[-2].outputs if o.get("output_type") == "display_data"]
  assert "text/markdown" in shown[0]["data"] and "| linear_vtab |" in shown[0]["data"]["text/markdown"]
  assert all("image/png" in o["data"] for o in shown[1:]) and len(shown) == 3
  assert os.path.isfile(tmp_path / "runs" / "sweep" / "report" / "table.md")
