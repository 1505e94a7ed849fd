"""The notebooks: each runs end to end with small parameters, and each is committed with outputs.

Execution happens in memory, in a temporary working directory, with
`KVCLUSTER_NB_SMALL=1` (read by each notebook's first code cell): the committed
notebooks, with the outputs of a full run, are never overwritten.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_notebooks() -> None:
    names = [p.name for p in NOTEBOOKS]
    assert names[:4] == [
        "01-quickstart.ipynb",
        "02-elections.ipynb",
        "03-writes.ipynb",
        "04-reads.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_with_the_outputs_of_a_run(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    cells = _code_cells(nb)
    assert "parameters" in cells[0].metadata.get("tags", []), "first code cell: parameters"
    assert all(c.execution_count for c in cells), "every code cell has been run"
    outputs = [o for c in cells for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"], "a cell failed in the saved run"
    assert any("image/png" in o.get("data", {}) for o in outputs), "no plot in the saved run"
    assert "KVCLUSTER_NB_SMALL" in cells[0].source


@pytest.mark.integration
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_runs_with_small_parameters(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVCLUSTER_NB_SMALL", "1")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, if one fails
    images = [o for c in _code_cells(nb) for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "the notebook drew no figure"
