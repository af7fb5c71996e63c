"""The layout's rules, checked by parsing the packages (``ast``; nothing is imported).

- no import circle inside ``benchmark/`` or ``estimators/`` (module-level and function-level
  imports; imports under ``if TYPE_CHECKING:`` are for type checkers only and do not count);
- no module over 500 lines and no function over 60;
- ``estimators`` never imports ``benchmark``;
- measuring code never imports a report (``benchmark.report``), and reports never import the
  measuring code (costs, harness, training, execution, sweep, the study's runs).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "estimators")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
FRONT_DOOR = ("benchmark.cli", "benchmark.__main__")
"""The command line may import everything."""
MEASURING = (
    "benchmark.costs",
    "benchmark.harness",
    "benchmark.training",
    "benchmark.execution",
    "benchmark.sweep",
    "benchmark.study",
)
"""What reports must not import (``benchmark.study.approx`` is metrics, see below)."""
REPORT_MAY_IMPORT = ("benchmark.study.approx",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement outside ``if TYPE_CHECKING:`` blocks, at any depth."""
    found = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The project modules an import statement loads (a ``from`` of a submodule counts it)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".")
            if path.name != "__init__.py":
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
    out = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name and name.split(".")[0] in PACKAGES:
            out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges = set()
        for node in _runtime_imports(tree):
            edges |= _targets(module, path, node)
        ancestors = {module.rsplit(".", k)[0] for k in range(1, module.count(".") + 1)}
        graph[module] = edges - {module} - ancestors  # a package's own parents: always loaded
    return graph


GRAPH = _graph()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            strongconnect(v)
    return out


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_parser_sees_the_packages():
    assert "benchmark.harness" in MODULES and "estimators.curvature" in MODULES
    assert "benchmark.config" in GRAPH["benchmark.harness"]
    assert "estimators" in GRAPH["benchmark.harness"] or any(
        m.startswith("estimators") for m in GRAPH["benchmark.methods.ewc"]
    )


def test_no_import_circle():
    assert _cycles(GRAPH) == []


def test_a_circle_would_be_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    lines = MODULES[module].read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{module}: {lines} lines"


def test_function_size():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {n} lines")
    assert long == []


def test_estimators_never_import_benchmark():
    bad = {m: sorted(e) for m, e in GRAPH.items() if m.startswith("estimators")}
    assert {m: [t for t in e if t.startswith("benchmark")] for m, e in bad.items()} == {
        m: [] for m in bad
    }


def test_measuring_code_never_imports_a_report():
    bad = [
        f"{m} -> {t}"
        for m, edges in GRAPH.items()
        if m.startswith("benchmark") and not _under(m, ("benchmark.report", *FRONT_DOOR))
        for t in edges
        if _under(t, ("benchmark.report",))
    ]
    assert bad == []


def test_reports_never_import_measuring_code():
    bad = [
        f"{m} -> {t}"
        for m, edges in GRAPH.items()
        if _under(m, ("benchmark.report",))
        for t in edges
        if _under(t, MEASURING) and t not in REPORT_MAY_IMPORT
    ]
    assert bad == []
