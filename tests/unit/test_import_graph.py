"""The import graph of backend/ and encoders/, read from the source with `ast` (nothing is
imported): no import cycle anywhere, imports inside functions and under TYPE_CHECKING
included; encoders/ never imports backend/; the transport imports no store (nor the catalog's ORM);
the domain imports no store and no SQL library (it types against `backend.domain.ports`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("backend", "encoders")
# The SQLAlchemy side of the catalog store: tables, sessions, engines.
ORM_MODULES = ("backend.stores.catalog.models", "backend.stores.catalog.db", "sqlalchemy.orm")
# What the domain must not import: concrete stores, the SQL library, the transport.
OUTSIDE_THE_DOMAIN = ("backend.stores", "sqlalchemy", "backend.transport")

Graph = dict[str, set[str]]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_names(path: Path, module: str) -> Iterator[str]:
    """Every module name an import statement of the file names, wherever the statement is;
    for `from X import Y` both X and X.Y (Y may be a submodule)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph(modules: dict[str, Path]) -> Graph:
    """module -> the modules of `modules` it imports (an import of a.b.c counts for a.b.c
    itself, not for the packages a and a.b above it)."""
    graph: Graph = {}
    for module, path in modules.items():
        graph[module] = {name for name in imported_names(path, module)
                         if name in modules and name != module}
    return graph


def external_imports(modules: dict[str, Path], module: str) -> set[str]:
    return set(imported_names(modules[module], module))


def find_cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    return source_modules()


@pytest.fixture(scope="module")
def graph(modules: dict[str, Path]) -> Graph:
    return import_graph(modules)


def test_the_graph_sees_top_level_lazy_and_relative_imports(graph: Graph) -> None:
    assert "encoders.fusion" in graph["encoders.model"]  # top level
    assert "encoders.optimized" in graph["encoders.selection"]
    assert "backend.transport.grpc.encoder_client" in graph["backend.app"]  # in a function
    assert "backend.stores.vectors.edge" in graph["backend.app"]


def test_find_cycles_reports_each_circle_once() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_backend_or_encoders(graph: Graph) -> None:
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_encoders_never_import_backend(modules: dict[str, Path]) -> None:
    offenders = sorted(
        f"{module} imports {name}"
        for module in modules if module.split(".")[0] == "encoders"
        for name in external_imports(modules, module)
        if name == "backend" or name.startswith("backend."))
    assert not offenders, offenders


def test_transport_imports_no_store(modules: dict[str, Path]) -> None:
    """The transport reaches the catalog and the vectors through domain services and ports;
    `backend/app.py` wires the stores in."""
    offenders = sorted(
        f"{module} imports {name}"
        for module in modules if module.startswith("backend.transport.")
        for name in external_imports(modules, module)
        if _under(name, ("backend.stores", *ORM_MODULES)))
    assert not offenders, offenders


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_domain_imports_no_store_sql_or_transport(modules: dict[str, Path]) -> None:
    offenders = sorted(
        f"{module} imports {name}"
        for module in modules if module.startswith("backend.domain.")
        for name in external_imports(modules, module)
        if _under(name, OUTSIDE_THE_DOMAIN))
    assert not offenders, offenders


def test_the_domain_check_sees_a_store_import(tmp_path: Path) -> None:
    """The check above reads imports in functions too, so a lazy store import cannot hide."""
    path = tmp_path / "service.py"
    path.write_text("def f():\n    from backend.stores.catalog import repository\n",
                    encoding="utf-8")
    names = set(imported_names(path, "backend.domain.service"))
    assert any(_under(n, OUTSIDE_THE_DOMAIN) for n in names)
