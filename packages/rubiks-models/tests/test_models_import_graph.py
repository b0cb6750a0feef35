"""The package's modules import one another without a cycle (function-level imports too)."""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "rubiks_models"


def _targets(node: ast.AST, package: str) -> list[str]:
    """Module names an import statement may load (``from a import b``: a and a.b)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = package if node.level else ""
    module = ".".join(part for part in (base, node.module) if part)
    return [module, *(f"{module}.{alias.name}" for alias in node.names)]


def import_graph() -> dict[str, set[str]]:
    """rubiks_models module -> the rubiks_models modules it imports anywhere in its code."""
    paths = {
        "rubiks_models" + ("" if p.stem == "__init__" else f".{p.stem}"): p
        for p in SOURCE.glob("*.py")
    }
    return {
        name: {
            target
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
            for target in _targets(node, "rubiks_models")
            if target in paths and target != name
        }
        for name, path in paths.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (depth-first search), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in path:
            return [*path[path.index(name) :], name]
        if name in done:
            return None
        path.append(name)
        for target in sorted(graph[name]):
            found = visit(target)
            if found:
                return found
        path.pop()
        done.add(name)
        return None

    for name in sorted(graph):
        found = visit(name)
        if found:
            return found
    return None


def test_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert {"rubiks_models.rubiksnet", "rubiks_models.weights"} <= set(graph)
    assert "rubiks_models.rubiksnet" in graph["rubiks_models.weights"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_cycle_search_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
