"""The import graph of tcl/, read from the source (imports inside functions included): one-way layering and no
cycles. The library (data, models, losses, evaluation, inference, serving and the top-level helpers) never imports
the training engine, the command line or the demo; the engine may import the library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tcl"
# Entry points and the engine: the only modules allowed to import tcl.engine.
ABOVE_LIBRARY = ("tcl.engine", "tcl.cli", "tcl.demo", "tcl.__main__")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(path: Path, known: set[str]) -> set[str]:
    """The tcl modules a file imports anywhere in it (a name imported from a package counts as its submodule when
    there is one)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if name in known and name != here}


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(path, set(known)) for name, path in known.items()}


def is_above_library(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in ABOVE_LIBRARY)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph[child])))
    return None


def test_the_library_never_imports_the_engine_or_the_entry_points():
    upward = sorted(f"{name} imports {target}" for name, targets in import_graph().items() if not is_above_library(name)
                    for target in targets if is_above_library(target))
    assert upward == []


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_the_graph_reader_sees_imports_inside_functions_and_relative_ones(tmp_path, monkeypatch):
    root = tmp_path / "tcl"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text("def f():\n    from tcl.sub import b\n")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "b.py").write_text("from ..a import f\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", root)
    graph = import_graph()
    assert graph["tcl.a"] == {"tcl.sub.b"} and graph["tcl.sub.b"] == {"tcl.a"}
    assert find_cycle(graph) in (["tcl.a", "tcl.sub.b", "tcl.a"], ["tcl.sub.b", "tcl.a", "tcl.sub.b"])


@pytest.mark.parametrize("graph, cycle", [({"a": {"b"}, "b": {"c"}, "c": set()}, False),
                                          ({"a": {"b"}, "b": {"a"}}, True), ({"a": {"a"}}, True)])
def test_find_cycle_on_hand_made_graphs(graph, cycle):
    assert (find_cycle(graph) is not None) == cycle
