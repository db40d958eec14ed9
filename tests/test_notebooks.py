"""The notebooks: stored without outputs, and each runs top to bottom (FFFCPU_QUICK=1) in under two minutes.

The kernel is the ``python3`` kernel of the interpreter running pytest (ipykernel's native kernel spec), so the
notebooks see the same fffcpu and packages as the tests. Nothing touches the network.
"""

import json
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = ["01_what_is_an_fff", "02_regions", "03_neuron_savings", "04_digits", "05_ultrafastbert"]
TIME_LIMIT = 120  # seconds per notebook, in CI


def test_the_five_notebooks_exist():
    assert [nb.stem for nb in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_is_stored_clean(path):
    """No outputs, no execution counts, valid nbformat 4, prose between the code cells."""
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for cell in code:
        assert cell.get("outputs", []) == [], f"{path.name}: a code cell has stored outputs (clear them)"
        assert cell.get("execution_count") is None, f"{path.name}: a code cell has an execution count"
    assert "widgets" not in nb.get("metadata", {}), f"{path.name}: stored widget state (clear it)"
    kinds = [c["cell_type"] for c in nb["cells"]]
    assert kinds[0] == "markdown", "a notebook starts with prose"
    markdown = kinds.count("markdown")
    assert markdown >= len(code) / 2, f"{path.name}: {markdown} prose cells for {len(code)} code cells"
    assert any("FFFCPU_QUICK" in "".join(c["source"]) for c in code), f"{path.name} ignores FFFCPU_QUICK"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("FFFCPU_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=TIME_LIMIT, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    # ipykernel's native "python3" spec runs sys.executable: the interpreter of this test run.
    client.kernel_manager_class = _native_kernel_manager()
    started = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - started
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert seconds < TIME_LIMIT, f"{path.name} took {seconds:.0f} s with FFFCPU_QUICK=1 (limit {TIME_LIMIT} s)"
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 2, f"{path.name} drew only {images} figures"


def _native_kernel_manager():
    """A KernelManager whose ``python3`` kernel is this interpreter, whatever kernel specs are installed."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    class ThisInterpreter(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            spec = super().get_kernel_spec(kernel_name)
            if kernel_name == "python3":
                spec.argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
            return spec

    class Manager(KernelManager):
        def _kernel_spec_manager_default(self):
            return ThisInterpreter(data_dir=self.data_dir)

    return Manager
