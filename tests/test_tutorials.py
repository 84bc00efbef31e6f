"""Every tutorial notebook executes from top to bottom without a cell error.

Each notebook is copied into a temporary folder (so nothing it writes lands in the repository) and
run there with nbclient on the ``python3`` kernel. A cell that raises fails the test with the
notebook's name, the cell and the traceback.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("sklearn")

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
EXPECTED = {
    "SmoothHess_Interactions.ipynb",
    "Kernel_Smoothing.ipynb",
    "CASO.ipynb",
    "Evaluation_and_Attacks.ipynb",
    "Text_Interactions.ipynb",
}


def test_all_tutorials_present() -> None:
    assert {p.name for p in NOTEBOOKS} >= EXPECTED


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_executes(notebook: Path, tmp_path: Path) -> None:
    work = tmp_path / notebook.name
    shutil.copy(notebook, work)
    nb = nbformat.read(work, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        pytest.fail(f"{notebook.name}: a cell raised\n{err}")
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells, f"{notebook.name} has no code"
    errors = [o for c in code_cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{notebook.name}: error outputs {errors}"
    images = [o for c in code_cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, f"{notebook.name} drew no figure"
