"""The package's shape: what each layer may import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


def test_the_edge_loads_no_model_code():
    """The edge hands relayed writes to the built-in model through a protocol; importing it must
    not load numpy (nor the model), so a proxy with another provider never pays for them."""
    code = ("import rerank_proxy.edge, sys; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('numpy', 'onnxruntime', 'tokenizers')))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", loaded


PACKAGE = Path(__file__).resolve().parent.parent / "rerank_proxy"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports_at_run_time(path: Path, name: str, known: set[str]) -> set[str]:
    """The package's modules `path` imports when it runs: annotations-only imports excluded."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(package[: len(package) - child.level + 1] + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {module for module in found if module in known and module != name}


def _import_graph() -> dict[str, set[str]]:
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {name: _imports_at_run_time(path, name, known) for name, path in paths.items()}


def _cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    trail: list[str] = []
    on_trail: set[str] = set()
    done: set[str] = set()

    def walk(module: str) -> list[str] | None:
        trail.append(module)
        on_trail.add(module)
        for imported in sorted(graph[module]):
            if imported in on_trail:
                return [*trail[trail.index(imported):], imported]
            if imported not in done and (cycle := walk(imported)):
                return cycle
        on_trail.discard(trail.pop())
        done.add(module)
        return None

    return walk(start)


def test_no_module_imports_itself_back():
    """A circle makes import order matter and hides which layer owns a fact."""
    graph = _import_graph()
    cycles = [cycle for module in sorted(graph) if (cycle := _cycle_from(graph, module))]
    assert cycles == [], cycles[0]


def test_the_transport_is_below_the_edge_and_the_search():
    """The engine transport carries bytes; what a request means is decided above it."""
    above = ("rerank_proxy.edge", "rerank_proxy.search", "rerank_proxy.scoring", "rerank_proxy.admin",
             "rerank_proxy.console", "rerank_proxy.runtime", "rerank_proxy.app", "rerank_proxy.local")
    graph = _import_graph()
    reaching_up = {module: sorted(d for d in deps if d.startswith(above))
                   for module, deps in graph.items() if module.startswith("rerank_proxy.engine.")}
    assert {m: d for m, d in reaching_up.items() if d} == {}


def test_the_local_engine_runner_is_not_part_of_serving():
    """The runner fetches and starts engines for the demo and the tests; a serving proxy never needs it."""
    graph = _import_graph()
    serving = [m for m in graph if m.startswith(("rerank_proxy.edge", "rerank_proxy.engine.",
                                                  "rerank_proxy.search", "rerank_proxy.scoring"))]
    assert [m for m in serving if any(d.startswith("rerank_proxy.local_engines") for d in graph[m])] == []


def test_no_two_parts_of_the_package_import_each_other():
    """Folders (and top-level modules) form layers: admin reads the runtime, the runtime never admin."""
    graph = _import_graph()

    def part(module: str) -> str:
        return ".".join(module.split(".")[:2])

    uses = {(part(m), part(d)) for m, deps in graph.items() for d in deps if part(m) != part(d)}
    assert sorted({tuple(sorted(pair)) for pair in uses if pair[::-1] in uses}) == []
