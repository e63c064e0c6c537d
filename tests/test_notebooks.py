"""The notebooks, executed top to bottom on tiny settings (``REPR_JAX_SMALL=1``), as CI does:
each code cell runs in order in one namespace, as a kernel would (shell ``!``/``%`` lines
skipped); every notebook ends in a cell of checks on what its cells produced, and this test
checks more of it. Also: a Colab badge and an install cell first, outputs stripped in git."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _execute(path: Path, out: Path, monkeypatch) -> dict:
    monkeypatch.setenv("REPR_JAX_SMALL", "1")
    monkeypatch.setenv("REPR_JAX_NOTEBOOK_OUT", str(out))
    monkeypatch.delenv("REPR_JAX_DATA_DIR", raising=False)
    import matplotlib
    matplotlib.use("Agg")
    namespace: dict = {"__name__": "__main__"}
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        if cell["cell_type"] != "code":
            continue
        lines = [l for l in "".join(cell["source"]).splitlines() if not l.lstrip().startswith(("!", "%"))]
        exec(compile("\n".join(lines), f"{path.name} cell {i}", "exec"), namespace)
    import matplotlib.pyplot as plt
    plt.close("all")
    return namespace


def test_four_notebooks_with_badge_install_cell_and_no_outputs():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_inside_repr.ipynb", "03_criteria.ipynb",
                                           "04_compression.ipynb"]
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        assert "colab-badge.svg" in "".join(cells[0]["source"]) and path.name in "".join(cells[0]["source"])
        assert "pip" in "".join(cells[1]["source"]) and 'find_spec("repr_jax")' in "".join(cells[1]["source"])
        assert all(c.get("outputs", []) == [] and c.get("execution_count") is None
                   for c in cells if c["cell_type"] == "code"), f"{path.name}: strip the outputs"
        assert "SMALL" in "".join(cells[2]["source"])
        assert "".join(cells[-1]["source"]).startswith("# checks")


def test_quickstart(tmp_path, monkeypatch):
    ns = _execute(NOTEBOOKS[0], tmp_path, monkeypatch)
    assert set(ns["summaries"]) == {"standard", "repr"} and ns["label"] == "synthetic CIFAR-shaped data"
    assert (tmp_path / "c3-repr-seed0" / "pruning.jsonl").exists() and (tmp_path / "report" / "report.md").exists()


def test_inside_repr(tmp_path, monkeypatch):
    ns = _execute(NOTEBOOKS[1], tmp_path, monkeypatch)
    layers = ns["layers"]
    assert set(ns["before"]) == set(ns["after_reinit"]) == {l.name for l in layers}
    assert ns["worst"] < 1e-4 and sum(map(len, ns["dropped"].values())) == ns["record"]["revived"]


def test_criteria(tmp_path, monkeypatch):
    ns = _execute(NOTEBOOKS[2], tmp_path, monkeypatch)
    from repr_jax import CRITERIA
    assert ns["names"] == sorted(CRITERIA) and ns["rho"].shape == (len(CRITERIA),) * 2


@pytest.mark.slow
def test_compression(tmp_path, monkeypatch):
    ns = _execute(NOTEBOOKS[3], tmp_path, monkeypatch)
    assert [r[0] for r in ns["rows"]] == ["li-l1", "slimming"]
    assert all((tmp_path / f"r20-{m}-seed0" / "export" / "checkpoint").exists() for m in ("li-l1", "slimming"))
