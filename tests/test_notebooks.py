"""The notebooks, executed top to bottom on tiny settings (``REPR_JAX_SMALL=1``) under a real
Jupyter kernel (nbclient + ipykernel, the inline matplotlib backend), as a user runs them:
every plotting cell must produce an image output (a library that switched the backend made
them vanish), every notebook ends in a cell of checks on what its cells produced, and this
test checks more of it through a cell it appends. Also: a Colab badge and an install cell
first, outputs stripped in git."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
_MARK = "__repr_jax_test__"


def _plots(source: str) -> bool:
    return "plt." in source


def _execute(path: Path, out: Path, expose: dict[str, str]) -> dict:
    """Run ``path`` in a fresh kernel; returns the JSON values of the ``expose`` expressions,
    evaluated in the kernel after the last cell. Fails if a plotting cell showed no image."""
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json as _json\nprint(%r + _json.dumps({%s}))" % (_MARK, ", ".join(f"{k!r}: {v}" for k, v in expose.items()))))
    env = {**os.environ, "REPR_JAX_SMALL": "1", "REPR_JAX_NOTEBOOK_OUT": str(out)}
    env.pop("REPR_JAX_DATA_DIR", None)
    env.pop("MPLBACKEND", None)            # the kernel's default: inline figures
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(out)}})
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)                 # the kernel is started with this process's environment
    try:
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and _plots(cell.source):
            images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
            assert images, f"{path.name} cell {i} draws a figure but showed none: {cell.source[:80]!r}"
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("name") == "stdout")
    return json.loads(printed.split(_MARK, 1)[1])


def test_five_notebooks_with_badge_install_cell_and_no_outputs():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_inside_repr.ipynb", "03_criteria.ipynb",
                                           "04_compression.ipynb", "05_your_own_model.ipynb"]
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        assert "colab-badge.svg" in "".join(cells[0]["source"]) and path.name in "".join(cells[0]["source"])
        assert "pip" in "".join(cells[1]["source"]) and 'find_spec("repr_jax")' in "".join(cells[1]["source"])
        assert all(c.get("outputs", []) == [] and c.get("execution_count") is None
                   for c in cells if c["cell_type"] == "code"), f"{path.name}: strip the outputs"
        assert "SMALL" in "".join(cells[2]["source"])
        assert "".join(cells[-1]["source"]).startswith("# checks")


def test_quickstart(tmp_path):
    ns = _execute(NOTEBOOKS[0], tmp_path, {"summaries": "sorted(summaries)", "label": "label"})
    assert ns["summaries"] == ["repr", "standard"] and ns["label"] == "synthetic CIFAR-shaped data"
    assert (tmp_path / "c3-repr-seed0" / "pruning.jsonl").exists() and (tmp_path / "report" / "report.md").exists()


def test_inside_repr(tmp_path):
    ns = _execute(NOTEBOOKS[1], tmp_path, {
        "before": "sorted(before)", "after_reinit": "sorted(after_reinit)", "layers": "sorted(l.name for l in layers)",
        "worst": "float(worst)", "dropped": "sum(map(len, dropped.values()))", "revived": "int(record['revived'])"})
    assert ns["before"] == ns["after_reinit"] == ns["layers"]
    assert ns["worst"] < 1e-4 and ns["dropped"] == ns["revived"] > 0


def test_criteria(tmp_path):
    ns = _execute(NOTEBOOKS[2], tmp_path, {"names": "list(names)", "rho": "list(rho.shape)"})
    from repr_jax import CRITERIA
    assert ns["names"] == sorted(CRITERIA) and ns["rho"] == [len(CRITERIA)] * 2


@pytest.mark.slow
def test_compression(tmp_path):
    ns = _execute(NOTEBOOKS[3], tmp_path, {"rows": "[r[0] for r in rows]"})
    assert ns["rows"] == ["li-l1", "slimming"]
    assert all((tmp_path / f"r20-{m}-seed0" / "export" / "checkpoint").exists() for m in ("li-l1", "slimming"))


@pytest.mark.slow
def test_your_own_model(tmp_path):
    ns = _execute(NOTEBOOKS[4], tmp_path, {"before": "small.params_before", "after": "small.params_after",
                                           "difference": "difference", "bn": "list(pr.layers[0].bn_path)",
                                           "nnx": "[nnx_small.params_before, nnx_small.params_after, nnx_difference]",
                                           "groups": "net.dw.feature_group_count", "width": "net.res.out_features"})
    assert ns["after"] < ns["before"] and ns["difference"] < 1e-4 and ns["bn"] == ["BatchNorm_0"]
    # NNX's own loop: shrunk in place, the depthwise conv's groups follow its surviving inputs
    assert ns["nnx"][1] < ns["nnx"][0] and ns["nnx"][2] < 1e-4 and ns["groups"] == ns["width"] < 32
