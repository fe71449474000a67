"""The import graph of backend/ and encoders/, read from the source with `ast` (nothing is
imported): no import cycle anywhere, imports inside functions and under TYPE_CHECKING
included; encoders/ never imports backend/; the transport imports no store (nor the catalog's ORM);
the domain imports no store and no SQL library (it types against `backend.domain.ports`);
serving code never reaches evaluation, training, demo or benchmark code, directly or through
another module.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("backend", "encoders")
# The SQLAlchemy side of the catalog store: tables, sessions, engines.
ORM_MODULES = ("backend.stores.catalog.models", "backend.stores.catalog.db", "sqlalchemy.orm")
# What the domain must not import: concrete stores, the SQL library, the transport.
OUTSIDE_THE_DOMAIN = ("backend.stores", "sqlalchemy", "backend.transport")

Graph = dict[str, set[str]]
# What a server or a catalog command must never load: evaluation, training, the demo's
# catalog builder and the benchmarks. The command line and the demo may (they run them).
NOT_SERVING = ("encoders.evaluation", "encoders.training", "backend.demo_catalog", "bench")
ENTRY_POINTS = ("backend.cli", "backend.demo", "backend.demo_catalog")


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


def serving_modules(modules: dict[str, Path]) -> list[str]:
    """backend/ but the command line and the demo: the app, transport, domain, stores,
    security; and encoders/ but evaluation and training."""
    return sorted(m for m in modules
                  if not _under(m, NOT_SERVING) and not _under(m, ENTRY_POINTS))


def reached_outside_serving(graph: Graph, imports_of: Callable[[str], set[str]], start: str
                            ) -> list[list[str]]:
    """Import paths from `start` to a module of NOT_SERVING, through serving modules
    (`imports_of(module)`: every name the module imports)."""
    paths: list[list[str]] = []
    seen = {start}
    queue = [[start]]
    while queue:
        path = queue.pop(0)
        for name in sorted(imports_of(path[-1])):
            if _under(name, NOT_SERVING):
                paths.append([*path, name])
            elif name in graph and name not in seen:
                seen.add(name)
                queue.append([*path, name])
    return paths


def test_the_serving_check_follows_imports_through_other_modules() -> None:
    graph: Graph = {"backend.domain.a": {"encoders.b"}, "encoders.b": set()}
    imports = {"backend.domain.a": {"encoders.b", "numpy"},
               "encoders.b": {"encoders.evaluation.photos"}}
    paths = reached_outside_serving(graph, lambda m: imports.get(m, set()), "backend.domain.a")
    assert paths == [["backend.domain.a", "encoders.b", "encoders.evaluation.photos"]]
    files = {name: Path(f"{name}.py") for name in (
        "backend.domain.a", "encoders.b", "backend.cli", "encoders.training.x", "bench.e2e")}
    assert serving_modules(files) == ["backend.domain.a", "encoders.b"]


def test_serving_code_never_imports_evaluation_training_demo_or_bench(
        modules: dict[str, Path], graph: Graph) -> None:
    serving = serving_modules(modules)
    assert {"backend.app", "backend.domain.match", "backend.domain.match_calibration",
            "backend.domain.reindex", "backend.transport.grpc.server",
            "backend.stores.catalog.repository", "encoders.photo_conditions"} <= set(serving)
    names = {m: external_imports(modules, m) for m in modules}  # each file parsed once
    offenders = [" -> ".join(path) for module in serving
                 for path in reached_outside_serving(graph, lambda m: names.get(m, set()),
                                                     module)]
    assert not offenders, offenders
