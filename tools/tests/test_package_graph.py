"""The monorepo's shape: hatchling packages whose declared and imported dependencies
flow one way (rubiks-shift <- rubiks-models <- rubiks-eval -> rubiks-data), and no
package or tool importing another package's private modules."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "rubiks-shift": set(),
    "rubiks-data": set(),
    "rubiks-models": {"rubiks-shift"},
    "rubiks-eval": {"rubiks-shift", "rubiks-models", "rubiks-data"},
}


def _project(name: str) -> dict:
    with open(ROOT / "packages" / name / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def _requirement_name(spec: str) -> str:
    return re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0].lower().replace("_", "-")


def _imports(path: Path) -> list[str]:
    """Every absolute module name ``path`` imports (``from a.b import c`` gives a.b and
    a.b.c, since c may be a module)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _module(dist: str) -> str:
    return dist.replace("-", "_")


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_package_is_hatchling_with_its_own_version(name):
    project = _project(name)
    assert project["build-system"]["build-backend"] == "hatchling.build"
    assert project["project"]["name"] == name
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["project"]["version"])
    assert (ROOT / "packages" / name / "README.md").is_file()
    assert (ROOT / "packages" / name / "src" / _module(name) / "__init__.py").is_file()


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_declared_internal_dependencies_flow_one_way(name):
    deps = {_requirement_name(d) for d in _project(name)["project"].get("dependencies", [])}
    assert deps & set(PACKAGES) == PACKAGES[name]


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_console_scripts_name_functions_the_package_has(name):
    """Every ``[project.scripts]`` entry point imports and is callable (the source tree
    is what the editable install runs)."""
    import importlib

    for script, target in _project(name)["project"].get("scripts", {}).items():
        module, _, attr = target.partition(":")
        assert module.split(".")[0] == _module(name), f"{script} -> {target}"
        assert callable(getattr(importlib.import_module(module), attr)), f"{script} -> {target}"


def test_rubiks_shift_alone_needs_only_torch_numba_and_numpy():
    project = _project("rubiks-shift")["project"]
    assert {_requirement_name(d) for d in project["dependencies"]} == {"torch", "numba", "numpy"}
    assert {_requirement_name(d) for d in project["optional-dependencies"]["cuda"]} == {
        "numba-cuda"
    }
    for spec in project["dependencies"]:
        assert "==" not in spec, f"rubiks-shift pins {spec}: requirements are ranges"


@pytest.mark.parametrize("name", sorted(PACKAGES))
def test_sources_import_only_declared_packages_and_no_private_modules(name):
    own = _module(name)
    allowed = {_module(d) for d in PACKAGES[name]} | {own}
    sources = sorted((ROOT / "packages" / name / "src").rglob("*.py"))
    assert sources
    bad = []
    for path in sources:
        for module in _imports(path):
            top, *rest = module.split(".")
            if not top.startswith("rubiks_"):
                continue
            if top not in allowed:
                bad.append(f"{path.relative_to(ROOT)}: imports {module} (undeclared)")
            elif top != own and any(part.startswith("_") for part in rest):
                bad.append(f"{path.relative_to(ROOT)}: imports private {module}")
    assert not bad, "\n".join(bad)


def test_tools_use_only_public_modules():
    bad = []
    for path in sorted((ROOT / "tools").glob("*.py")):
        for module in _imports(path):
            top, *rest = module.split(".")
            if top.startswith("rubiks_") and any(part.startswith("_") for part in rest):
                bad.append(f"{path.relative_to(ROOT)}: imports private {module}")
    assert not bad, "\n".join(bad)


def test_test_modules_have_unique_names_across_packages():
    """The test folders are not packages, so pytest imports their modules by file name:
    ``python -m pytest packages/*/tests tools/tests`` (every suite in one call) stops at
    collection when two test files share a name."""
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted([*ROOT.glob("packages/*/tests/test_*.py"), *ROOT.glob("tools/tests/*.py")]):
        if path.name == "conftest.py":
            continue
        if path.name in seen:
            clashes.append(f"{path.relative_to(ROOT)} and {seen[path.name].relative_to(ROOT)}")
        seen[path.name] = path
    assert not clashes, "\n".join(clashes)
