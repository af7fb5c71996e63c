"""The shape of the ``estimators`` package, read from its source with ``ast``.

No import circle between its modules (module-level, function-level and ``importlib`` imports
alike, relative ones resolved), no import of ``benchmark`` (the benchmark uses the estimators,
never the other way round), and no module over 500 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import estimators

ROOT = Path(estimators.__file__).parent
PACKAGE = "estimators"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def package_of(name: str) -> str:
    """The package a module's relative imports start from."""
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def imported(name: str, tree: ast.AST) -> set[str]:
    """Every module name ``name`` imports anywhere in its source, relative ones resolved."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package_of(name).split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            found.add(node.args[0].value)
    return found


def _is_dynamic_import(node: ast.Call) -> bool:
    func = node.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return (
        called in ("import_module", "__import__")
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (names that are not modules are dropped)."""
    edges = {}
    for name, path in MODULES.items():
        names = imported(name, ast.parse(path.read_text(), filename=str(path)))
        edges[name] = {n for n in names if n in MODULES and n != name}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``a -> b -> ... -> a``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_scan_sees_the_package():
    edges = graph()
    assert {"estimators", "estimators.curvature", "estimators.layers.base"} <= set(edges)
    assert "estimators.curvature" in edges["estimators.diag"]
    assert "estimators.layers.base" in edges["estimators.layers.linear"]


def test_no_import_circle():
    cycle = find_cycle(graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_relative_imports_resolve():
    source = "from . import layout\nfrom .base import X\ndef f():\n    from ..diag import y"
    tree = ast.parse(source)
    found = imported("estimators.layers.linear", tree)
    assert {"estimators.layers.base", "estimators.layers.layout", "estimators.diag"} <= found
    assert "estimators.curvature" in imported(
        "estimators", ast.parse("import importlib\nimportlib.import_module('estimators.curvature')")
    )


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_benchmark_import(name):
    names = imported(name, ast.parse(MODULES[name].read_text()))
    assert not [n for n in names if n == "benchmark" or n.startswith("benchmark.")]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES})"
