"""rubiks_shift's modules import one another without a cycle, imports inside functions
included (read from the sources: nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "rubiks_shift"
SOURCE = Path(__file__).resolve().parents[1] / "src" / PACKAGE


def package_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the package."""
    found = {}
    for path in sorted(SOURCE.glob("*.py")):
        found[PACKAGE if path.stem == "__init__" else f"{PACKAGE}.{path.stem}"] = path
    return found


def imported_modules(source: str, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``source`` imports, at any depth of its code. ``from
    . import x`` imports x (the package itself is already loaded); ``from .m import y``
    imports m, and m.y where y is a module."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = PACKAGE + (f".{node.module}" if node.module else "")
            else:
                base = node.module or ""
            submodules = [f"{base}.{alias.name}" for alias in node.names]
            candidates = submodules if node.level and not node.module else [base, *submodules]
        else:
            continue
        found.update(name for name in candidates if name in known)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    return {
        name: imported_modules(path.read_text(), known) - {name} for name, path in modules.items()
    }


def modules_in_cycles(graph: dict[str, set[str]]) -> set[str]:
    """The modules left after repeatedly setting aside those that import nothing still
    left: empty where the graph has no cycle (else the cycles and what imports them)."""
    left = {name: set(targets) for name, targets in graph.items()}
    while True:
        leaves = {name for name, targets in left.items() if not targets}
        if not leaves:
            return set(left)
        for name in leaves:
            del left[name]
        for targets in left.values():
            targets -= leaves


def test_rubiks_shift_imports_have_no_cycle() -> None:
    graph = import_graph()
    assert f"{PACKAGE}._cuda_gather" in graph[f"{PACKAGE}._cuda_kernels"]
    assert f"{PACKAGE}._cuda" in graph[f"{PACKAGE}._ops"]  # a function-level import
    assert modules_in_cycles(graph) == set()


def test_cycle_check_sees_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert modules_in_cycles(graph) == {"a", "b", "c", "d"}
    assert modules_in_cycles({"a": {"b"}, "b": set()}) == set()
    source = "def f():\n    from . import _cuda\n    from ._cuda_plan import Step\n"
    known = {f"{PACKAGE}._cuda", f"{PACKAGE}._cuda_plan", PACKAGE}
    assert imported_modules(source, known) == {f"{PACKAGE}._cuda", f"{PACKAGE}._cuda_plan"}
