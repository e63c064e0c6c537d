"""The notebooks' code cells run top to bottom (shell/magic lines skipped)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path):
    cells = json.loads(path.read_text())["cells"]
    namespace: dict = {}
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        lines = [l for l in "".join(cell["source"]).splitlines() if not l.lstrip().startswith(("!", "%"))]
        exec(compile("\n".join(lines), f"{path.name}", "exec"), namespace)
    record = namespace["record"]
    assert record["event"] == "reinit" and record["revived"] > 0
    assert all(row.get("max_abs_cos_to_own_saved", 0) < 1e-4 for row in record["layers"])
