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


# Calls that import the module their first argument names, when it is a string literal.
IMPORT_BY_NAME = {"import_module", "__import__"}


def imported(path: Path, known: set[str]) -> set[str]:
    """The tcl modules a file imports anywhere in it (a name imported from a package counts as its submodule when
    there is one), including modules loaded by name: in a file that calls ``importlib.import_module`` or
    ``__import__``, every string naming a tcl module counts (the name may travel through a variable first)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    if any(isinstance(node, ast.Call) and _called_name(node.func) in IMPORT_BY_NAME for node in ast.walk(tree)):
        found.update(node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                     and isinstance(node.value, str) and node.value in known)
    for node in ast.walk(tree):
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


def _called_name(function: ast.expr) -> str | None:
    return function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", None)


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(path, set(known)) for name, path in known.items()}


def package_of(name: str) -> str:
    """``tcl.data.vqa`` -> ``tcl.data``; a top-level module (``tcl.config``) is a node of its own."""
    return ".".join(name.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The import graph between tcl's packages: one package imports another when any of its modules does."""
    packages: dict[str, set[str]] = {}
    for name, targets in graph.items():
        edges = packages.setdefault(package_of(name), set())
        edges.update(package_of(target) for target in targets if package_of(target) != package_of(name))
    return packages


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


def test_no_import_cycles_between_packages():
    """``tcl.data`` and ``tcl.evaluation`` once imported each other through different modules: no module cycle, but
    neither package could be understood (or moved) without the other."""
    assert find_cycle(package_graph(import_graph())) is None


def write_package(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in [path.parent, *path.parent.parents]:
            if folder == root.parent:
                break
            (folder / "__init__.py").touch()
        path.write_text(text)


def test_a_cycle_planted_between_two_packages_is_flagged(tmp_path, monkeypatch):
    root = tmp_path / "tcl"
    write_package(root, {"data/loader.py": "from tcl.evaluation.metric import score\n",
                         "data/text.py": "def clean(s):\n    return s\n",
                         "evaluation/metric.py": "from tcl.data.text import clean\n"})
    monkeypatch.setattr(__import__(__name__), "PACKAGE", root)
    graph = import_graph()
    assert find_cycle(graph) is None  # no module imports itself back...
    assert find_cycle(package_graph(graph)) in (["tcl.data", "tcl.evaluation", "tcl.data"],
                                                ["tcl.evaluation", "tcl.data", "tcl.evaluation"])  # ...the packages do


def test_a_module_loaded_by_name_counts_as_an_import(tmp_path, monkeypatch):
    root = tmp_path / "tcl"
    write_package(root, {"engine/commands.py": "import importlib\n\nMODULE = 'tcl.engine.pretrain'\n\n"
                                               "def main():\n    return importlib.import_module(MODULE).run()\n",
                         "engine/pretrain.py": "from tcl.engine import commands\n",
                         "engine/other.py": "def f():\n    return __import__('tcl.engine.commands')\n"})
    monkeypatch.setattr(__import__(__name__), "PACKAGE", root)
    graph = import_graph()
    assert graph["tcl.engine.commands"] == {"tcl.engine.pretrain"}
    assert graph["tcl.engine.other"] == {"tcl.engine.commands"}
    assert find_cycle(graph) is not None


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
