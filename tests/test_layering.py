"""The package's import graph — every import of ``repr_jax/**``, lazy ones inside functions
included — has no cycle, and no module imports another module's private (``_``) names."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "repr_jax"


def _graph():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    edges, private = {m: set() for m in modules}, []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("repr_jax") and not node.level:
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    target = target if target in modules else node.module
                    if target in modules and target != name:
                        edges[name].add(target)
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append(f"{name} imports {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                edges[name] |= {a.name for a in node.names if a.name in modules and a.name != name}
    return edges, private


def _cycle(edges) -> list[str]:
    """One cycle of the graph (empty when there is none): depth-first search, grey/black."""
    state, path = {}, []

    def visit(v):
        state[v] = "grey"
        path.append(v)
        for w in sorted(edges[v]):
            if state.get(w) == "grey":
                return path[path.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        state[v] = "black"
        path.pop()
        return []

    for v in sorted(edges):
        if v not in state and (found := visit(v)):
            return found
    return []


def test_no_import_cycle_and_no_private_imports():
    edges, private = _graph()
    assert len(edges) > 60                                    # the whole package was read
    assert _cycle(edges) == [], " → ".join(_cycle(edges))
    assert private == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_the_library_never_imports_the_studies():
    edges, _ = _graph()
    into_studies = sorted(f"{a} imports {b}" for a, targets in edges.items() for b in targets
                          if b.startswith("repr_jax.studies") and not a.startswith("repr_jax.studies"))
    assert into_studies == []
    assert any(b.startswith("repr_jax.studies.") for b in edges["repr_jax.studies.study"])  # edges seen


def test_the_former_flat_data_modules_are_aliases_of_the_data_package():
    """``repr_jax.streaming`` and the other modules that moved into ``repr_jax/data/`` still
    import, with the very objects of their new homes (existing imports keep working)."""
    import importlib
    for old, new in (("data_formats", "formats"), ("data_sources", "sources"), ("streaming", "streaming"),
                     ("pipeline", "pipeline")):
        alias, home = importlib.import_module(f"repr_jax.{old}"), importlib.import_module(f"repr_jax.data.{new}")
        assert alias.__all__ == home.__all__ and home.__all__
        assert all(getattr(alias, name) is getattr(home, name) for name in home.__all__)
    # public names outside __all__ too (imported by users of the old modules)
    assert importlib.import_module("repr_jax.streaming").SPLITS == ("train", "test", "val")
    sources = importlib.import_module("repr_jax.data.sources")
    assert importlib.import_module("repr_jax.data_sources").image_sort_key is sources.image_sort_key
    import repr_jax.data as data
    assert data.load_data is importlib.import_module("repr_jax.data.dataset").load_data
    assert data.read_files is importlib.import_module("repr_jax.data.formats").read_files   # old data.py had it
    assert data.ArrayStream is importlib.import_module("repr_jax.streaming").ArrayStream
