"""The notebooks run top to bottom offline: random weights (``PRETRAINED=False``) and bundled photos."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

CASES = [
    ("depth_estimation.ipynb", {"HEAD_TYPE": "dpt", "HEAD_DATASET": "kitti", "SCALE_FACTOR": 0.25}),
    ("depth_estimation.ipynb", {"HEAD_TYPE": "linear4", "SCALE_FACTOR": 0.2}),
    ("semantic_segmentation.ipynb", {"HEAD_TYPE": "ms", "HEAD_SCALE_COUNT": 2, "SHORT_SIDE": 84}),
    ("semantic_segmentation.ipynb", {"HEAD_TYPE": "linear", "HEAD_DATASET": "ade20k", "SHORT_SIDE": 98}),
    ("features_pca.ipynb", {"IMAGE_SIZE": 112}),
]


def _inject_parameters(nb: nbformat.NotebookNode, params: dict) -> None:
    """Add a cell overriding the ``parameters`` cell's values right after it (papermill's convention)."""
    index = next(i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", []))
    source = "\n".join(f"{name} = {value!r}" for name, value in params.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, cell)


def _text_outputs(nb: nbformat.NotebookNode) -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "params"), CASES, ids=[f"{n}-{p.get('HEAD_TYPE', 'pca')}" for n, p in CASES])
def test_notebook_executes_offline(name, params, tmp_path, monkeypatch):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "stored outputs"
    _inject_parameters(nb, {"PRETRAINED": False, **params})
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing may come from a warm cache
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    figures = [out for cell in nb.cells for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
    assert len(figures) == 1, "the notebook shows one figure"
    text = _text_outputs(nb)
    assert "device:" in text
    if name == "depth_estimation.ipynb":
        assert "depth range 0.001-10.0 m" in text  # random heads use the default range, whatever the dataset
        assert "depth: (1, 1," in text
    elif name == "semantic_segmentation.ipynb":
        assert ("scales: (1.0, 1.32)" if params["HEAD_TYPE"] == "ms" else "scales: (1.0,)") in text
    else:
        assert "patch grid: 8 x 8" in text and "foreground:" in text
    assert not (tmp_path / "torch" / "hub" / "checkpoints").exists()  # nothing was downloaded
