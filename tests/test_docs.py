"""The documentation runs: every ``python`` block of ``docs/library.md``, in order, in one
namespace (what a reader pasting them into a notebook gets)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_library_page_has_a_block_per_method_family():
    text = "\n".join(_blocks(DOCS / "library.md"))
    for name in ("repr", "li-l1", "slimming", "trimming", "channel-pruning", "han", "dsd", "jst"):
        assert f'"{name}"' in text, name
    assert "distillation_loss" in text and "DropConnectDense" in text and "shrink_nnx" in text


@pytest.mark.slow
def test_library_page_runs(capsys):
    namespace: dict = {"__name__": "__main__"}
    for i, block in enumerate(_blocks(DOCS / "library.md")):
        exec(compile(block, f"docs/library.md block {i}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "drop round 1" in out and "re-init round 1" in out and "→" in out
